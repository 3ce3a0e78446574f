"""Persistence of snapshot records, retention holds and the audit chain (asyncpg).

Every function takes a connection and runs in the caller's transaction; none decides
anything (the pure modules do). Writers that change a tool's snapshots hold the tool's advisory
transaction lock (:func:`lock_tool`); audit writers hold the chain's tail lock
(:func:`append_audit` takes it), always in that order, so two writers never deadlock and
never fork the chain.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from workers.snapshot_retention.audit import (
    GENESIS_HASH,
    AuditDraft,
    AuditEvent,
    AuditRecord,
    AuditValue,
    seal,
)
from workers.snapshot_retention.lifecycle import StateChange
from workers.snapshot_retention.records import Snapshot, SnapshotState
from workers.snapshot_retention.retention import RetentionHold

# Advisory lock keys. PostgreSQL keeps one-bigint and two-int4 keys in separate spaces;
# 0x5F1EE7 is the fleet's prefix (migrations use 0x5F1EE7_0001), 0005 is this migration.
RETENTION_LOCK_KEY: Final = 0x5F1EE7_0005
"""Session lock: held by the one process in the fleet that applies a retention plan."""
AUDIT_TAIL_LOCK_KEY: Final = 0x5F1EE7_0105
"""Transaction lock: held while reading the chain's tail and appending after it."""
TOOL_LOCK_CLASS: Final = 0x5F05
"""Transaction lock ``(TOOL_LOCK_CLASS, crc32(tool))``: serialises imports, rollbacks and
retention actions of one tool (a crc32 collision only serialises two tools more)."""

_COLUMNS: Final = (
    "snapshot_id, tool, tool_version, imported_at, source_hash, normalized_hash, "
    "record_count, state, previous_snapshot, object_key, metadata, state_changed_at"
)
_AUDIT_COLUMNS: Final = (
    "seq, event, snapshot_id, tool, actor, reason, details, occurred_at, prev_hash, hash"
)


Conn = asyncpg.Connection | PoolConnectionProxy
"""A connection, pooled or not; every function here runs in its caller's transaction."""


class ConcurrentChange(RuntimeError):
    """A row was not in the state the plan expected: someone changed it meanwhile."""


def _tool_key(tool: str) -> int:
    # crc32 is stable across processes and versions (hash() is salted per process);
    # shifted into the signed int4 range PostgreSQL expects.
    return zlib.crc32(tool.encode()) - 2**31


