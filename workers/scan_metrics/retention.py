"""Scan-metrics retention: the scan-metrics worker expires its own old rows.

Rows of ``scanner.scan_metrics`` created more than ``FLEET_SCAN_METRICS_RETENTION_DAYS``
(default 90) ago are deleted with their ``scanner.execution_phases``, in bounded batches,
each batch its own transaction. It runs as the worker's background housekeeping: once when
the worker starts, then on ``FLEET_RETENTION_SCHEDULE`` (UTC cron, default ``0 0 * * *``).
Exactly one replica of the fleet deletes at a time (a PostgreSQL session advisory lock,
``pg_try_advisory_lock``); the others skip that run. It needs PostgreSQL only: no S3 and no
snapshot-retention worker (docs/snapshots.md, "Scan-metrics retention").
"""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

import asyncpg
import msgspec
import structlog
from croniter import croniter

from workers.db import DbConn, table_exists
from workers.errors import ConfigError, error_text
from workers.kernel.stopping import Stopping
from workers.settings import Settings

log = structlog.get_logger("workers.scan_metrics")

# The fleet's advisory-lock prefix 0x5F1EE7 (see schema/), 0003 the scan-metrics migration.
RETENTION_LOCK_KEY: Final = 0x5F1EE7_0003
"""Session lock: held by the one process of the fleet deleting old scan metrics."""
BATCH: Final = 5_000
_IDENTIFIER: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class ScanRetentionOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """One run: ``planned`` (dry run), ``applied``, ``skipped`` (another replica holds the
    lock, or the tables do not exist) or ``failed`` (the batches before the error stay
    deleted; the next run continues)."""

    status: Literal["planned", "applied", "skipped", "failed"]
    cutoff: datetime
    metrics_rows: int = 0
    phase_rows: int = 0
    detail: str | None = None


def next_run(schedule: str, after: datetime) -> datetime:
    """The first scheduled run strictly after ``after`` (UTC cron)."""
    upcoming: datetime = croniter(schedule, after.astimezone(UTC)).get_next(datetime)
    return upcoming.astimezone(UTC)


def _count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 5000".
    return int(status.rsplit(" ", 1)[-1])


async def expire_scan_metrics(
    pool: asyncpg.Pool,
    *,
    retention_days: float,
    now: datetime,
    dry_run: bool = False,
    schema: str = "scanner",
    batch: int = BATCH,
) -> ScanRetentionOutcome:
    """Delete scan metrics created before ``now - retention_days`` with their phases (or,
    with ``dry_run``, count them). Only one process of the fleet deletes at a time."""
    if not _IDENTIFIER.fullmatch(schema):
        raise ValueError(f"invalid schema name {schema!r}")
    cutoff = now - timedelta(days=retention_days)
    metrics, phases = f"{schema}.scan_metrics", f"{schema}.execution_phases"
    async with pool.acquire() as conn:
        if not await table_exists(conn, metrics):
            return ScanRetentionOutcome(
                status="skipped", cutoff=cutoff, detail=f"{metrics} does not exist"
            )
        if dry_run:
            count = await conn.fetchval(
                f"SELECT count(*) FROM {metrics} WHERE created_at < $1", cutoff
            )
            return ScanRetentionOutcome(status="planned", cutoff=cutoff, metrics_rows=int(count))
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK_KEY):
            return ScanRetentionOutcome(
                status="skipped", cutoff=cutoff, detail="another process holds the lock"
            )
        try:
            return await _delete(conn, metrics, phases, cutoff, batch)
        finally:
            # A dead connection has released the lock already.
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                await conn.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK_KEY)


async def _delete(
    conn: DbConn,
    metrics: str,
    phases: str,
    cutoff: datetime,
    batch: int,
) -> ScanRetentionOutcome:
    has_phases = await table_exists(conn, phases)
    deleted = deleted_phases = 0
    try:
        while True:
            async with conn.transaction():
                ids = [
                    row["metrics_id"]
                    for row in await conn.fetch(
                        f"SELECT metrics_id FROM {metrics} WHERE created_at < $1 "
                        "ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                        cutoff,
                        batch,
                    )
                ]
                if not ids:
                    break
                # Phases first, whatever the foreign key's ON DELETE says.
                if has_phases:
                    deleted_phases += _count(
                        await conn.execute(f"DELETE FROM {phases} WHERE metrics_id = ANY($1)", ids)
                    )
                deleted += _count(
                    await conn.execute(f"DELETE FROM {metrics} WHERE metrics_id = ANY($1)", ids)
                )
    except asyncpg.PostgresError as exc:
        log.error("scan_metrics.retention_failed", error=str(exc))  # noqa: TRY400 - one line, no traceback
        return ScanRetentionOutcome(
            status="failed",
            cutoff=cutoff,
            metrics_rows=deleted,
            phase_rows=deleted_phases,
            detail=str(exc),
        )
    if deleted:
        log.info("scan_metrics.retention_applied", deleted=deleted, phases=deleted_phases)
    return ScanRetentionOutcome(
        status="applied", cutoff=cutoff, metrics_rows=deleted, phase_rows=deleted_phases
    )


class ScanMetricsRetention:
    """The scan-metrics worker's scheduled housekeeping: a run at start, then one per tick
    of ``FLEET_RETENTION_SCHEDULE``; waits through the kernel's :class:`Stopping`."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        if not croniter.is_valid(settings.retention_schedule):
            raise ConfigError(
                f"invalid FLEET_RETENTION_SCHEDULE={settings.retention_schedule!r}: "
                "not a cron expression"
            )
        self.settings = settings
        self.pool = pool

    async def run_once(self, now: datetime | None = None) -> ScanRetentionOutcome | None:
        """One run; None when it could not reach the database (the next tick retries)."""
        try:
            return await expire_scan_metrics(
                self.pool,
                retention_days=self.settings.scan_metrics_retention_days,
                now=now or datetime.now(UTC),
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("scan_metrics.retention_failed", error=error_text(exc))
            return None

    async def run(self, stopping: Stopping) -> None:
        schedule = self.settings.retention_schedule
        while True:
            await self.run_once()
            wait = (next_run(schedule, datetime.now(UTC)) - datetime.now(UTC)).total_seconds()
            if await stopping.sleep(wait):
                return
