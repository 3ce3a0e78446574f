"""``fleet run snapshot-retention``: retention on the cron schedule (once across the fleet),
freshness gauges every minute, and the seed's HTTP API on the ops endpoint
(docs/snapshots.md). No stream in or out."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Final

import asyncpg
from aiohttp import web

from workers.errors import ConfigError, FleetError
from workers.kernel.stopping import Stopping
from workers.kernel.worker import Resources
from workers.snapshot_retention.api import routes
from workers.snapshot_retention.base import log, utcnow
from workers.snapshot_retention.retention import next_retention_run
from workers.snapshot_retention.service import Snapshots

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client

GAUGE_INTERVAL_SECONDS: Final = 60.0


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
        return routes(self.snapshots, self.settings)

    async def run(self, stopping: Stopping) -> None:
        policy = self.snapshots.retention
        log.info("snapshot_retention.started", schedule=policy.schedule)
        await self._refresh()
        next_run = next_retention_run(policy, utcnow())
        while True:
            wait = min((next_run - utcnow()).total_seconds(), GAUGE_INTERVAL_SECONDS)
            if await stopping.sleep(wait):
                break
            now = utcnow()
            if now >= next_run:
                await self._retention(now)
                next_run = next_retention_run(policy, now)
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
            log.error("snapshot.retention_failed", error=str(exc))
            return
        log.info("snapshot.retention_run", status=report.status, failed=report.failed)
