"""The snapshot-retention worker: import, rollback, retention, freshness and audit
operations over PostgreSQL and S3, plus the scheduled retention job.

No stream in or out. State lives in ``ingest.feed_snapshots`` (one active snapshot per
tool), ``ingest.retention_exceptions`` and the hash-chained ``ingest.snapshot_audit``;
payloads live in S3 under content-addressed keys, so re-uploading is idempotent.

Guarantees:

* Import and rollback change a tool's rows and append their audit records in one
  transaction under the tool's advisory lock; a failure leaves the previous active snapshot
  active and nothing written (an uploaded object may stay behind; it is addressed by its
  content, so it is harmless and reused by an identical import).
* Rollback verifies the target (state, object present, BLAKE3 of its bytes) before a
  SAVEPOINT, restores and re-verifies inside it, and commits only when both pass.
* Retention applies its plan in exactly one process of the fleet at a time
  (``pg_try_advisory_lock``); each action is its own transaction, re-checked against the
  row and the holds at that moment, and a payload object is removed inside the
  transaction that records its deletion (a failed removal leaves the record archived).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, Literal

import asyncpg
import msgspec
import structlog
from aiohttp import web

from workers import s3 as s3io
from workers.db import table_exists
from workers.errors import ConfigError, FleetError
from workers.kernel.stopping import Stopping
from workers.kernel.worker import Resources
from workers.metrics import (
    SNAPSHOT_AGE,
    SNAPSHOT_FRESHNESS,
    SNAPSHOT_RETENTION_ACTIONS,
    SNAPSHOT_ROLLBACKS,
)
from workers.settings import Settings
from workers.snapshot_retention import core, store
from workers.snapshot_retention.core import (
    GENESIS_HASH,
    AuditRecord,
    FreshnessPolicy,
    FreshnessReport,
    FreshnessState,
    FreshnessThresholds,
    RetentionAction,
    RetentionHold,
    RetentionPolicy,
    RollbackRefused,
    RollbackResponse,
    RollbackTrigger,
    SlaListResponse,
    SlaResponse,
    Snapshot,
    SnapshotState,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client

log = structlog.get_logger("workers.snapshot_retention")

GAUGE_INTERVAL_SECONDS: Final = 60.0
SCAN_METRICS_BATCH: Final = 5_000
AUDIT_VERIFY_BATCH: Final = 5_000
_IDENTIFIER: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def utcnow() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------------------ errors


class SnapshotError(FleetError):
    """A snapshot operation that failed on purpose, with a one-line reason."""


class ImportFailed(SnapshotError):
    """The import did not happen; the previous active snapshot (if any) is still active."""

    def __init__(self, message: str, trigger: RollbackTrigger) -> None:
        super().__init__(message)
        self.trigger = trigger


class RollbackFailed(SnapshotError):
    """The restore or its verification failed; the savepoint was restored, nothing changed."""


class RollbackDenied(SnapshotError):
    """The target failed verification (see :class:`core.RollbackRefused`); nothing changed."""


class ReadDenied(SnapshotError):
    """Reading the tool's active snapshot is refused in its freshness state."""


class SnapshotNotFound(SnapshotError):
    pass


# ------------------------------------------------------------------------------ results


class ImportResult(msgspec.Struct, frozen=True, kw_only=True):
    snapshot: Snapshot
    previous: str | None


class ActiveRead(msgspec.Struct, frozen=True, kw_only=True):
    """The active snapshot's verified payload and the freshness it was read under."""

    snapshot: Snapshot
    data: bytes
    freshness: FreshnessReport


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


