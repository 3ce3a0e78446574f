"""Changes: import, rollback, manual expiry and retention holds (docs/snapshots.md).

Guarantees:

* Import, rollback and expiry change a tool's rows and append their audit records in one
  transaction under the tool's advisory lock; a failure leaves the previous state intact
  and nothing written (an uploaded object may stay behind; it is addressed by its content,
  so it is harmless and reused by an identical import).
* Rollback verifies the target (state, object present, BLAKE3 of its bytes) before a
  SAVEPOINT, restores and re-verifies inside it, and commits only when both pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import datetime

import asyncpg
import msgspec

from workers import s3 as s3io
from workers.metrics import SNAPSHOT_ROLLBACKS
from workers.snapshot_retention import store
from workers.snapshot_retention.api_shapes import RollbackResponse, rollback_response
from workers.snapshot_retention.audit import (
    change_draft,
    imported_draft,
    rolled_back_draft,
)
from workers.snapshot_retention.base import (
    SnapshotError,
    SnapshotNotFound,
    SnapshotsBase,
    log,
    utcnow,
)
from workers.snapshot_retention.freshness import FreshnessState, evaluate_freshness
from workers.snapshot_retention.ids import next_snapshot_id, parse_snapshot_id, validate_tool
from workers.snapshot_retention.lifecycle import (
    RollbackPlan,
    RollbackRefused,
    RollbackTrigger,
    activate,
    plan_rollback,
)
from workers.snapshot_retention.payload import (
    PayloadMismatch,
    normalize_payload,
    snapshot_from_import,
)
from workers.snapshot_retention.records import Snapshot, SnapshotState
from workers.snapshot_retention.retention import RetentionHold


class ImportFailed(SnapshotError):
    """The import did not happen; the previous active snapshot (if any) is still active."""

    def __init__(self, message: str, trigger: RollbackTrigger) -> None:
        super().__init__(message)
        self.trigger = trigger


class RollbackFailed(SnapshotError):
    """The restore or its verification failed; the savepoint was restored, nothing changed."""


class RollbackDenied(SnapshotError):
    """The target failed verification (see :class:`RollbackRefused`); nothing changed."""


class ImportResult(msgspec.Struct, frozen=True, kw_only=True):
    snapshot: Snapshot
    previous: str | None


def _check_version(tool_version: str) -> None:
    if not tool_version.strip():
        raise ValueError("tool version is empty")


class Changes(SnapshotsBase):
    async def import_snapshot(
        self,
        tool: str,
        tool_version: str,
        payload: bytes,
        metadata: Mapping[str, str] | None = None,
        *,
        actor: str,
        now: datetime | None = None,
        records_key: str | None = None,
        allow_empty: bool = False,
    ) -> ImportResult:
        """Validate, store and activate a payload; the tool's active snapshot becomes
        ``previous``. Any failure raises :class:`ImportFailed` with the previous active
        snapshot left active (the seed's automatic rollback)."""
        at = now or utcnow()
        try:
            validate_tool(tool)
            _check_version(tool_version)
            normalized = normalize_payload(
                payload, records_key=records_key, allow_empty=allow_empty
            )
        except ValueError as exc:
            raise await self._import_failed(
                tool, RollbackTrigger.VALIDATION_FAILURE, f"validation failed: {exc}"
            ) from None
        meta = {"importUser": actor, **dict(metadata or {})}
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await store.lock_tool(conn, tool)
                existing = await store.load_snapshots(conn, tool=tool, for_update=True)
                new_id = next_snapshot_id(tool, at, [s.snapshot_id for s in existing])
                snapshot = snapshot_from_import(
                    tool=tool,
                    tool_version=tool_version,
                    imported_at=at,
                    seq=parse_snapshot_id(new_id).seq,
                    payload=normalized,
                    metadata=meta,
                )
                changes = activate(existing, snapshot, at)
                # Uploaded under the tool lock, so a retention run cannot remove the (shared,
                # content-addressed) object between this upload and the commit.
                await self._upload(snapshot, normalized.normalized)
                await store.apply_changes(conn, changes)
                entered = changes[-1]
                await store.append_audit(
                    conn,
                    [
                        imported_draft(entered.snapshot, actor=actor, at=at),
                        change_draft(entered, actor=actor, reason=meta.get("importReason")),
                    ],
                )
        except s3io.S3Error as exc:
            raise await self._import_failed(
                tool, RollbackTrigger.IMPORT_FAILURE, f"upload failed: {exc}"
            ) from None
        except (asyncpg.PostgresError, store.ConcurrentChange, ValueError) as exc:
            raise await self._import_failed(
                tool, RollbackTrigger.IMPORT_FAILURE, f"could not record the snapshot: {exc}"
            ) from None
        previous = changes[0].snapshot_id if len(changes) > 1 else None
        log.info(
            "snapshot.imported",
            tool=tool,
            snapshot_id=entered.snapshot_id,
            record_count=snapshot.record_count,
            normalized_hash=snapshot.normalized_hash,
            previous=previous,
            actor=actor,
        )
        await self._refresh_tool_gauges(tool)
        return ImportResult(snapshot=entered.snapshot, previous=previous)

    async def _upload(self, snapshot: Snapshot, data: bytes) -> None:
        await s3io.put_object(
            self.s3,
            self.bucket,
            snapshot.object_key,
            data,
            content_type="application/json",
            metadata={"normalized-hash": snapshot.normalized_hash, "tool": snapshot.tool},
        )
        info = await s3io.head_object(self.s3, self.bucket, snapshot.object_key)
        if info is None or info.size != len(data):
            found = "nothing" if info is None else f"{info.size} bytes"
            raise s3io.S3Error(
                f"stored object {snapshot.object_key} holds {found}, expected {len(data)} bytes"
            )

    async def _import_failed(
        self, tool: str, trigger: RollbackTrigger, message: str
    ) -> ImportFailed:
        SNAPSHOT_ROLLBACKS.labels(trigger=str(trigger)).inc()
        active: str | None = None
        with contextlib.suppress(asyncpg.PostgresError, OSError, ValueError):
            found = await self.list_snapshots(tool=validate_tool(tool), state=SnapshotState.ACTIVE)
            active = found[0].snapshot_id if found else None
        kept = f"{active} stays active" if active else "the tool has no active snapshot"
        log.warning("snapshot.import_failed", tool=tool, trigger=str(trigger), error=message)
        return ImportFailed(f"import of {tool} failed, {message}; {kept}", trigger)

    async def rollback(
        self,
        tool: str,
        target_id: str | None = None,
        *,
        reason: str,
        actor: str,
        dry_run: bool = False,
        force: bool = False,
        trigger: RollbackTrigger = RollbackTrigger.USER_REQUEST,
        now: datetime | None = None,
    ) -> RollbackResponse:
        """Make ``target_id`` (default: the previous snapshot) the tool's active snapshot.

        Verify target → SAVEPOINT → restore → verify → commit → update active. The target
        must be previous or archived, its object present and hashing to its
        ``normalized_hash``. ``force`` skips only the freshness check (a target whose age is
        already critical is refused without it); it never skips the hash check. ``dry_run``
        verifies everything and changes nothing.
        """
        at = now or utcnow()
        try:
            validate_tool(tool)
        except ValueError as exc:
            raise RollbackDenied(str(exc)) from None
        if not reason.strip():
            raise RollbackDenied("a rollback needs a reason")
        async with self.pool.acquire() as conn, conn.transaction():
            await store.lock_tool(conn, tool)
            snapshots = await store.load_snapshots(conn, tool=tool, for_update=True)
            # 1. verify target: exists, allowed state, fresh enough, object present and intact
            try:
                plan = plan_rollback(snapshots, target_id, at, trigger=trigger)
            except RollbackRefused as exc:
                raise RollbackDenied(f"rollback of {tool} refused: {exc}") from None
            if not force:
                self._check_target_freshness(plan.target, at)
            data = await self._target_payload(plan.target)
            if dry_run:
                log.info(
                    "snapshot.rollback_planned",
                    tool=tool,
                    target=plan.target.snapshot_id,
                    actor=actor,
                )
                return rollback_response(plan, status="dry_run", executed_by=actor, reason=reason)
            # 2. savepoint, 3. restore, 4. verify; a failure returns to the savepoint and the
            # outer transaction then ends without a change.
            try:
                async with conn.transaction():
                    await store.apply_changes(conn, plan.changes)
                    await self._verify_restore(conn, plan, len(data))
                    await store.append_audit(
                        conn, [rolled_back_draft(plan, actor=actor, reason=reason)]
                    )
            except (asyncpg.PostgresError, store.ConcurrentChange, s3io.S3Error) as exc:
                log.error(
                    "snapshot.rollback_failed",
                    tool=tool,
                    target=plan.target.snapshot_id,
                    error=str(exc),
                )
                raise RollbackFailed(
                    f"rollback of {tool} to {plan.target.snapshot_id} failed and was undone: {exc}"
                ) from None
        # 5. committed; 6. the new active snapshot is what readers and gauges now see
        SNAPSHOT_ROLLBACKS.labels(trigger=str(plan.trigger)).inc()
        log.info(
            "snapshot.rolled_back",
            tool=tool,
            from_snapshot=None if plan.current is None else plan.current.snapshot_id,
            to_snapshot=plan.target.snapshot_id,
            trigger=str(plan.trigger),
            actor=actor,
        )
        await self._refresh_tool_gauges(tool)
        return rollback_response(plan, status="completed", executed_by=actor, reason=reason)

    def _check_target_freshness(self, target: Snapshot, at: datetime) -> None:
        as_active = msgspec.structs.replace(target, state=SnapshotState.ACTIVE)
        report = evaluate_freshness(as_active, self.freshness, at)
        if report.state is FreshnessState.CRITICAL:
            raise RollbackDenied(
                f"rollback of {target.tool} refused: target {target.snapshot_id} would be "
                f"critical ({report.reason}); force the rollback to accept stale data"
            )

    async def _target_payload(self, target: Snapshot) -> bytes:
        try:
            return await self._verified_payload(target)
        except (s3io.S3Error, PayloadMismatch) as exc:
            raise RollbackDenied(
                f"rollback of {target.tool} refused: target {target.snapshot_id} failed "
                f"verification: {exc}"
            ) from None

    async def _verify_restore(self, conn: store.Conn, plan: RollbackPlan, size: int) -> None:
        active = await store.load_snapshots(conn, tool=plan.tool, states=[SnapshotState.ACTIVE])
        if [s.snapshot_id for s in active] != [plan.target.snapshot_id]:
            raise store.ConcurrentChange(
                f"after the restore the active snapshots of {plan.tool} are "
                f"{[s.snapshot_id for s in active]}, expected {plan.target.snapshot_id}"
            )
        restored = active[0]
        if restored.normalized_hash != plan.target.normalized_hash:
            raise store.ConcurrentChange(f"{restored.snapshot_id} changed during the restore")
        info = await s3io.head_object(self.s3, self.bucket, restored.object_key)
        if info is None or info.size != size:
            raise s3io.S3Error(f"object {restored.object_key} changed during the restore")

    async def add_hold(
        self, hold: RetentionHold, *, actor: str, now: datetime | None = None
    ) -> RetentionHold:
        async with self.pool.acquire() as conn:
            if (
                hold.snapshot_id is not None
                and await store.get_snapshot(conn, hold.snapshot_id) is None
            ):
                raise SnapshotNotFound(f"snapshot {hold.snapshot_id} does not exist")
            stored = await store.insert_hold(
                conn, hold, created_by=actor, created_at=now or utcnow()
            )
        log.info("snapshot.hold_added", hold_id=stored.hold_id, actor=actor)
        return stored
