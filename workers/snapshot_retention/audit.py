"""The hash-chained audit log: records, canonical JSON, BLAKE3 chaining, verification from
the genesis value or from a pruning anchor, and the drafts of each event
(docs/snapshots.md). Pure.

:func:`chain_hash` covers every audit column except the record's own hash, so
:func:`verify_chain` names the first record whose content, order or linkage was altered.
"""

from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Final

import msgspec
from blake3 import blake3

from workers.snapshot_retention.ids import B3_PREFIX, check_b3
from workers.snapshot_retention.lifecycle import RollbackPlan, StateChange
from workers.snapshot_retention.records import Snapshot, SnapshotState
from workers.snapshot_retention.retention import RetentionAction, RetentionActionKind
from workers.snapshot_retention.times import rfc3339, utc

_S = SnapshotState


class AuditEvent(StrEnum):
    IMPORTED = "snapshot_imported"
    ACTIVATED = "snapshot_activated"
    ROLLED_BACK = "snapshot_rolled_back"
    # Not in the seed's event table, but the seed's retention rules archive snapshots and
    # every action must leave an audit record; none of the seed's events means "archived".
    ARCHIVED = "snapshot_archived"
    EXPIRED = "snapshot_expired"
    DELETED = "snapshot_deleted"


# The prev_hash of the first record: a fixed, recognisable value rather than NULL, so the
# column is NOT NULL and a unique index on it allows exactly one chain start.
GENESIS_HASH: Final = B3_PREFIX + "0" * 64

AuditValue = str | int | bool | None


