"""Reading: this consumer's own pending list first (id ``0``), then new entries (``>``).

A read that fails on the connection may have been served with its reply lost: those
entries sit in this consumer's pending list, where no other consumer takes them before
the idle time. So after such a failure the reader goes over its own pending list again
(skipping the entries it still holds) before reading new entries (docs/guarantees.md).

Several reads are in flight at once (``FLEET_CONCURRENCY``) so the server is busy
while the processors decode; read batches wait in a bounded queue
(``FLEET_PREFETCH_BATCHES``), so memory does not grow with the backlog.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis.exceptions as redis_exc

from workers import streams
from workers.cluster import reads_client
from workers.errors import error_text
from workers.kernel.acker import REDIS_ERRORS
from workers.kernel.handling import Batch
from workers.kernel.held import HeldEntries
from workers.kernel.member import Member
from workers.kernel.stopping import Stopping
from workers.kernel.triage import shape_reply

if TYPE_CHECKING:
    from workers.tracing.spans import ConsumerSpans

_MAX_BACKOFF = 5.0


class Reader:
    def __init__(
        self,
        member: Member,
        held: HeldEntries,
        queue: asyncio.Queue[Batch | None],
        stopping: Stopping,
        *,
        batch_size: int,
        block_ms: int,
        readers: int,
        processors: int,
        spans: ConsumerSpans | None = None,
    ) -> None:
        self._m = member
        self._spans = spans
        # Reads go through a client (of the same pool, or the cluster client) whose
        # XREADGROUP replies are shaped by shape_reply (no Python call per entry).
        self._reads: Any = reads_client(member.redis, shape_reply)
        self._held = held
        self._queue = queue
        self._stopping = stopping
        self._batch_size = batch_size
        self._block_ms = block_ms
        self._readers_left = readers
        self._processors = processors
        self._drained = asyncio.Event()

    async def run(self, index: int) -> None:
        """Reader 0 drains this consumer's own pending list first; then every reader reads
        new entries. The last reader to end tells every processor to finish."""
        try:
            await self._read(index)
        finally:
            # Whatever ended this reader, the others and the processors must not wait on it.
            self._drained.set()
            self._readers_left -= 1
            if self._readers_left == 0:
                for _ in range(self._processors):
                    await self._queue.put(None)

    async def enqueue(self, batch: Batch, started_ns: int = 0, command: str = "") -> None:
        """Hold ``batch``'s entries and queue it; with tracing on, its read (``command``,
        started at ``started_ns``) is recorded as a receive span first."""
        if self._spans is not None and command:
            batch.trace = self._spans.received(batch.entries, started_ns, command)
        self._held.take(entry_id for entry_id, _ in batch.entries)
        await self._queue.put(batch)

    def clock(self) -> int:
        """The start of a read, for its receive span: 0 with tracing off (no clock read)."""
        return time.time_ns() if self._spans is not None else 0

    async def delivery_counts(self, ids: Sequence[bytes]) -> dict[bytes, int]:
        """``XPENDING stream group first last count consumer``: how often each was delivered."""
        if not ids:
            return {}
        rows = await self._m.redis.xpending_range(
            self._m.stream,
            self._m.group,
            min=ids[0],
            max=ids[-1],
            count=len(ids) + len(self._held) + 1,
            consumername=self._m.name,
        )
        return {row["message_id"]: int(row["times_delivered"]) for row in rows}

    async def _read(self, index: int) -> None:
        backoff = 0.1
        own_left = index == 0
        if not own_left:
            await self._drained.wait()
        last_own = b"0"
        while not self._stopping.is_set():
            started = self.clock()
            try:
                if own_left:
                    entries = await self._reads.xreadgroup(
                        self._m.group, self._m.name, {self._m.stream: last_own},
                        count=self._batch_size,
                    )  # fmt: skip
                    if not entries:
                        own_left = False
                        self._drained.set()
                        continue
                    last_own = entries[-1][0]
                    counts = await self.delivery_counts([e[0] for e in entries])
                    # Held entries (re-read after a lost connection) are already in hand.
                    entries = [e for e in entries if e[0] not in self._held]
                    if entries:
                        batch = Batch(entries, counts, "own-pending")
                        await self.enqueue(batch, started, "XREADGROUP")
                    continue
                entries = await self._reads.xreadgroup(
                    self._m.group, self._m.name, {self._m.stream: ">"},
                    count=self._batch_size, block=self._block_ms,
                )  # fmt: skip
                backoff = 0.1
            except REDIS_ERRORS as exc:
                # Before ResponseError: a cluster slot without its primary is both.
                self._m.log.warning("valkey.unavailable", error=error_text(exc), retry_in=backoff)
                if await self._stopping.sleep(backoff):
                    break
                backoff = min(backoff * 2, _MAX_BACKOFF)
                # Replies lost with the connection: go over this consumer's pending list.
                own_left, last_own = True, b"0"
                continue
            except redis_exc.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    # The stream or group was deleted under us (e.g. by an operator): recreate.
                    await streams.ensure_group(self._m.redis, self._m.stream, self._m.group)
                    continue
                # Refused (e.g. an ACL change): keep trying, loudly, rather than stop reading
                # for good while the process still looks healthy.
                self._m.log.error(  # noqa: TRY400 - one line, no traceback
                    "stream.read_refused", error=error_text(exc), retry_in=backoff
                )
                if await self._stopping.sleep(backoff):
                    break
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            if entries:
                await self.enqueue(Batch(entries), started, "XREADGROUP")
