"""Snapshot retention: apply the plan of ``retention.plan_retention`` once across the fleet
(docs/snapshots.md).

Only one process applies a plan at a time (``pg_try_advisory_lock``); each action is its own
transaction, re-checked against the row and the holds at that moment, and a payload object
is removed inside the transaction that records its deletion (a failed removal leaves the
record archived). Old scan metrics are not this module's business: the scan-metrics worker
expires its own rows (``workers/scan_metrics/retention.py``).
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Literal

import asyncpg
import msgspec

from workers import s3 as s3io
from workers.metrics import SNAPSHOT_RETENTION_ACTIONS
from workers.snapshot_retention import store
from workers.snapshot_retention.audit import retention_draft
from workers.snapshot_retention.base import SnapshotsBase, log, utcnow
from workers.snapshot_retention.retention import (
    HeldAction,
    RetentionAction,
    blocking_holds,
    held_retention,
    plan_retention,
)


class ActionOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """One retention action: planned (dry run), applied, skipped (changed or held since
    planning) or failed (nothing of it was kept)."""

    action: str
    snapshot_id: str
    tool: str
    status: Literal["planned", "applied", "skipped", "failed"]
    reason: str
    object_key: str
    object_removed: bool
    detail: str | None = None


class RetentionReport(msgspec.Struct, frozen=True, kw_only=True):
    """What one retention run did (or, for ``dry_run``, would do) at ``now``."""

    status: Literal["applied", "dry_run", "skipped"]
    now: datetime
    actions: list[ActionOutcome] = msgspec.field(default_factory=list)
    held: list[ActionOutcome] = msgspec.field(default_factory=list)
    detail: str | None = None

    @property
    def failed(self) -> bool:
        return any(a.status == "failed" for a in self.actions)


class Housekeeping(SnapshotsBase):
    async def run_retention(
        self, now: datetime | None = None, *, dry_run: bool = False, actor: str = "retention"
    ) -> RetentionReport:
        """Apply (or with ``dry_run`` only plan) the retention rules at ``now``.

        Only one process of the fleet applies a plan at a time: the others return
        ``status="skipped"`` at once. A dry run takes no lock and changes nothing.
        """
        at = now or utcnow()
        async with self.pool.acquire() as conn:
            if dry_run:
                return await self._plan_retention(conn, at)
            locked = await conn.fetchval(
                "SELECT pg_try_advisory_lock($1)", store.RETENTION_LOCK_KEY
            )
            if not locked:
                log.info("snapshot.retention_skipped", reason="lock held elsewhere")
                return RetentionReport(
                    status="skipped",
                    now=at,
                    detail="skipped: another process holds the lock",
                )
            try:
                return await self._apply_retention(conn, at, actor)
            finally:
                # A dead connection has released the lock already.
                with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    await conn.execute("SELECT pg_advisory_unlock($1)", store.RETENTION_LOCK_KEY)

    async def _plan(
        self, conn: store.Conn, at: datetime
    ) -> tuple[list[RetentionAction], list[HeldAction]]:
        snapshots = await store.load_snapshots(conn)
        holds = await store.load_holds(conn)
        return (
            plan_retention(snapshots, holds, at, self.retention),
            held_retention(snapshots, holds, at, self.retention),
        )

    async def _plan_retention(self, conn: store.Conn, at: datetime) -> RetentionReport:
        actions, held = await self._plan(conn, at)
        return RetentionReport(
            status="dry_run",
            now=at,
            actions=[_outcome(a, "planned") for a in actions],
            held=[_outcome(h.action, "skipped", reason=h.reason) for h in held],
        )

    async def _apply_retention(self, conn: store.Conn, at: datetime, actor: str) -> RetentionReport:
        actions, held = await self._plan(conn, at)
        outcomes = [await self._apply_action(conn, action, at, actor) for action in actions]
        report = RetentionReport(
            status="applied",
            now=at,
            actions=outcomes,
            held=[_outcome(h.action, "skipped", reason=h.reason) for h in held],
        )
        log.info(
            "snapshot.retention_applied",
            applied=sum(o.status == "applied" for o in outcomes),
            failed=sum(o.status == "failed" for o in outcomes),
            skipped=sum(o.status == "skipped" for o in outcomes),
            held=len(held),
        )
        for tool in sorted({a.tool for a in actions}):
            await self._refresh_tool_gauges(tool)
        return report

    async def _apply_action(
        self, conn: store.Conn, action: RetentionAction, at: datetime, actor: str
    ) -> ActionOutcome:
        try:
            async with conn.transaction():
                await store.lock_tool(conn, action.tool)
                current = await store.get_snapshot(conn, action.snapshot_id, for_update=True)
                if current is None or current.state is not action.change.from_state:
                    state = "gone" if current is None else f"now {current.state}"
                    return _outcome(action, "skipped", detail=f"changed since planning ({state})")
                blocking = blocking_holds(current, await store.load_holds(conn), at)
                if blocking:
                    held = "; ".join(h.describe() for h in blocking)
                    return _outcome(action, "skipped", detail=f"held since planning: {held}")
                if action.remove_object and await _object_in_use(conn, action):
                    # An import of identical content reused the object after planning.
                    action = msgspec.structs.replace(action, remove_object=False)
                await store.apply_change(conn, action.change)
                await store.append_audit(conn, [retention_draft(action, actor=actor)])
                if action.remove_object:
                    # Inside the transaction: if the removal fails, the record stays archived
                    # and the next run tries again (removing an absent key succeeds).
                    await s3io.delete_object(self.s3, self.bucket, action.object_key)
        except (asyncpg.PostgresError, store.ConcurrentChange, s3io.S3Error) as exc:
            log.error(
                "snapshot.retention_action_failed",
                snapshot_id=action.snapshot_id,
                action=str(action.kind),
                error=str(exc),
            )
            return _outcome(action, "failed", detail=str(exc))
        SNAPSHOT_RETENTION_ACTIONS.labels(action=str(action.kind)).inc()
        log.info(
            "snapshot.retention_action",
            snapshot_id=action.snapshot_id,
            action=str(action.kind),
            object_removed=action.remove_object,
        )
        return _outcome(action, "applied")


def _outcome(
    action: RetentionAction,
    status: Literal["planned", "applied", "skipped", "failed"],
    *,
    reason: str | None = None,
    detail: str | None = None,
) -> ActionOutcome:
    return ActionOutcome(
        action=str(action.kind),
        snapshot_id=action.snapshot_id,
        tool=action.tool,
        status=status,
        reason=reason or action.reason,
        object_key=action.object_key,
        object_removed=action.remove_object and status in ("planned", "applied"),
        detail=detail,
    )


async def _object_in_use(conn: store.Conn, action: RetentionAction) -> bool:
    users = await conn.fetchval(
        "SELECT count(*) FROM ingest.feed_snapshots "
        "WHERE object_key = $1 AND snapshot_id <> $2 AND state <> 'deleted'",
        action.object_key,
        action.snapshot_id,
    )
    return bool(users)
