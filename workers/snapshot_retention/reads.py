"""Reads: the freshness SLA, the active snapshot's verified payload (refused when critical
without an override, and always when expired), holds and the freshness gauges
(docs/snapshots.md)."""

from __future__ import annotations

from datetime import datetime

import msgspec

from workers.snapshot_retention import store
from workers.snapshot_retention.api_shapes import SlaListResponse, SlaResponse, sla_report
from workers.snapshot_retention.base import (
    ReadDenied,
    SnapshotError,
    SnapshotNotFound,
    SnapshotsBase,
    log,
    set_gauges,
    utcnow,
)
from workers.snapshot_retention.freshness import (
    FreshnessReport,
    FreshnessState,
    ReadRefused,
    require_readable,
    tool_report,
)
from workers.snapshot_retention.ids import validate_tool
from workers.snapshot_retention.payload import PayloadMismatch
from workers.snapshot_retention.records import Snapshot
from workers.snapshot_retention.retention import RetentionHold


class ActiveRead(msgspec.Struct, frozen=True, kw_only=True):
    """The active snapshot's verified payload and the freshness it was read under."""

    snapshot: Snapshot
    data: bytes
    freshness: FreshnessReport


class Reads(SnapshotsBase):
    async def sla(
        self, now: datetime | None = None, *, tool: str | None = None
    ) -> SlaResponse | SlaListResponse:
        """The seed's SLA body: one tool's entry, or every tool that has snapshots."""
        at = now or utcnow()
        if tool is not None:
            return sla_report(
                await self.list_snapshots(tool=validate_tool(tool)),
                self.freshness,
                at,
                tool=tool,
            )
        return sla_report(await self.list_snapshots(), self.freshness, at)

    async def read_active(
        self, tool: str, *, override: bool = False, actor: str, now: datetime | None = None
    ) -> ActiveRead:
        """The active snapshot and its verified payload. Refused (:class:`ReadDenied`) for a
        critical tool without ``override`` and always for a tool without readable data."""
        report = await self.freshness_report(tool, now)
        try:
            require_readable(report, override=override)
        except ReadRefused as exc:
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
        except PayloadMismatch as exc:
            log.error("snapshot.payload_corrupt", snapshot_id=snapshot.snapshot_id)
            raise SnapshotError(
                f"active snapshot {snapshot.snapshot_id} failed verification: {exc}; "
                "roll back to a good snapshot"
            ) from None
        if report.state is FreshnessState.CRITICAL:
            log.warning(
                "snapshot.read_override", tool=tool, snapshot_id=snapshot.snapshot_id, actor=actor
            )
        return ActiveRead(snapshot=snapshot, data=data, freshness=report)

    async def holds(self) -> list[RetentionHold]:
        async with self.pool.acquire() as conn:
            return await store.load_holds(conn)

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
            set_gauges(tool_report(tool, of_tool, self.freshness, at))
