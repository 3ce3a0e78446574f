"""Held entries: the single owner of the lifecycle of the entries a consumer holds.

An entry is held from the moment it is read (or reclaimed) until it is acknowledged,
dead-lettered or released. While held, its claim is refreshed (``XCLAIM … JUSTID``),
so a slow batch is never taken over by another consumer. A released entry is no longer
refreshed: once idle past the group's idle time, ``XAUTOCLAIM`` hands it out again with
a higher delivery count.

Acknowledgement back-pressure lives here too: at most ``ack_slots`` batches' ids wait
for the acker, so the entries held stay bounded even when ``XACK`` falls behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

_CLAIM_CHUNK = 1000


class HeldEntries:
    def __init__(self, ack_slots: int) -> None:
        self._ids: dict[bytes, None] = {}
        self._ack_room = asyncio.Semaphore(ack_slots)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._ids

    def take(self, ids: Iterable[bytes]) -> None:
        """Entries just read or reclaimed: refreshed from now on."""
        for entry_id in ids:
            self._ids[entry_id] = None

    def release(self, ids: Iterable[bytes]) -> None:
        """Entries done with (acknowledged, dead-lettered) or given up (redelivered later)."""
        pop = self._ids.pop
        for entry_id in ids:
            pop(entry_id, None)

    @property
    def ack_backed_up(self) -> bool:
        """Every acknowledgement slot taken: processors wait before handing over more."""
        return self._ack_room.locked()

    async def wait_for_ack_room(self) -> None:
        await self._ack_room.acquire()

    def ack_room_freed(self, slots: int) -> None:
        for _ in range(slots):
            self._ack_room.release()

    async def refresh(
        self, redis: Any, stream: str, group: str, consumer: str, min_idle_ms: int
    ) -> None:
        """``XCLAIM stream group consumer min_idle id… JUSTID``: reset the idle time of
        every held entry idle for at least ``min_idle_ms`` (cheap: no fields returned)."""
        held: list[bytes] = list(self._ids)
        for start in range(0, len(held), _CLAIM_CHUNK):
            await redis.xclaim(
                stream,
                group,
                consumer,
                min_idle_time=min_idle_ms,
                message_ids=held[start : start + _CLAIM_CHUNK],
                justid=True,
            )