class AuditDraft(msgspec.Struct, frozen=True, kw_only=True):
    """An audit record before it is numbered and chained (see :func:`seal`)."""

    event: AuditEvent
    snapshot_id: str
    tool: str
    actor: str
    reason: str | None
    details: dict[str, AuditValue]
    occurred_at: datetime


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A row of ``ingest.snapshot_audit``."""

    seq: int
    event: AuditEvent
    snapshot_id: str
    tool: str
    actor: str
    reason: str | None
    details: dict[str, AuditValue]
    occurred_at: datetime
    prev_hash: str
    hash: str


def _canonical(value: object, path: str) -> object:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)  # StrEnum members become their plain value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, Mapping):
        items: list[tuple[str, object]] = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path}: object keys must be strings, got {key!r}")
            items.append((key, _canonical(item, f"{path}.{key}")))
        return dict(sorted(items))
    if isinstance(value, list | tuple):
        return [_canonical(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, float):
        # Binary floats print differently across languages and jsonb round trips; a hash
        # that must verify anywhere takes integers or decimal strings.
        raise TypeError(f"{path}: floats have no canonical form here; use an int or a string")
    raise TypeError(f"{path}: {type(value).__name__} has no canonical JSON form")


def canonical_json(record: Mapping[str, object]) -> bytes:
    """Canonical JSON of ``record``: object keys sorted by code point at every level, no
    whitespace, UTF-8, datetimes as RFC 3339 UTC; only str, int, bool, None, datetime,
    mappings and sequences are accepted (TypeError otherwise)."""
    return msgspec.json.encode(_canonical(record, "$"))


def chain_hash(prev_hash: str | None, record: Mapping[str, object]) -> str:
    """``b3:`` + BLAKE3(prev_hash + "\\n" + canonical_json(record)); ``None`` means the chain
    start, :data:`GENESIS_HASH`."""
    previous = GENESIS_HASH if prev_hash is None else check_b3("prev_hash", prev_hash)
    hasher = blake3(previous.encode("ascii"))
    hasher.update(b"\n")
    hasher.update(canonical_json(record))
    return B3_PREFIX + hasher.hexdigest()


def audit_body(seq: int, entry: AuditDraft | AuditRecord) -> dict[str, object]:
    """The hashed part of an audit record: every column except ``prev_hash`` (which is
    chained separately) and ``hash`` itself."""
    return {
        "seq": seq,
        "event": entry.event,
        "snapshot_id": entry.snapshot_id,
        "tool": entry.tool,
        "actor": entry.actor,
        "reason": entry.reason,
        "details": entry.details,
        "occurred_at": entry.occurred_at,
    }


def seal(draft: AuditDraft, *, seq: int, prev_hash: str | None) -> AuditRecord:
    """Number and chain ``draft``. ``prev_hash`` is the hash of the last stored record, or
    None for the first record of the chain."""
    if isinstance(seq, bool) or seq < 1:
        raise ValueError(f"audit seq must be a positive integer, got {seq!r}")
    previous = GENESIS_HASH if prev_hash is None else prev_hash
    return AuditRecord(
        seq=seq,
        event=draft.event,
        snapshot_id=draft.snapshot_id,
        tool=draft.tool,
        actor=draft.actor,
        reason=draft.reason,
        details=dict(draft.details),
        occurred_at=draft.occurred_at,
        prev_hash=previous,
        hash=chain_hash(previous, audit_body(seq, draft)),
    )


class ChainBreak(msgspec.Struct, frozen=True, kw_only=True):
    """The first record that fails verification: its position in the list and its seq."""

    index: int
    seq: int
    reason: str


def verify_chain(
    records: Iterable[AuditRecord], *, start_hash: str = GENESIS_HASH
) -> ChainBreak | None:
    """Check an audit log in seq order; None when intact, else the first bad record.

    ``start_hash`` is the prev_hash the first record must carry: the genesis value for a
    whole log, or the last verified hash when checking a tail.
    """
    expected = start_hash
    last_seq: int | None = None
    for index, record in enumerate(records):
        if last_seq is not None and record.seq <= last_seq:
            return ChainBreak(
                index=index, seq=record.seq, reason=f"seq {record.seq} does not follow {last_seq}"
            )
        if record.prev_hash != expected:
            return ChainBreak(
                index=index,
                seq=record.seq,
                reason="prev_hash is not the hash of the record before it",
            )
        try:
            actual = chain_hash(record.prev_hash, audit_body(record.seq, record))
        except (TypeError, ValueError) as exc:
            return ChainBreak(index=index, seq=record.seq, reason=f"cannot be hashed: {exc}")
        if actual != record.hash:
            return ChainBreak(
                index=index, seq=record.seq, reason="hash does not match the record's content"
            )
        expected = record.hash
        last_seq = record.seq
    return None


def imported_draft(snapshot: Snapshot, *, actor: str, at: datetime) -> AuditDraft:
    """``snapshot_imported``: id, tool, hashes, user, timestamp."""
    return AuditDraft(
        event=AuditEvent.IMPORTED,
        snapshot_id=snapshot.snapshot_id,
        tool=snapshot.tool,
        actor=actor,
        reason=snapshot.metadata.get("importReason"),
        details={
            "toolVersion": snapshot.tool_version,
            "sourceHash": snapshot.source_hash,
            "normalizedHash": snapshot.normalized_hash,
            "recordCount": snapshot.record_count,
            "objectKey": snapshot.object_key,
        },
        occurred_at=utc("at", at),
    )


_CHANGE_EVENTS: Final[Mapping[SnapshotState, AuditEvent]] = MappingProxyType(
    {
        _S.ACTIVE: AuditEvent.ACTIVATED,
        _S.ARCHIVED: AuditEvent.ARCHIVED,
        _S.EXPIRED: AuditEvent.EXPIRED,
        _S.DELETED: AuditEvent.DELETED,
    }
)


def change_draft(change: StateChange, *, actor: str, reason: str | None = None) -> AuditDraft:
    """The audit record of one state change. Demotions to ``previous`` have none of their own:
    the activation or rollback that caused them records them."""
    event = _CHANGE_EVENTS.get(change.to_state)
    if event is None:
        raise ValueError(
            f"{change.snapshot_id}: a change to {change.to_state} is recorded by the "
            "activation or rollback that caused it"
        )
    details: dict[str, AuditValue] = {"fromState": change.from_state, "toState": change.to_state}
    if event is AuditEvent.ACTIVATED:
        details["previousSnapshot"] = change.snapshot.previous_snapshot
    return AuditDraft(
        event=event,
        snapshot_id=change.snapshot_id,
        tool=change.snapshot.tool,
        actor=actor,
        reason=reason,
        details=details,
        occurred_at=change.at,
    )


def retention_draft(action: RetentionAction, *, actor: str) -> AuditDraft:
    """``snapshot_archived`` / ``snapshot_deleted`` for one retention action."""
    draft = change_draft(action.change, actor=actor, reason=action.reason)
    details = {**draft.details, "objectKey": action.object_key}
    if action.kind is RetentionActionKind.DELETE:
        details["objectRemoved"] = action.remove_object
    return msgspec.structs.replace(draft, details=details)


def rolled_back_draft(plan: RollbackPlan, *, actor: str, reason: str) -> AuditDraft:
    """``snapshot_rolled_back``: from_id, to_id, reason, user (and the trigger)."""
    return AuditDraft(
        event=AuditEvent.ROLLED_BACK,
        snapshot_id=plan.target.snapshot_id,
        tool=plan.tool,
        actor=actor,
        reason=reason,
        details={
            "fromSnapshot": None if plan.current is None else plan.current.snapshot_id,
            "toSnapshot": plan.target.snapshot_id,
            "reason": reason,
            "recordsAffected": plan.records_affected,
            "trigger": plan.trigger,
        },
        occurred_at=plan.at,
    )
