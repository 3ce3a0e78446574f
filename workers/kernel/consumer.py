"""A consumer: one worker as one consumer of its group, from start to stop.

This class holds only the order of things. Start: group and consumer created
(``XGROUP CREATE … MKSTREAM``, ``XGROUP CREATECONSUMER``), then readers, processors,
the acker, the heartbeat and the housekeeping loops. Stop: reading ends, what was read
is handled and acknowledged within the grace period (``FLEET_SHUTDOWN_GRACE_SECONDS``),
the heartbeat keeps those entries claimed until then, and whatever is still running
after it is cancelled (a hard stop leaves entries pending, never half-applied).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import structlog

from workers import streams, tracing
from workers.errors import error_text
from workers.kernel.acker import REDIS_ERRORS, Acker
from workers.kernel.handling import Batch, BatchHandler
from workers.kernel.held import HeldEntries
from workers.kernel.housekeeping import Housekeeping
from workers.kernel.inbox import Inbox
from workers.kernel.member import Member
from workers.kernel.reading import Reader
from workers.kernel.settle import Settler
from workers.kernel.stopping import Stopping
from workers.kernel.worker import Worker
from workers.partitions import consumed_keys

log = structlog.get_logger("workers.kernel")

# How long a stopping consumer waits for its helper tasks (heartbeat, housekeeping,
# the worker's background task) once their work is over.
_HELPER_STOP_SECONDS = 5.0


class StreamConsumer:
    """Runs one worker as one consumer of its group until :meth:`stop` is called."""

    def __init__(
        self,
        worker: Worker[Any, Any],
        consumer: str,
        inbox: Inbox,
        *,
        key: str | None = None,
        background: bool = True,
    ) -> None:
        """``key``: the stream key this consumer reads, one partition of the worker's
        stream (:func:`partition_consumers`); default the stream's own key. ``background``:
        whether it runs the worker's background task (once per worker, not per partition)."""
        settings = worker.resources.settings
        self.worker = worker
        self.settings = settings
        # redis-py types replies as unions of every RESP shape; replies are read as Any
        # and shaped at this edge.
        self.redis: Any = worker.resources.redis
        self.stream = key or worker.stream
        self._background = background
        self.group = worker.group
        self.consumer = consumer
        self.idle_ms = int(worker.reclaim_idle_seconds * 1000)
        self.stopping = Stopping()
        self.hard_stop = Stopping()
        self.ready = asyncio.Event()
        self._log = log.bind(stream=self.stream, group=self.group, consumer=consumer)
        member = Member(self.redis, self.stream, self.group, consumer, self._log)
        concurrency = settings.concurrency
        self.queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=settings.prefetch_batches)
        self.held = HeldEntries(ack_slots=concurrency)
        self.acker = Acker(member, self.held, self.hard_stop)
        settler = Settler(
            member, self.held, self.acker, self.hard_stop, debug=settings.log_level == "debug"
        )
        # None with tracing off: the kernel's only test of it, once per read and per batch.
        spans = tracing.consumer_spans(worker.stream, self.group, consumer, key=self.stream)
        self.handler = BatchHandler(worker, inbox, settler, self.hard_stop, self._log, spans)
        self.reader = Reader(
            member, self.held, self.queue, self.stopping,
            batch_size=settings.batch_size, block_ms=settings.block_ms,
            readers=concurrency, processors=concurrency, spans=spans,
        )  # fmt: skip
        self.housekeeping = Housekeeping(
            member, idle_ms=self.idle_ms, held=self.held, reader=self.reader, inbox=inbox,
            settings=settings,
        )  # fmt: skip

    def stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        """Create the group if needed, then consume until stopped."""
        backoff = 0.1
        while True:
            try:
                await streams.ensure_group(self.redis, self.stream, self.group)
                await self.redis.xgroup_createconsumer(self.stream, self.group, self.consumer)
                break
            except REDIS_ERRORS as exc:
                # A connection lost while starting: the same wait as any other read.
                self._log.warning("valkey.unavailable", error=error_text(exc), during="start")
                if await self.stopping.sleep(backoff):
                    return
                backoff = min(backoff * 2, 5.0)
        self._log.info("consumer.started", idle_ms=self.idle_ms)
        concurrency = self.settings.concurrency
        readers = [
            asyncio.create_task(self.reader.run(i), name=f"reader:{self.stream}:{i}")
            for i in range(concurrency)
        ]
        processors = [
            asyncio.create_task(self._process(), name=f"processor:{self.stream}:{i}")
            for i in range(concurrency)
        ]
        acker = self.acker.start()
        # Keeps held entries fresh until the drain below has finished with them.
        heartbeat = asyncio.create_task(
            self.housekeeping.heartbeat(self.hard_stop), name="heartbeat"
        )
        helpers = [
            asyncio.create_task(self.housekeeping.reclaim(self.stopping), name="reclaimer"),
            asyncio.create_task(self.housekeeping.maintain(self.stopping), name="maintenance"),
        ]
        if self._background:
            helpers.append(
                asyncio.create_task(self.worker.background(self.stopping), name="worker-background")
            )
        self.ready.set()
        try:
            await self.stopping.wait()
        finally:
            await self._shut_down(readers, processors, acker, heartbeat, helpers)

    async def _shut_down(
        self,
        readers: list[asyncio.Task[None]],
        processors: list[asyncio.Task[None]],
        acker: asyncio.Task[None],
        heartbeat: asyncio.Task[None],
        helpers: list[asyncio.Task[None]],
    ) -> None:
        self.stopping.set()
        grace = self.settings.shutdown_grace_seconds
        deadline = time.monotonic() + grace
        done, pending = await asyncio.wait({*readers, *processors}, timeout=grace)
        if pending:
            self.hard_stop.set()
            await cancel_and_wait(list(pending), seconds=_HELPER_STOP_SECONDS)
        self.acker.close()
        ack_done, ack_pending = await asyncio.wait(
            {acker}, timeout=max(0.5, deadline - time.monotonic())
        )
        done |= ack_done
        hard_stop = bool(pending)
        self.hard_stop.set()  # the drain is over: the heartbeat and any retry end now
        # Within what is left of the grace period (half a second at least).
        left = min(_HELPER_STOP_SECONDS, max(0.5, deadline - time.monotonic()))
        stuck = await cancel_and_wait([heartbeat, *helpers, *ack_pending], seconds=left)
        if stuck:
            self._log.error(
                "consumer.tasks_not_stopping", tasks=sorted(t.get_name() for t in stuck)
            )
        for task in done:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                self._log.error("consumer.task_failed", error=error_text(error))
        self._log.info("consumer.stopped", unfinished=len(self.held), hard_stop=hard_stop)

    async def _process(self) -> None:
        while True:
            batch = await self.queue.get()
            if batch is None:
                return
            try:
                await self.handler.handle(batch)
            except Exception as exc:  # noqa: BLE001 - a bug here must not stop the consumer
                # Whatever the batch did not finish stays pending; releasing it lets the
                # reclaimer hand it out again, and max_deliveries ends a loop.
                self._log.error("batch.crashed", error=error_text(exc), size=len(batch.entries))
                self.held.release(entry_id for entry_id, _ in batch.entries)


