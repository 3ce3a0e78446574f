"""What every snapshot operation shares: its errors, the clients and policies it runs
with, and the reads the others build on (docs/snapshots.md).

The operations themselves live in one module per capability (``reads``, ``changes``,
``housekeeping``, ``audit_log``) as mixins over :class:`SnapshotsBase`; ``service``
assembles them into :class:`~workers.snapshot_retention.service.Snapshots`.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg
import structlog

from workers import s3 as s3io
from workers.errors import ConfigError, FleetError
from workers.metrics import SNAPSHOT_AGE, SNAPSHOT_FRESHNESS
from workers.settings import Settings
from workers.snapshot_retention import store
from workers.snapshot_retention.freshness import (
    FreshnessPolicy,
    FreshnessReport,
    FreshnessState,
    FreshnessThresholds,
    tool_report,
)
from workers.snapshot_retention.ids import validate_tool
from workers.snapshot_retention.payload import verify_payload
from workers.snapshot_retention.records import Snapshot, SnapshotState
from workers.snapshot_retention.retention import RetentionPolicy

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client

log = structlog.get_logger("workers.snapshot_retention")


def utcnow() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------------------ errors


class SnapshotError(FleetError):
    """A snapshot operation that failed on purpose, with a one-line reason."""


class ReadDenied(SnapshotError):
    """Reading the tool's data is refused in its freshness state (or the data expired)."""


class SnapshotNotFound(SnapshotError):
    pass


# ------------------------------------------------------------------------------ policies


def freshness_policy(settings: Settings) -> FreshnessPolicy:
    """The fleet-wide thresholds from settings (applied to every tool without its own)."""
    return FreshnessPolicy(
        default=FreshnessThresholds(
            max_age=timedelta(days=settings.snapshot_max_age_days),
            stale_warning=timedelta(days=settings.snapshot_stale_days),
            critical=timedelta(days=settings.snapshot_critical_days),
        )
    )


def retention_policy(settings: Settings) -> RetentionPolicy:
    """The retention rules from settings; a bad value is a one-line ConfigError."""
    try:
        return RetentionPolicy(schedule=settings.retention_schedule)
    except ValueError as exc:
        raise ConfigError(f"invalid FLEET_RETENTION_SCHEDULE: {exc}") from None


class SnapshotsBase:
    """One pool and one S3 client (opened by the caller), the settings and the policies."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        s3: S3Client | None,
        *,
        freshness: FreshnessPolicy | None = None,
        retention: RetentionPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self._s3 = s3
        self.bucket = settings.s3_bucket
        self.freshness = freshness or freshness_policy(settings)
        self.retention = retention or retention_policy(settings)

    @property
    def s3(self) -> S3Client:
        if self._s3 is None:
            raise ConfigError("this operation needs S3, but no S3 client was opened")
        return self._s3

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
                tool=validate_tool(tool),
                states=[SnapshotState.ACTIVE, SnapshotState.EXPIRED],
            )
        return tool_report(tool, snapshots, self.freshness, at)

    async def _verified_payload(self, snapshot: Snapshot) -> bytes:
        data = await s3io.get_object(self.s3, self.bucket, snapshot.object_key)
        verify_payload(snapshot, data)
        return data

    async def _refresh_tool_gauges(self, tool: str) -> None:
        try:
            set_gauges(await self.freshness_report(tool))
        except (asyncpg.PostgresError, OSError) as exc:
            # The operation itself succeeded; the next periodic refresh catches up.
            log.warning("snapshot.gauges_failed", tool=tool, error=str(exc))


def set_gauges(report: FreshnessReport) -> None:
    if report.age is None:
        with contextlib.suppress(KeyError):
            SNAPSHOT_AGE.remove(report.tool)
    else:
        SNAPSHOT_AGE.labels(tool=report.tool).set(report.age.total_seconds())
    for state in FreshnessState:
        SNAPSHOT_FRESHNESS.labels(tool=report.tool, state=str(state)).set(
            1 if state is report.state else 0
        )
