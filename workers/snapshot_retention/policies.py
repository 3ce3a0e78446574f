"""Per-tool freshness thresholds, stored in ``ingest.freshness_thresholds``
(docs/snapshots.md, "Freshness"). The SLA, reads, rollbacks, the gauges the alert rules
compare against and the HTTP API all read them through ``SnapshotsBase.policy``."""

from __future__ import annotations

from datetime import datetime

import msgspec

from workers.snapshot_retention import store
from workers.snapshot_retention.base import SnapshotError, SnapshotsBase, log, utcnow
from workers.snapshot_retention.freshness import FreshnessThresholds, thresholds_from_durations
from workers.snapshot_retention.ids import validate_tool


class ThresholdsRefused(SnapshotError):
    """Thresholds that do not parse or are out of order; nothing was stored."""


class ToolThresholds(msgspec.Struct, frozen=True, kw_only=True):
    """The thresholds in force for one tool and where they come from."""

    tool: str
    thresholds: FreshnessThresholds
    source: str  # "tool" (its own row) or "default" (FLEET_SNAPSHOT_*_DAYS)


class Policies(SnapshotsBase):
    async def thresholds(self) -> list[ToolThresholds]:
        """Every tool with thresholds of its own, then the fleet default as ``*``."""
        async with self.pool.acquire() as conn:
            policy = await self.policy(conn)
        own = [
            ToolThresholds(tool=tool, thresholds=limits, source="tool")
            for tool, limits in sorted(policy.tools.items())
        ]
        return [*own, ToolThresholds(tool="*", thresholds=policy.default, source="default")]

    async def set_thresholds(
        self,
        tool: str,
        *,
        max_age: str | None = None,
        stale: str | None = None,
        critical: str | None = None,
        actor: str,
        now: datetime | None = None,
    ) -> FreshnessThresholds:
        """Store ``tool``'s thresholds from ISO 8601 durations; an omitted one keeps the
        tool's current value (its own, else the default). ValueError names a bad value."""
        try:
            validate_tool(tool)
        except ValueError as exc:
            raise ThresholdsRefused(str(exc)) from None
        async with self.pool.acquire() as conn, conn.transaction():
            current = (await self.policy(conn)).for_tool(tool)
            try:
                chosen = thresholds_from_durations(
                    current, max_age=max_age, stale=stale, critical=critical
                )
            except ValueError as exc:
                raise ThresholdsRefused(f"thresholds of {tool} refused: {exc}") from None
            await store.set_thresholds(conn, tool, chosen, actor=actor, at=now or utcnow())
        log.info("snapshot.thresholds_set", tool=tool, actor=actor)
        await self._refresh_tool_gauges(tool)
        return chosen

    async def unset_thresholds(self, tool: str, *, actor: str) -> bool:
        """Return ``tool`` to the fleet defaults; False when it had no thresholds of its own."""
        validate_tool(tool)
        async with self.pool.acquire() as conn:
            removed = await store.unset_thresholds(conn, tool)
        if removed:
            log.info("snapshot.thresholds_unset", tool=tool, actor=actor)
            await self._refresh_tool_gauges(tool)
        return removed