def partition_consumers(
    worker: Worker[Any, Any], consumer: str, inbox: Inbox
) -> list[StreamConsumer]:
    """One consumer per key of the worker's stream (``FLEET_STREAM_PARTITIONS``, and the
    draining keys of ``FLEET_STREAM_PARTITIONS_PREVIOUS``, see docs/scaling.md), all
    under the same consumer name; the first runs the worker's background task."""
    settings = worker.resources.settings
    keys = consumed_keys(
        worker.stream, settings.stream_partitions, settings.stream_partitions_previous
    )
    return [
        StreamConsumer(worker, consumer, inbox, key=key, background=index == 0)
        for index, key in enumerate(keys)
    ]


async def cancel_and_wait(tasks: Sequence[asyncio.Task[Any]], *, seconds: float) -> set[Any]:
    """Cancel ``tasks`` and wait until they end, cancelling again any task that is still
    running every half second: a cancellation can be swallowed (``asyncio.timeout`` in
    Python 3.11 does when it races its own deadline), and one swallowed cancellation must
    not hold up the shutdown for ever. Returns the tasks still running after ``seconds``."""
    pending = {task for task in tasks if not task.done()}
    deadline = time.monotonic() + seconds
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - time.monotonic()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(0.5, left))
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved, so asyncio does not warn it was never looked at
    return pending
