"""The one "sleep unless stopping" idiom of the fleet.

Every loop that waits (reads that back off, housekeeping intervals, retries, a
worker's background task, scheduled jobs) waits through a :class:`Stopping`, so a
stop request ends every wait at once instead of after the longest sleep.
"""

from __future__ import annotations

import asyncio


class Stopping:
    """A stop request shared by a consumer's tasks."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    async def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless a stop is requested meanwhile; True when stopping."""
        if self._event.is_set():
            return True
        try:
            await asyncio.wait_for(self._event.wait(), timeout=max(seconds, 0.0))
        except TimeoutError:
            return False
        return True
