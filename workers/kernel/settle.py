"""Settling a batch: what happens to each entry once its fate is known.

Committed and ignored entries are handed to the acker; dead letters are written
(``MULTI; XADD <stream>:dlq; XACK; EXEC``); released entries stop being kept fresh.
Every outcome is counted once (``fleet_events_total``), the batch is observed and
logged in one line.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import redis.exceptions as redis_exc

from workers import metrics, streams, tracing
from workers.errors import error_text
from workers.kernel.acker import REDIS_ERRORS, Acker
from workers.kernel.held import HeldEntries
from workers.kernel.member import Member
from workers.kernel.stopping import Stopping
from workers.kernel.triage import Item, Triaged, type_label
from workers.streams import DeadLetter

_DEAD_LETTER_ATTEMPTS = 5


class Settler:
    def __init__(
        self, member: Member, held: HeldEntries, acker: Acker, hard_stop: Stopping, *, debug: bool
    ) -> None:
        self._m = member
        self._held = held
        self._acker = acker
        self._hard_stop = hard_stop
        # One line per event outcome only at debug: building it costs more than the event.
        self._debug = debug
        self._children: dict[tuple[str, str], Any] = {}

    @property
    def stream(self) -> str:
        """The stream key settled on (a partition's key when streams are partitioned)."""
        return self._m.stream

    def committed(self, items: Sequence[Item], fresh: Sequence[Item], out: Triaged) -> None:
        """``items`` committed; those not in ``fresh`` had been handled before."""
        out.ack.extend([item.entry_id for item in items])
        if len(fresh) == len(items) and not self._debug:
            for label, n in collections.Counter([item.type_label for item in items]).items():
                out.counts[(label, "ok")] += n
            return
        fresh_ids = {id(i) for i in fresh}
        for item in items:
            outcome = "ok" if id(item) in fresh_ids else "duplicate"
            out.counts[(item.type_label, outcome)] += 1
            if self._debug:
                self._log_event(item, outcome)

    def dead_letter(self, item: Item, reason: str, error: str, out: Triaged) -> None:
        out.kill(
            DeadLetter(item.entry_id, item.fields, reason, error, item.deliveries), item.type_label
        )

    def release(self, items: Sequence[Item]) -> None:
        self._held.release([item.entry_id for item in items])

    async def settle(self, out: Triaged) -> None:
        if out.dead:
            await self._write_dead_letters(out.dead)
        if out.ack:
            await self._acker.submit(out.ack)

    async def _write_dead_letters(self, dead: list[DeadLetter]) -> None:
        for attempt in range(1, _DEAD_LETTER_ATTEMPTS + 1):
            try:
                await streams.dead_letter(
                    self._m.redis, self._m.stream, self._m.group, self._m.name, dead
                )
            except REDIS_ERRORS as exc:
                # Not dead-lettered and not acknowledged: the entry stays pending and comes
                # back, so nothing is lost by giving up.
                self._m.log.warning("dead_letter.failed", error=error_text(exc), attempt=attempt)
                if await self._hard_stop.sleep(0.2 * attempt):
                    break
                continue
            except redis_exc.ResponseError as exc:
                # Refused by the server (e.g. an ACL without MULTI): retrying cannot help.
                # The entries stay pending and are released for redelivery.
                self._m.log.error("dead_letter.refused", error=error_text(exc))  # noqa: TRY400 - one line, no traceback
                break
            for letter in dead:
                metrics.DEAD_LETTERS.labels(self._m.stream, self._m.group, letter.reason).inc()
                self._m.log.warning(
                    "event.dead_lettered",
                    entry_id=letter.entry_id.decode(errors="replace"),
                    type=type_label(letter.fields.get(b"type")),
                    reason=letter.reason,
                    error=letter.error[:200],
                )
                tracing.event(
                    "dead_letter",
                    entry_id=letter.entry_id.decode(errors="replace"),
                    reason=letter.reason,
                    deliveries=letter.deliveries,
                )
            break
        self._held.release([letter.entry_id for letter in dead])

    def observe(self, size: int, source: str, out: Triaged, elapsed: float) -> None:
        metrics.BATCH_SIZE.labels(self._m.stream, self._m.group).observe(size)
        per_type: collections.Counter[str] = collections.Counter()
        for (label, outcome), n in out.counts.items():
            self._child(label, outcome).inc(n)
            per_type[label] += n
        if size:
            per_event = elapsed / size
            for label in per_type:
                metrics.EVENT_HANDLE_SECONDS.labels(self._m.stream, self._m.group, label).observe(
                    per_event
                )
        self._m.log.info(
            "batch.handled",
            size=size,
            source=source,
            seconds=round(elapsed, 6),
            outcomes={f"{t}:{o}": n for (t, o), n in out.counts.items()},
        )

    def _log_event(self, item: Item, outcome: str) -> None:
        event = item.event
        self._m.log.debug(
            "event.handled",
            outcome=outcome,
            entry_id=item.entry_id.decode(),
            event_id=str(event.event_id),
            type=item.type_label,
            tenant_id=str(event.tenant_id),
            correlation_id=event.correlation_id,
            deliveries=item.deliveries,
        )

    def _child(self, label: str, outcome: str) -> Any:
        key = (label, outcome)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metrics.EVENTS.labels(
                self._m.stream, self._m.group, label, outcome
            )
        return child
