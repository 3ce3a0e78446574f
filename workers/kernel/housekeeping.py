"""Housekeeping beside the reading: reclaiming idle entries of other consumers, keeping
this consumer's held entries fresh, and periodic maintenance (gauges, pruning idle
consumers, trimming, inbox expiry). Each loop waits through :class:`Stopping`.
"""

from __future__ import annotations

import redis.exceptions as redis_exc

from workers import metrics, streams
from workers.errors import error_text
from workers.kernel.acker import REDIS_ERRORS
from workers.kernel.handling import Batch
from workers.kernel.held import HeldEntries
from workers.kernel.inbox import Inbox
from workers.kernel.member import Member
from workers.kernel.reading import Reader
from workers.kernel.stopping import Stopping
from workers.settings import Settings


class Housekeeping:
    def __init__(
        self,
        member: Member,
        *,
        idle_ms: int,
        held: HeldEntries,
        reader: Reader,
        inbox: Inbox,
        settings: Settings,
    ) -> None:
        self._m = member
        self._idle_ms = idle_ms
        self._held = held
        self._reader = reader
        self._inbox = inbox
        self._settings = settings

    async def reclaim(self, stopping: Stopping) -> None:
        """``XAUTOCLAIM stream group consumer idle cursor COUNT n`` every interval: entries
        idle past the group's idle time (their consumer died or gave them up) come here."""
        cursor: bytes | str = "0-0"
        interval = min(self._settings.reclaim_interval_seconds, self._idle_ms / 1000)
        while not await stopping.sleep(interval):
            started = self._reader.clock()
            try:
                reply = await self._m.redis.xautoclaim(
                    self._m.stream,
                    self._m.group,
                    self._m.name,
                    min_idle_time=self._idle_ms,
                    start_id=cursor,
                    count=self._settings.batch_size,
                )
                cursor = reply[0]
                claimed = [e for e in reply[1] if e[0] not in self._held]
                if not claimed:
                    continue
                counts = await self._reader.delivery_counts([e[0] for e in claimed])
            except REDIS_ERRORS as exc:
                self._m.log.warning("valkey.unavailable", error=error_text(exc), during="reclaim")
                continue
            metrics.RECLAIMED.labels(self._m.stream, self._m.group).inc(len(claimed))
            self._m.log.info("entries.reclaimed", count=len(claimed))
            await self._reader.enqueue(Batch(claimed, counts, "reclaimed"), started, "XAUTOCLAIM")

    async def heartbeat(self, stopping: Stopping) -> None:
        """Keep held entries from looking idle to other consumers; runs until cancelled,
        through the shutdown drain (``stopping`` here is the consumer's hard stop)."""
        interval = max(self._idle_ms / 3000, 0.05)
        min_idle_ms = int(interval * 500)
        while not await stopping.sleep(interval):
            if not len(self._held):
                continue
            try:
                await self._held.refresh(
                    self._m.redis, self._m.stream, self._m.group, self._m.name, min_idle_ms
                )
            except REDIS_ERRORS as exc:
                self._m.log.warning("valkey.unavailable", error=error_text(exc), during="heartbeat")

    async def maintain(self, stopping: Stopping) -> None:
        settings = self._settings
        while True:
            try:
                await streams.refresh_gauges(self._m.redis, self._m.stream)
                await streams.prune_consumers(
                    self._m.redis,
                    self._m.stream,
                    self._m.group,
                    idle_ms=int(settings.consumer_prune_idle_seconds * 1000),
                    claim_to=self._m.name,
                )
                await streams.trim_stream(
                    self._m.redis,
                    self._m.stream,
                    retention_days=settings.stream_retention_days,
                    max_len=settings.stream_max_len,
                )
                await self.expire_inbox()
            except REDIS_ERRORS as exc:
                self._m.log.warning(
                    "valkey.unavailable", error=error_text(exc), during="maintenance"
                )
            except redis_exc.ResponseError as exc:
                self._m.log.warning("maintenance.failed", error=error_text(exc))
            except Exception as exc:  # noqa: BLE001 - housekeeping must never stop consuming
                self._m.log.warning("maintenance.failed", error=error_text(exc))
            if await stopping.sleep(settings.maintenance_interval_seconds):
                return

    async def expire_inbox(self) -> None:
        """Forget this group's events handled longer ago than the inbox retention, a
        bounded batch at a time. The retention is far beyond the stream retention, so no
        redelivery of those events can still arrive."""
        deleted = await self._inbox.expire(self._m.group, self._settings.inbox_retention_days)
        if deleted:
            self._m.log.info("inbox.expired", rows=deleted)
