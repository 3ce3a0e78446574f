"""Triage (pure): a read reply becomes entries, and each entry an item to handle, a
dead letter with a reason, or an acknowledgement (a type the group does not handle,
an entry deleted while pending).

No I/O and no clock: the same entries and delivery counts always triage the same way,
so the fuzz tests drive this module directly. Decoding goes through
:func:`contracts.wire.decode_data`, the path ``fleet publish`` takes too.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from contracts import Event
from contracts.registry import event_class
from contracts.wire import DecodeError, decode_data, decoder_for
from workers.streams import DeadLetter

Entry = tuple[bytes, dict[bytes, bytes]]
"""An entry id and its fields."""

Validate = Callable[[Any], str | None]


def shape_reply(response: Any, **options: Any) -> list[Entry]:
    """XREADGROUP's reply for the one stream read, as (entry id, fields) pairs: what
    redis-py builds, without a Python call per entry. A RESP3 reply is a map by stream, a
    RESP2 one a list of [stream, entries]; an entry deleted while pending has no fields."""
    if not response:
        return []
    entries = next(iter(response.values())) if isinstance(response, dict) else response[0][1]
    pairs = []
    for i, kv in entries:
        if kv and len(kv) == 4:  # two fields, as our producers write (type, data)
            pairs.append((i, {kv[0]: kv[1], kv[2]: kv[3]}))
        else:
            pairs.append((i, dict(zip(kv[::2], kv[1::2], strict=True)) if kv else {}))
    return pairs


def type_label(raw: bytes | None) -> str:
    """Event types from the contract are labels as-is; anything else is ``unknown``
    so a misbehaving producer cannot explode label cardinality."""
    if raw is None:
        return "unknown"
    name = raw.decode(errors="replace")
    return name if event_class(name) is not None else "unknown"


def _failure(cls: type[Event], data: bytes) -> tuple[str, str]:
    try:
        decode_data(cls, data)
    except DecodeError as exc:
        return exc.reason, str(exc)
    return "invalid_event", "could not be decoded"


@dataclass(slots=True)
class Item:
    """An entry decoded into an event of the worker's types, ready to apply."""

    entry_id: bytes
    fields: dict[bytes, bytes]
    type_label: str
    event: Event
    deliveries: int


@dataclass(slots=True)
class Triaged:
    items: list[Item] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    ack: list[bytes] = field(default_factory=list)
    counts: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)

    def kill(self, dead: DeadLetter, label: str) -> None:
        self.dead.append(dead)
        self.counts[(label, "dead_lettered")] += 1


class Triage:
    """Triage for one worker's event types, validation and delivery limit."""

    def __init__(
        self,
        event_types: Sequence[type[Event]],
        *,
        max_deliveries: int,
        validate: Validate | None = None,
    ) -> None:
        self._types = {
            cls.event_type().encode(): (
                cls,
                cls.event_type(),
                decoder_for(cls).decode,
                cls.supported_versions,
            )
            for cls in event_types
        }
        self._max_deliveries = max_deliveries
        self._validate = validate

    def __call__(self, entries: Sequence[Entry], counts: dict[bytes, int] | None) -> Triaged:
        """``counts``: delivery counts of entries read from a pending list; ``None``: every
        entry is on its first delivery."""
        out = Triaged()
        types = self._types
        validate = self._validate
        max_deliveries = self._max_deliveries
        for entry_id, fields in entries:
            if not fields:
                # Trimmed or deleted while pending: nothing to do but release it.
                out.ack.append(entry_id)
                continue
            deliveries = counts.get(entry_id, 1) if counts is not None else 1
            raw_type = fields.get(b"type")
            known = types.get(raw_type) if raw_type is not None else None
            if known is None:
                label = type_label(raw_type)
                if raw_type is None:
                    out.kill(
                        DeadLetter(entry_id, fields, "missing_type", "no 'type' field", 1), label
                    )
                else:
                    out.ack.append(entry_id)
                    out.counts[(label, "ignored")] += 1
                continue
            cls, label, decode, versions = known
            data = fields.get(b"data")
            if data is None:
                dead = DeadLetter(entry_id, fields, "missing_data", "no 'data' field", deliveries)
                out.kill(dead, label)
                continue
            try:
                # The decoder decode_data uses, version checked inline: no Python call per
                # event on the way; a failure is decoded again by decode_data for its reason.
                event = decode(data)
                if event.version not in versions:
                    raise msgspec.ValidationError("unsupported version")
            except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError):
                reason, detail = _failure(cls, data)
                out.kill(DeadLetter(entry_id, fields, reason, detail, deliveries), label)
                continue
            problem = None if validate is None else validate(event)
            if problem is not None:
                out.kill(DeadLetter(entry_id, fields, "invalid_event", problem, deliveries), label)
                continue
            if deliveries > max_deliveries:
                detail = (
                    f"delivered {deliveries} times; the consumer holding it stopped "
                    "before finishing"
                )
                out.kill(DeadLetter(entry_id, fields, "max_deliveries", detail, deliveries), label)
                continue
            out.items.append(Item(entry_id, fields, label, event, deliveries))
        return out