class ScanMetricsOutcome(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["planned", "applied", "skipped", "failed"]
    cutoff: datetime
    metrics_rows: int = 0
    phase_rows: int = 0
    detail: str | None = None


class RetentionReport(msgspec.Struct, frozen=True, kw_only=True):
    """What one retention run did (or, for ``dry_run``, would do) at ``now``."""

    status: Literal["applied", "dry_run", "skipped"]
    now: datetime
    actions: list[ActionOutcome] = msgspec.field(default_factory=list)
    held: list[ActionOutcome] = msgspec.field(default_factory=list)
    scan_metrics: ScanMetricsOutcome | None = None
    detail: str | None = None

    @property
    def failed(self) -> bool:
        return any(a.status == "failed" for a in self.actions) or (
            self.scan_metrics is not None and self.scan_metrics.status == "failed"
        )


class AuditVerification(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    checked: int
    first_bad: AuditRecord | None = None
    reason: str | None = None


# ------------------------------------------------------------------------------ operations


def freshness_policy(settings: Settings) -> FreshnessPolicy:
    """The fleet-wide thresholds from settings (applied to every tool, custom ones too)."""
    return FreshnessPolicy(
        default=FreshnessThresholds(
            max_age=timedelta(days=settings.snapshot_max_age_days),
            stale_warning=timedelta(days=settings.snapshot_stale_days),
            critical=timedelta(days=settings.snapshot_critical_days),
        )
    )


class Snapshots:
    """Every snapshot operation, over one pool and one S3 client (opened by the caller)."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        s3: S3Client | None,
        *,
        freshness: FreshnessPolicy | None = None,
        retention: RetentionPolicy | None = None,
        scan_metrics_schema: str = "scanner",
    ) -> None:
        if not _IDENTIFIER.fullmatch(scan_metrics_schema):
            raise ValueError(f"invalid schema name {scan_metrics_schema!r}")
        self.settings = settings
        self.pool = pool
        self._s3 = s3
        self.bucket = settings.s3_bucket
        self.freshness = freshness or freshness_policy(settings)
        try:
            self.retention = retention or RetentionPolicy(schedule=settings.retention_schedule)
        except ValueError as exc:
            raise ConfigError(f"invalid FLEET_RETENTION_SCHEDULE: {exc}") from None
        self.scan_metrics_schema = scan_metrics_schema

    @property
    def s3(self) -> S3Client:
        if self._s3 is None:
            raise ConfigError("this operation needs S3, but no S3 client was opened")
        return self._s3

    # ------------------------------------------------------------------ reads

    async def list_snapshots(
        self, *, tool: str | None = None, state: SnapshotState | None = None
    ) -> list[Snapshot]:
        async with self.pool.acquire() as conn:
            return await store.load_snapshots(
                conn, tool=tool, states=None if state is None else [state]
            )

    async def get(self, snapshot_id: str) -> Snapshot | None:
        async with self.pool.acquire() as conn:
            return await store.get_snapshot(conn, snapshot_id)

    async def freshness_report(self, tool: str, now: datetime | None = None) -> FreshnessReport:
        at = now or utcnow()
        async with self.pool.acquire() as conn:
            snapshots = await store.load_snapshots(
                conn,
                tool=core.validate_tool(tool),
                states=[SnapshotState.ACTIVE, SnapshotState.EXPIRED],
            )
        return _report(tool, snapshots, self.freshness, at)

    async def sla(
        self, now: datetime | None = None, *, tool: str | None = None
    ) -> SlaResponse | SlaListResponse:
        """The seed's SLA body: one tool's entry, or every tool that has snapshots."""
        at = now or utcnow()
        if tool is not None:
            return core.sla_report(
                await self.list_snapshots(tool=core.validate_tool(tool)),
                self.freshness,
                at,
                tool=tool,
            )
        return core.sla_report(await self.list_snapshots(), self.freshness, at)

    async def read_active(
        self, tool: str, *, override: bool = False, actor: str, now: datetime | None = None
    ) -> ActiveRead:
        """The active snapshot and its verified payload. Refused (:class:`ReadDenied`) for a
        critical tool without ``override`` and always for a tool without readable data."""
        report = await self.freshness_report(tool, now)
        try:
            core.require_readable(report, override=override)
        except core.ReadRefused as exc:
            log.warning("snapshot.read_refused", tool=tool, state=str(report.state))
            hint = (
                "; pass the override to read it anyway"
                if report.state is FreshnessState.CRITICAL
                else ""
            )
            raise ReadDenied(f"reading refused: {exc}{hint}") from None
        snapshot = await self.get(report.snapshot_id or "")
        if snapshot is None:  # the row vanished between the two reads
            raise SnapshotNotFound(f"snapshot {report.snapshot_id} does not exist")
        try:
            data = await self._verified_payload(snapshot)
        except core.PayloadMismatch as exc:
            log.error("snapshot.payload_corrupt", snapshot_id=snapshot.snapshot_id)  # noqa: TRY400 - reason is in the raised error
            raise SnapshotError(
                f"active snapshot {snapshot.snapshot_id} failed verification: {exc}; "
                "roll back to a good snapshot"
            ) from None
        if report.state is FreshnessState.CRITICAL:
            log.warning(
                "snapshot.read_override", tool=tool, snapshot_id=snapshot.snapshot_id, actor=actor
            )
        return ActiveRead(snapshot=snapshot, data=data, freshness=report)

    # ------------------------------------------------------------------ import

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
            core.validate_tool(tool)
            _check_version(tool_version)
            normalized = core.normalize_payload(
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
                new_id = core.next_snapshot_id(tool, at, [s.snapshot_id for s in existing])
                snapshot = core.snapshot_from_import(
                    tool=tool,
                    tool_version=tool_version,
                    imported_at=at,
                    seq=core.parse_snapshot_id(new_id).seq,
                    payload=normalized,
                    metadata=meta,
                )
                changes = core.activate(existing, snapshot, at)
                # Uploaded under the tool lock, so a retention run cannot remove the (shared,
                # content-addressed) object between this upload and the commit.
                await self._upload(snapshot, normalized.normalized)
                await store.apply_changes(conn, changes)
                entered = changes[-1]
                await store.append_audit(
                    conn,
                    [
                        core.imported_draft(entered.snapshot, actor=actor, at=at),
                        core.change_draft(entered, actor=actor, reason=meta.get("importReason")),
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
            found = await self.list_snapshots(
                tool=core.validate_tool(tool), state=SnapshotState.ACTIVE
            )
            active = found[0].snapshot_id if found else None
        kept = f"{active} stays active" if active else "the tool has no active snapshot"
        log.warning("snapshot.import_failed", tool=tool, trigger=str(trigger), error=message)
        return ImportFailed(f"import of {tool} failed, {message}; {kept}", trigger)

    # ------------------------------------------------------------------ rollback

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
            core.validate_tool(tool)
        except ValueError as exc:
            raise RollbackDenied(str(exc)) from None
        if not reason.strip():
            raise RollbackDenied("a rollback needs a reason")
        async with self.pool.acquire() as conn, conn.transaction():
            await store.lock_tool(conn, tool)
            snapshots = await store.load_snapshots(conn, tool=tool, for_update=True)
            # 1. verify target: exists, allowed state, fresh enough, object present and intact
            try:
                plan = core.plan_rollback(snapshots, target_id, at, trigger=trigger)
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
                return core.rollback_response(
                    plan, status="dry_run", executed_by=actor, reason=reason
                )
            # 2. savepoint, 3. restore, 4. verify; a failure returns to the savepoint and the
            # outer transaction then ends without a change.
            try:
                async with conn.transaction():
                    await store.apply_changes(conn, plan.changes)
                    await self._verify_restore(conn, plan, len(data))
                    await store.append_audit(
                        conn, [core.rolled_back_draft(plan, actor=actor, reason=reason)]
                    )
            except (asyncpg.PostgresError, store.ConcurrentChange, s3io.S3Error) as exc:
                log.error(  # noqa: TRY400 - an expected failure: one line, no traceback
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
        return core.rollback_response(plan, status="completed", executed_by=actor, reason=reason)

    def _check_target_freshness(self, target: Snapshot, at: datetime) -> None:
        as_active = msgspec.structs.replace(target, state=SnapshotState.ACTIVE)
        report = core.evaluate_freshness(as_active, self.freshness, at)
        if report.state is FreshnessState.CRITICAL:
            raise RollbackDenied(
                f"rollback of {target.tool} refused: target {target.snapshot_id} would be "
                f"critical ({report.reason}); force the rollback to accept stale data"
            )

    async def _target_payload(self, target: Snapshot) -> bytes:
        try:
            return await self._verified_payload(target)
        except (s3io.S3Error, core.PayloadMismatch) as exc:
            raise RollbackDenied(
                f"rollback of {target.tool} refused: target {target.snapshot_id} failed "
                f"verification: {exc}"
            ) from None

    async def _verified_payload(self, snapshot: Snapshot) -> bytes:
        data = await s3io.get_object(self.s3, self.bucket, snapshot.object_key)
        core.verify_payload(snapshot, data)
        return data

    async def _verify_restore(self, conn: store.Conn, plan: core.RollbackPlan, size: int) -> None:
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

    # ------------------------------------------------------------------ holds

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

    async def holds(self) -> list[RetentionHold]:
        async with self.pool.acquire() as conn:
            return await store.load_holds(conn)

    # ------------------------------------------------------------------ retention

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
    ) -> tuple[list[RetentionAction], list[core.HeldAction]]:
        snapshots = await store.load_snapshots(conn)
        holds = await store.load_holds(conn)
        return (
            core.plan_retention(snapshots, holds, at, self.retention),
            core.held_retention(snapshots, holds, at, self.retention),
        )

    async def _plan_retention(self, conn: store.Conn, at: datetime) -> RetentionReport:
        actions, held = await self._plan(conn, at)
        return RetentionReport(
            status="dry_run",
            now=at,
            actions=[_outcome(a, "planned") for a in actions],
            held=[_outcome(h.action, "skipped", reason=h.reason) for h in held],
            scan_metrics=await self._scan_metrics_retention(conn, at, dry_run=True),
        )

    async def _apply_retention(self, conn: store.Conn, at: datetime, actor: str) -> RetentionReport:
        actions, held = await self._plan(conn, at)
        outcomes = [await self._apply_action(conn, action, at, actor) for action in actions]
        report = RetentionReport(
            status="applied",
            now=at,
            actions=outcomes,
            held=[_outcome(h.action, "skipped", reason=h.reason) for h in held],
            scan_metrics=await self._scan_metrics_retention(conn, at, dry_run=False),
        )
        log.info(
            "snapshot.retention_applied",
            applied=sum(o.status == "applied" for o in outcomes),
            failed=sum(o.status == "failed" for o in outcomes),
            skipped=sum(o.status == "skipped" for o in outcomes),
            held=len(held),
            scan_metrics_deleted=0
            if report.scan_metrics is None
            else report.scan_metrics.metrics_rows,
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
                blocking = core.blocking_holds(current, await store.load_holds(conn), at)
                if blocking:
                    held = "; ".join(h.describe() for h in blocking)
                    return _outcome(action, "skipped", detail=f"held since planning: {held}")
                if action.remove_object and await _object_in_use(conn, action):
                    # An import of identical content reused the object after planning.
                    action = msgspec.structs.replace(action, remove_object=False)
                await store.apply_change(conn, action.change)
                await store.append_audit(conn, [core.retention_draft(action, actor=actor)])
                if action.remove_object:
                    # Inside the transaction: if the removal fails, the record stays archived
                    # and the next run tries again (removing an absent key succeeds).
                    await s3io.delete_object(self.s3, self.bucket, action.object_key)
        except (asyncpg.PostgresError, store.ConcurrentChange, s3io.S3Error) as exc:
            log.error(  # noqa: TRY400 - an expected failure: one line, no traceback
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

    async def _scan_metrics_retention(
        self, conn: store.Conn, at: datetime, *, dry_run: bool
    ) -> ScanMetricsOutcome:
        """Delete scan metrics older than ``scan_metrics_retention_days`` in bounded batches,
        their execution phases first (whatever the foreign key's ON DELETE says)."""
        cutoff = at - timedelta(days=self.settings.scan_metrics_retention_days)
        schema = self.scan_metrics_schema
        metrics, phases = f"{schema}.scan_metrics", f"{schema}.execution_phases"
        if not await table_exists(conn, metrics):
            return ScanMetricsOutcome(
                status="skipped", cutoff=cutoff, detail=f"{metrics} does not exist"
            )
        has_phases = await table_exists(conn, phases)
        try:
            if dry_run:
                count = await conn.fetchval(
                    f"SELECT count(*) FROM {metrics} WHERE created_at < $1",
                    cutoff,
                )
                return ScanMetricsOutcome(status="planned", cutoff=cutoff, metrics_rows=int(count))
            deleted = deleted_phases = 0
            while True:
                async with conn.transaction():
                    ids = [
                        row["metrics_id"]
                        for row in await conn.fetch(
                            f"SELECT metrics_id FROM {metrics} WHERE created_at < $1 "
                            "ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                            cutoff,
                            SCAN_METRICS_BATCH,
                        )
                    ]
                    if not ids:
                        break
                    if has_phases:
                        deleted_phases += _count(
                            await conn.execute(
                                f"DELETE FROM {phases} WHERE metrics_id = ANY($1)",
                                ids,
                            )
                        )
                    deleted += _count(
                        await conn.execute(
                            f"DELETE FROM {metrics} WHERE metrics_id = ANY($1)",
                            ids,
                        )
                    )
        except asyncpg.PostgresError as exc:
            log.error("scan_metrics.retention_failed", error=str(exc))  # noqa: TRY400 - one line, no traceback
            return ScanMetricsOutcome(status="failed", cutoff=cutoff, detail=str(exc))
        if deleted:
            log.info("scan_metrics.retention_applied", deleted=deleted, phases=deleted_phases)
        return ScanMetricsOutcome(
            status="applied", cutoff=cutoff, metrics_rows=deleted, phase_rows=deleted_phases
        )

    # ------------------------------------------------------------------ audit

    async def audit(
        self,
        *,
        tool: str | None = None,
        snapshot_id: str | None = None,
        limit: int = 50,
    ) -> list[AuditRecord]:
        """The newest ``limit`` audit records (optionally of one tool or snapshot), oldest
        first."""
        async with self.pool.acquire() as conn:
            found = await store.load_audit(
                conn, tool=tool, snapshot_id=snapshot_id, limit=limit, newest_first=True
            )
        return found[::-1]

    async def verify_audit(self) -> AuditVerification:
        """Check the whole chain in seq order, in batches; name the first bad record."""
        checked, after, start = 0, 0, GENESIS_HASH
        async with self.pool.acquire() as conn:
            while True:
                batch = await store.load_audit(conn, after_seq=after, limit=AUDIT_VERIFY_BATCH)
                if not batch:
                    return AuditVerification(ok=True, checked=checked)
                broken = core.verify_chain(batch, start_hash=start)
                if broken is not None:
                    bad = batch[broken.index]
                    log.warning("snapshot.audit_broken", seq=bad.seq, reason=broken.reason)
                    return AuditVerification(
                        ok=False,
                        checked=checked + broken.index,
                        first_bad=bad,
                        reason=broken.reason,
                    )
                checked += len(batch)
                after, start = batch[-1].seq, batch[-1].hash

    # ------------------------------------------------------------------ gauges

    async def refresh_gauges(self, now: datetime | None = None) -> None:
        """Set ``fleet_snapshot_age_seconds`` and ``fleet_snapshot_freshness`` for every
        tool that has snapshots."""
        at = now or utcnow()
        async with self.pool.acquire() as conn:
            snapshots = await store.load_snapshots(conn)
        by_tool: dict[str, list[Snapshot]] = {}
        for snapshot in snapshots:
            by_tool.setdefault(snapshot.tool, []).append(snapshot)
        for tool, of_tool in by_tool.items():
            _set_gauges(_report(tool, of_tool, self.freshness, at))

    async def _refresh_tool_gauges(self, tool: str) -> None:
        try:
            _set_gauges(await self.freshness_report(tool))
        except (asyncpg.PostgresError, OSError) as exc:
            # The operation itself succeeded; the next periodic refresh catches up.
            log.warning("snapshot.gauges_failed", tool=tool, error=str(exc))


def _check_version(tool_version: str) -> None:
    if not tool_version.strip():
        raise ValueError("tool version is empty")


def _report(
    tool: str, snapshots: Sequence[Snapshot], policy: FreshnessPolicy, at: datetime
) -> FreshnessReport:
    active = [s for s in snapshots if s.state is SnapshotState.ACTIVE]
    expired = [s for s in snapshots if s.state is SnapshotState.EXPIRED]
    current = (
        active[0]
        if active
        else max(expired, key=lambda s: (s.state_changed_at, s.snapshot_id), default=None)
    )
    return core.evaluate_freshness(current, policy, at, tool=tool)


def _set_gauges(report: FreshnessReport) -> None:
    if report.age is None:
        with contextlib.suppress(KeyError):
            SNAPSHOT_AGE.remove(report.tool)
    else:
        SNAPSHOT_AGE.labels(tool=report.tool).set(report.age.total_seconds())
    for state in FreshnessState:
        SNAPSHOT_FRESHNESS.labels(tool=report.tool, state=str(state)).set(
            1 if state is report.state else 0
        )


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


def _count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 5000".
    return int(status.rsplit(" ", 1)[-1])


# ------------------------------------------------------------------------------ the worker


class SnapshotRetentionService:
    """``fleet run snapshot-retention``: retention on the cron schedule (once across the
    fleet), freshness gauges every minute, and the seed's HTTP API on the ops endpoint."""

    name = "snapshot-retention"
    uses_s3 = True

    def __init__(self, resources: Resources) -> None:
        if resources.pool is None:
            raise ConfigError("snapshot-retention needs PostgreSQL")
        if resources.s3 is None:
            raise ConfigError("snapshot-retention needs S3 (FLEET_S3_ENDPOINT_URL)")
        self.settings = resources.settings
        s3_client: S3Client = resources.s3  # type: ignore[assignment]  # Resources keeps the client untyped
        self.snapshots = Snapshots(resources.settings, resources.pool, s3_client)
        self.actor = f"retention:{resources.settings.resolved_consumer_name()}"

    def routes(self) -> list[web.RouteDef]:
        from workers.snapshot_retention.api import routes

        return routes(self.snapshots, self.settings)

    async def run(self, stopping: Stopping) -> None:
        policy = self.snapshots.retention
        log.info("snapshot_retention.started", schedule=policy.schedule)
        await self._refresh()
        next_run = core.next_retention_run(policy, utcnow())
        while True:
            wait = min((next_run - utcnow()).total_seconds(), GAUGE_INTERVAL_SECONDS)
            if await stopping.sleep(wait):
                break
            now = utcnow()
            if now >= next_run:
                await self._retention(now)
                next_run = core.next_retention_run(policy, now)
            await self._refresh()
        log.info("snapshot_retention.stopped")

    async def _refresh(self) -> None:
        try:
            await self.snapshots.refresh_gauges()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("snapshot.gauges_failed", error=str(exc))

    async def _retention(self, now: datetime) -> None:
        try:
            report = await self.snapshots.run_retention(now, actor=self.actor)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, FleetError) as exc:
            # A scheduled job survives a bad night; the next tick tries again.
            log.error("snapshot.retention_failed", error=str(exc))  # noqa: TRY400 - one line, no traceback
            return
        log.info("snapshot.retention_run", status=report.status, failed=report.failed)