async def lock_tool(conn: Conn, tool: str) -> None:
    """Take the tool's advisory lock until the end of the current transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", TOOL_LOCK_CLASS, _tool_key(tool))


def snapshot_from_row(row: asyncpg.Record) -> Snapshot:
    metadata = row["metadata"] or {}
    return Snapshot(
        snapshot_id=row["snapshot_id"],
        tool=row["tool"],
        tool_version=row["tool_version"],
        imported_at=row["imported_at"],
        source_hash=row["source_hash"],
        normalized_hash=row["normalized_hash"],
        record_count=row["record_count"],
        state=SnapshotState(row["state"]),
        previous_snapshot=row["previous_snapshot"],
        object_key=row["object_key"],
        metadata={str(k): str(v) for k, v in metadata.items()},
        state_changed_at=row["state_changed_at"],
    )


async def load_snapshots(
    conn: Conn,
    *,
    tool: str | None = None,
    states: Iterable[SnapshotState] | None = None,
    for_update: bool = False,
) -> list[Snapshot]:
    """Snapshots ordered by (tool, id), i.e. chronologically within a tool."""
    state_list = None if states is None else [str(s) for s in states]
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM ingest.feed_snapshots "
        "WHERE ($1::text IS NULL OR tool = $1) AND ($2::text[] IS NULL OR state = ANY($2)) "
        "ORDER BY tool, snapshot_id" + (" FOR UPDATE" if for_update else ""),
        tool,
        state_list,
    )
    return [snapshot_from_row(row) for row in rows]


async def get_snapshot(
    conn: Conn, snapshot_id: str, *, for_update: bool = False
) -> Snapshot | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM ingest.feed_snapshots WHERE snapshot_id = $1"
        + (" FOR UPDATE" if for_update else ""),
        snapshot_id,
    )
    return None if row is None else snapshot_from_row(row)


async def insert_snapshot(conn: Conn, snapshot: Snapshot) -> None:
    await conn.execute(
        f"INSERT INTO ingest.feed_snapshots ({_COLUMNS}) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        snapshot.snapshot_id,
        snapshot.tool,
        snapshot.tool_version,
        snapshot.imported_at,
        snapshot.source_hash,
        snapshot.normalized_hash,
        snapshot.record_count,
        str(snapshot.state),
        snapshot.previous_snapshot,
        snapshot.object_key,
        dict(snapshot.metadata),
        snapshot.state_changed_at,
    )


async def apply_change(conn: Conn, change: StateChange) -> None:
    """Insert a new record, or move an existing one from ``change.from_state`` to its new
    state; :class:`ConcurrentChange` when the row is no longer in ``from_state``."""
    if change.from_state is None:
        await insert_snapshot(conn, change.snapshot)
        return
    status = await conn.execute(
        "UPDATE ingest.feed_snapshots SET state = $2, state_changed_at = $3 "
        "WHERE snapshot_id = $1 AND state = $4",
        change.snapshot_id,
        str(change.to_state),
        change.at,
        str(change.from_state),
    )
    if status != "UPDATE 1":
        raise ConcurrentChange(
            f"snapshot {change.snapshot_id} is no longer {change.from_state}; "
            "it was changed concurrently"
        )


async def apply_changes(conn: Conn, changes: Iterable[StateChange]) -> None:
    """Apply in order (the planners put the demotion first)."""
    for change in changes:
        await apply_change(conn, change)


async def tools(conn: Conn) -> list[str]:
    rows = await conn.fetch("SELECT DISTINCT tool FROM ingest.feed_snapshots ORDER BY tool")
    return [row["tool"] for row in rows]


# -------------------------------------------------------------------------------- holds


def hold_from_row(row: asyncpg.Record) -> RetentionHold:
    return RetentionHold(
        hold_id=row["hold_id"],
        snapshot_id=row["snapshot_id"],
        tool=row["tool"],
        reason=row["reason"],
        expires_at=row["expires_at"],
        created_at=row["created_at"],
    )


async def load_holds(conn: Conn) -> list[RetentionHold]:
    """Every hold, expired ones included (the planner decides which are in force)."""
    rows = await conn.fetch(
        "SELECT hold_id, snapshot_id, tool, reason, expires_at, created_at "
        "FROM ingest.retention_exceptions ORDER BY hold_id"
    )
    return [hold_from_row(row) for row in rows]


async def insert_hold(
    conn: Conn,
    hold: RetentionHold,
    *,
    created_by: str,
    created_at: datetime,
) -> RetentionHold:
    """Store ``hold`` and return it with its id."""
    row = await conn.fetchrow(
        "INSERT INTO ingest.retention_exceptions "
        "(snapshot_id, tool, reason, created_by, created_at, expires_at) "
        "VALUES ($1, $2, $3, $4, $5, $6) "
        "RETURNING hold_id, snapshot_id, tool, reason, expires_at, created_at",
        hold.snapshot_id,
        hold.tool,
        hold.reason,
        created_by,
        created_at,
        hold.expires_at,
    )
    assert row is not None  # INSERT ... RETURNING always yields the row
    return hold_from_row(row)


# -------------------------------------------------------------------------------- audit


def audit_from_row(row: asyncpg.Record) -> AuditRecord:
    details: dict[str, AuditValue] = dict(row["details"] or {})
    return AuditRecord(
        seq=row["seq"],
        event=AuditEvent(row["event"]),
        snapshot_id=row["snapshot_id"],
        tool=row["tool"],
        actor=row["actor"],
        reason=row["reason"],
        details=details,
        occurred_at=row["occurred_at"],
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


async def append_audit(conn: Conn, drafts: Sequence[AuditDraft]) -> list[AuditRecord]:
    """Seal ``drafts`` onto the chain's tail and insert them, inside the caller's
    transaction. The tail lock is held until that transaction ends, so the next writer
    chains onto these records (or, if the transaction rolls back, onto the same tail)."""
    if not drafts:
        return []
    if not conn.is_in_transaction():
        raise RuntimeError("append_audit must run inside a transaction")
    await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_TAIL_LOCK_KEY)
    tail = await conn.fetchrow(
        "SELECT seq, hash FROM ingest.snapshot_audit ORDER BY seq DESC LIMIT 1"
    )
    prev_hash = GENESIS_HASH if tail is None else str(tail["hash"])
    sealed: list[AuditRecord] = []
    for draft in drafts:
        # seq comes from the sequence itself so that it is part of the hashed content.
        seq = int(
            await conn.fetchval(
                "SELECT nextval(pg_get_serial_sequence('ingest.snapshot_audit', 'seq'))"
            )
        )
        record = seal(draft, seq=seq, prev_hash=prev_hash)
        await conn.execute(
            f"INSERT INTO ingest.snapshot_audit ({_AUDIT_COLUMNS}) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            record.seq,
            str(record.event),
            record.snapshot_id,
            record.tool,
            record.actor,
            record.reason,
            dict(record.details),
            record.occurred_at,
            record.prev_hash,
            record.hash,
        )
        sealed.append(record)
        prev_hash = record.hash
    return sealed


async def load_audit(
    conn: Conn,
    *,
    after_seq: int = 0,
    limit: int | None = None,
    tool: str | None = None,
    snapshot_id: str | None = None,
    newest_first: bool = False,
) -> list[AuditRecord]:
    """Audit records with ``seq > after_seq`` in seq order (or newest first)."""
    order = "DESC" if newest_first else "ASC"
    rows = await conn.fetch(
        f"SELECT {_AUDIT_COLUMNS} FROM ingest.snapshot_audit "
        "WHERE seq > $1 AND ($2::text IS NULL OR tool = $2) "
        "AND ($3::text IS NULL OR snapshot_id = $3) "
        f"ORDER BY seq {order} LIMIT $4",
        after_seq,
        tool,
        snapshot_id,
        limit,
    )
    return [audit_from_row(row) for row in rows]
