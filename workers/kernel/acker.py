"""The acker: ``XACK`` of committed entries, off the processors' path.

Acknowledgements leave through their own task so the next batch's database work
overlaps the ``XACK`` round trip; whatever is waiting when it sends is coalesced into
one call. Giving up on an ``XACK`` loses nothing: the effects are committed, and an
entry left pending is redelivered and recognised as a duplicate.
"""

from __future__ import annotations

import asyncio

import redis.exceptions as redis_exc

from workers.cluster import TRANSIENT
from workers.errors import error_text
from workers.kernel.held import HeldEntries
from workers.kernel.member import Member
from workers.kernel.stopping import Stopping

# A lost connection, or (on a cluster) a slot without a reachable primary for a moment.
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis_exc.ConnectionError,
    redis_exc.TimeoutError,
    OSError,
    *TRANSIENT,
)
_ATTEMPTS = 5


class Acker:
    def __init__(self, member: Member, held: HeldEntries, hard_stop: Stopping) -> None:
        self._m = member
        self._held = held
        self._hard_stop = hard_stop
        self._queue: asyncio.Queue[list[bytes] | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self._run(), name=f"acker:{self._m.stream}")
        return self.task

    async def submit(self, ids: list[bytes]) -> None:
        """Hand over a batch's ids, first waiting for a free slot (back-pressure)."""
        if self.task is not None and not self.task.done():
            await self._held.wait_for_ack_room()
            self._queue.put_nowait(ids)
        else:
            # No acker running (stopped, or a unit test driving one batch): acknowledge now.
            await self._acknowledge(ids)
            self._held.release(ids)

    def close(self) -> None:
        """No more submissions: the task acknowledges what is queued, then ends."""
        self._queue.put_nowait(None)

    async def _run(self) -> None:
        finished = False
        while not finished:
            first = await self._queue.get()
            if first is None:
                return
            ids = list(first)
            taken = 1
            while not self._queue.empty():
                more = self._queue.get_nowait()
                if more is None:
                    finished = True
                    break
                ids.extend(more)
                taken += 1
            try:
                await self._acknowledge(ids)
            finally:
                self._held.release(ids)
                self._held.ack_room_freed(taken)

    async def _acknowledge(self, ids: list[bytes]) -> None:
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                await self._m.redis.xack(self._m.stream, self._m.group, *ids)
                return
            except REDIS_ERRORS as exc:
                self._m.log.warning("ack.failed", error=error_text(exc), attempt=attempt)
                if await self._hard_stop.sleep(0.2 * attempt):
                    return
            except redis_exc.ResponseError as exc:
                # Refused by the server (e.g. an ACL change): the entries stay pending.
                self._m.log.error("ack.refused", error=error_text(exc))  # noqa: TRY400 - one line, no traceback
                return
