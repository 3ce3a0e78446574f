"""The shared consumer-group runtime: one :class:`StreamConsumer` per (worker, process).

Stream in: the worker's stream, read as consumer ``<hostname>-<pid>`` of its group.
Guarantees:

- At-least-once delivery, effectively-once effects: a batch's effects and its
  inbox rows ``(group, eventId)`` commit in one PostgreSQL transaction, and
  only then is the batch acknowledged (``XACK``). A redelivered event finds its
  inbox row, is acknowledged and counted as ``duplicate``.
- Start-up drains this consumer's own pending list (id ``0``) before reading
  new entries (``>``).
- Crash recovery: entries idle longer than the group's idle time are taken
  over with ``XAUTOCLAIM``; entries this consumer holds are kept fresh with
  ``XCLAIM … JUSTID`` so a slow handler never loses them to another consumer.
- Transient errors retry in process with exponential backoff and jitter; a
  batch that fails otherwise is retried entry by entry, so one bad entry never
  blocks the others. Decode failures and :class:`~workers.errors.Permanent`
  errors dead-letter at once; other failures dead-letter after
  ``max_deliveries``.
- Reading overlaps handling: a reader task fills a bounded queue
  (``prefetch_batches``), so memory does not grow with the backlog.
- ``stop()`` stops reading, finishes what was read within the grace period,
  acknowledges it, and returns.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import redis.asyncio as aioredis
import redis.exceptions as redis_exc
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from contracts import Event
from contracts.registry import event_class
from contracts.wire import DecodeError, decode_data
from workers import metrics, streams
from workers.base import Worker
from workers.db import is_transient
from workers.errors import Permanent

log = structlog.get_logger("workers.runtime")

_INBOX_SQL = """
INSERT INTO fleet.inbox (event_id, group_name)
SELECT e, $1 FROM unnest($2::uuid[]) AS e
ORDER BY e  -- one lock order for every batch: concurrent batches cannot deadlock
ON CONFLICT DO NOTHING
RETURNING event_id
"""

_EXPIRE_INBOX_SQL = """
DELETE FROM fleet.inbox WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM fleet.inbox
    WHERE group_name = $1 AND processed_at < now() - make_interval(days => $2::int)
    LIMIT 5000
))
"""

# Young-generation collections every GC_YOUNG_THRESHOLD tracked allocations instead of
# CPython's 700: a batch of 500 events allocates thousands of short-lived objects (structs,
# UUIDs, reply lists) that reference counting frees, and collecting every 700 of them
# spent more time than decoding them.
GC_YOUNG_THRESHOLD = 50_000

_REDIS_ERRORS = (redis_exc.ConnectionError, redis_exc.TimeoutError, OSError)
_MAX_ERROR_TEXT = 500
# How long a stopping consumer waits for its helper tasks (heartbeat, reclaimer,
# maintenance, the worker's background task) once their work is over.
_HELPER_STOP_SECONDS = 5.0


@dataclass(slots=True)
class Batch:
    entries: list[tuple[bytes, dict[bytes, bytes]]]
    # Delivery counts for entries read from a pending list; ``None``: first delivery.
    counts: dict[bytes, int] | None = None
    source: str = "new"


@dataclass(frozen=True, slots=True)
class _Known:
    cls: type[Event]
    label: str
    decoder: msgspec.json.Decoder[Any]
    versions: frozenset[int]


def tune_gc() -> None:
    """Set this process up for consuming: called once, after start-up (imports, pools,
    workers) and before the first read.

    Everything alive at that point lives as long as the process, so it is moved out of
    the collector's view (``gc.freeze``) instead of being traversed by every full
    collection, and young collections run far less often (``GC_YOUNG_THRESHOLD``).
    Reference cycles are still collected; memory stays bounded by the batch limits."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _stream_entries(response: Any, **options: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """XREADGROUP's reply for the one stream read, as (entry id, fields) pairs: what
    redis-py builds, without a Python call per entry. A RESP3 reply is a map by stream, a
    RESP2 one a list of [stream, entries]; an entry deleted while pending has no fields."""
    if not response:
        return []
    entries = next(iter(response.values())) if isinstance(response, dict) else response[0][1]
    pairs = []
    for i, kv in entries:
        if kv and len(kv) == 4:  # two fields, as our producers write (type, data)
            pairs.append((i, {kv[0]: kv[1], kv[2]: kv[3]}))
        else:
            pairs.append((i, dict(zip(kv[::2], kv[1::2], strict=True)) if kv else {}))
    return pairs


def _decode_failure(cls: type[Event], data: bytes) -> tuple[str, str]:
    """The slow path: decode again to get the reason code and message."""
    try:
        decode_data(cls, data)
    except DecodeError as exc:
        return exc.reason, str(exc)
    return "invalid_event", "could not be decoded"


@dataclass(slots=True)
class _Item:
    entry_id: bytes
    fields: dict[bytes, bytes]
    type_label: str
    event: Event
    deliveries: int


@dataclass(slots=True)
class _Outcome:
    ack: list[bytes] = field(default_factory=list)
    dead: list[tuple[bytes, dict[bytes, bytes], str, str, int]] = field(default_factory=list)
    counts: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)


def _text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text[:_MAX_ERROR_TEXT]


class StreamConsumer:
    """Runs one worker as one consumer of its group until :meth:`stop` is called."""

    def __init__(self, worker: Worker, consumer: str) -> None:
        self.worker = worker
        self.settings = worker.resources.settings
        # redis-py types replies as unions of every RESP shape; replies are read as Any
        # and shaped at this edge.
        self.redis: Any = worker.resources.redis
        self._reads: Any = None  # the reading client, opened by run()
        self.pool = worker.resources.pool
        self.stream = worker.stream
        self.group = worker.group
        self.consumer = consumer
        self.idle_ms = int(worker.reclaim_idle_seconds * 1000)
        self._types: dict[bytes, _Known] = {
            cls.event_type().encode(): _Known(
                cls, cls.event_type(), msgspec.json.Decoder(cls), cls.supported_versions
            )
            for cls in worker.event_types
        }
        self._queue: asyncio.Queue[Batch | None] = asyncio.Queue(
            maxsize=self.settings.prefetch_batches
        )
        # Acknowledgements leave through their own task so the next batch's database
        # work overlaps the XACK round trip. At most `concurrency` batches' ids wait for
        # it (or are being acknowledged): a processor waits for room, so the entries held
        # stay bounded even when acknowledging falls behind.
        self._acks: asyncio.Queue[list[bytes] | None] = asyncio.Queue()
        self._ack_room = asyncio.Semaphore(self.settings.concurrency)
        self._acker_task: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()
        self._readers_left = self.settings.concurrency
        self._held: dict[bytes, None] = {}
        self._stopping = asyncio.Event()
        self._hard_stop = False
        self._children: dict[tuple[str, str], Any] = {}
        self._log = log.bind(stream=self.stream, group=self.group, consumer=consumer)
        self.ready = asyncio.Event()
        # Workers without semantic checks are not called for every event.
        self._validate = None if type(worker).validate is Worker.validate else worker.validate
        # One line per event outcome only at debug: building it costs more than the event.
        self._debug = self.settings.log_level == "debug"

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Create the group if needed, then consume until stopped."""
        await streams.ensure_group(self.redis, self.stream, self.group)
        await self.redis.xgroup_createconsumer(self.stream, self.group, self.consumer)
        # Reads go through a client of the same pool whose XREADGROUP replies are shaped
        # by _stream_entries.
        self._reads = aioredis.Redis(connection_pool=self.redis.connection_pool)
        self._reads.set_response_callback("XREADGROUP", _stream_entries)
        self._log.info("consumer.started", idle_ms=self.idle_ms)
        readers = [
            asyncio.create_task(self._reader(i), name=f"reader:{self.stream}:{i}")
            for i in range(self.settings.concurrency)
        ]
        processors = [
            asyncio.create_task(self._processor(), name=f"processor:{self.stream}:{i}")
            for i in range(self.settings.concurrency)
        ]
        acker = asyncio.create_task(self._acker(), name=f"acker:{self.stream}")
        self._acker_task = acker
        # Keeps held entries fresh until the drain below has finished with them.
        heartbeat = asyncio.create_task(self._heartbeat(), name="heartbeat")
        helpers = [
            asyncio.create_task(self._reclaimer(), name="reclaimer"),
            asyncio.create_task(self._maintenance(), name="maintenance"),
            asyncio.create_task(self.worker.background(), name="worker-background"),
        ]
        self.ready.set()
        try:
            await self._stopping.wait()
        finally:
            for task in helpers:
                task.cancel()
            grace = self.settings.shutdown_grace_seconds
            deadline = time.monotonic() + grace
            done, pending = await asyncio.wait({*readers, *processors}, timeout=grace)
            if pending:
                self._hard_stop = True
                await _cancel_and_wait(list(pending), seconds=_HELPER_STOP_SECONDS)
            self._acks.put_nowait(None)
            ack_done, ack_pending = await asyncio.wait(
                {acker}, timeout=max(0.5, deadline - time.monotonic())
            )
            done |= ack_done
            # Within what is left of the grace period (half a second at least).
            left = min(_HELPER_STOP_SECONDS, max(0.5, deadline - time.monotonic()))
            stuck = await _cancel_and_wait([heartbeat, *helpers, *ack_pending], seconds=left)
            if stuck:
                self._log.error(
                    "consumer.tasks_not_stopping", tasks=sorted(t.get_name() for t in stuck)
                )
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    self._log.error("consumer.task_failed", error=_text(task.exception()))  # type: ignore[arg-type]  # checked not None just above
            self._log.info(
                "consumer.stopped", unfinished=len(self._held), hard_stop=self._hard_stop
            )

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def _pause(self, seconds: float) -> bool:
        """Sleep unless stopping; True when stopping was requested meanwhile."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------ reading

    async def _reader(self, index: int) -> None:
        """Reader 0 drains this consumer's own pending list first; then every reader reads
        new entries (several reads in flight keep the server busy while we decode)."""
        try:
            await self._read(index)
        finally:
            # Whatever ended this reader, the others and the processors must not wait on it.
            self._drained.set()
            self._readers_left -= 1
            if self._readers_left == 0:
                for _ in range(self.settings.concurrency):
                    await self._queue.put(None)

    async def _read(self, index: int) -> None:
        backoff = 0.1
        drained_own = index != 0
        if index != 0:
            await self._drained.wait()
        last_own = b"0"
        while not self.stopping:
            try:
                if not drained_own:
                    entries = await self._reads.xreadgroup(
                        self.group,
                        self.consumer,
                        {self.stream: last_own},
                        count=self.settings.batch_size,
                    )
                    if not entries:
                        drained_own = True
                        self._drained.set()
                        continue
                    last_own = entries[-1][0]
                    counts = await self._delivery_counts([e[0] for e in entries])
                    await self._enqueue(Batch(entries, counts, "own-pending"))
                    continue
                entries = await self._reads.xreadgroup(
                    self.group,
                    self.consumer,
                    {self.stream: ">"},
                    count=self.settings.batch_size,
                    block=self.settings.block_ms,
                )
                backoff = 0.1
            except redis_exc.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    # The stream or group was deleted under us (e.g. by an operator): recreate.
                    await streams.ensure_group(self.redis, self.stream, self.group)
                    continue
                # Refused (e.g. an ACL change): keep trying, loudly, rather than stop reading
                # for good while the process still looks healthy.
                self._log.error("stream.read_refused", error=_text(exc), retry_in=backoff)
                if await self._pause(backoff):
                    break
                backoff = min(backoff * 2, 5.0)
                continue
            except _REDIS_ERRORS as exc:
                self._log.warning("valkey.unavailable", error=_text(exc), retry_in=backoff)
                if await self._pause(backoff):
                    break
                backoff = min(backoff * 2, 5.0)
                continue
            if entries:
                await self._enqueue(Batch(entries))

    async def _enqueue(self, batch: Batch) -> None:
        for entry_id, _ in batch.entries:
            self._held[entry_id] = None
        await self._queue.put(batch)

    async def _delivery_counts(self, ids: Sequence[bytes]) -> dict[bytes, int]:
        if not ids:
            return {}
        rows = await self.redis.xpending_range(
            self.stream,
            self.group,
            min=ids[0],
            max=ids[-1],
            count=len(ids) + len(self._held) + 1,
            consumername=self.consumer,
        )
        return {row["message_id"]: int(row["times_delivered"]) for row in rows}

    async def _reclaimer(self) -> None:
        cursor: bytes | str = "0-0"
        interval = min(self.settings.reclaim_interval_seconds, self.idle_ms / 1000)
        while not await self._pause(interval):
            try:
                reply = await self.redis.xautoclaim(
                    self.stream,
                    self.group,
                    self.consumer,
                    min_idle_time=self.idle_ms,
                    start_id=cursor,
                    count=self.settings.batch_size,
                )
            except _REDIS_ERRORS as exc:
                self._log.warning("valkey.unavailable", error=_text(exc), during="reclaim")
                continue
            cursor = reply[0]
            claimed = [e for e in reply[1] if e[0] not in self._held]
            if not claimed:
                continue
            metrics.RECLAIMED.labels(self.stream, self.group).inc(len(claimed))
            self._log.info("entries.reclaimed", count=len(claimed))
            counts = await self._delivery_counts([e[0] for e in claimed])
            await self._enqueue(Batch(claimed, counts, "reclaimed"))

    async def _heartbeat(self) -> None:
        """Keep entries this consumer holds from looking idle to other consumers."""
        interval = max(self.idle_ms / 3000, 0.05)
        min_idle = int(interval * 500)
        while True:  # also during the shutdown drain; cancelled once it is over
            await asyncio.sleep(interval)
            held: list[Any] = list(self._held)
            if not held:
                continue
            try:
                for start in range(0, len(held), 1000):
                    await self.redis.xclaim(
                        self.stream,
                        self.group,
                        self.consumer,
                        min_idle_time=min_idle,
                        message_ids=held[start : start + 1000],
                        justid=True,
                    )
            except _REDIS_ERRORS as exc:
                self._log.warning("valkey.unavailable", error=_text(exc), during="heartbeat")

    async def _maintenance(self) -> None:
        while True:
            try:
                await streams.refresh_gauges(self.redis, self.stream)
                await streams.prune_consumers(
                    self.redis,
                    self.stream,
                    self.group,
                    idle_ms=int(self.settings.consumer_prune_idle_seconds * 1000),
                    claim_to=self.consumer,
                )
                await streams.trim_stream(
                    self.redis,
                    self.stream,
                    retention_days=self.settings.stream_retention_days,
                    max_len=self.settings.stream_max_len,
                )
                await self._expire_inbox()
            except _REDIS_ERRORS as exc:
                self._log.warning("valkey.unavailable", error=_text(exc), during="maintenance")
            except redis_exc.ResponseError as exc:
                self._log.warning("maintenance.failed", error=_text(exc))
            except Exception as exc:  # noqa: BLE001 - housekeeping must never stop consuming
                self._log.warning("maintenance.failed", error=_text(exc))
            if await self._pause(self.settings.maintenance_interval_seconds):
                return

    async def _expire_inbox(self) -> None:
        """Delete this group's inbox rows older than the inbox retention, in bounded batches.

        The retention is far beyond the stream retention, so no redelivery of those
        events can still arrive."""
        if self.pool is None or not self.worker.uses_database:
            return
        days = self.settings.inbox_retention_days
        deleted = await self.pool.execute(_EXPIRE_INBOX_SQL, self.group, days)
        if deleted != "DELETE 0":
            self._log.info("inbox.expired", result=deleted)

    # ------------------------------------------------------------ processing

    async def _processor(self) -> None:
        while True:
            batch = await self._queue.get()
            if batch is None:
                return
            try:
                await self.process(batch)
            except Exception as exc:  # noqa: BLE001 - a bug here must not stop the consumer
                # Whatever the batch did not finish stays pending; releasing it lets the
                # reclaimer hand it out again, and max_deliveries ends a loop.
                self._log.error("batch.crashed", error=_text(exc), size=len(batch.entries))
                for entry_id, _ in batch.entries:
                    self._held.pop(entry_id, None)

    async def process(self, batch: Batch) -> None:
        """Handle one batch: decode, apply, commit, acknowledge, dead-letter, count."""
        started = time.perf_counter()
        out = _Outcome()
        items = self._decode(batch, out)
        if items:
            await self._handle(items, out)
        await self._finish(out)
        elapsed = time.perf_counter() - started
        self._observe(batch, out, elapsed)

    def _decode(self, batch: Batch, out: _Outcome) -> list[_Item]:
        items: list[_Item] = []
        counts = batch.counts
        max_deliveries = self.settings.max_deliveries
        validate = self._validate
        for entry_id, fields in batch.entries:
            if not fields:
                # Trimmed or deleted while pending: nothing to do but release it.
                out.ack.append(entry_id)
                continue
            deliveries = counts.get(entry_id, 1) if counts is not None else 1
            raw_type = fields.get(b"type")
            known = self._types.get(raw_type) if raw_type is not None else None
            if known is None:
                label = _type_label(raw_type)
                if raw_type is None:
                    out.dead.append((entry_id, fields, "missing_type", "no 'type' field", 1))
                    out.counts[(label, "dead_lettered")] += 1
                else:
                    out.ack.append(entry_id)
                    out.counts[(label, "ignored")] += 1
                continue
            label = known.label
            data = fields.get(b"data")
            if data is None:
                out.dead.append((entry_id, fields, "missing_data", "no 'data' field", deliveries))
                out.counts[(label, "dead_lettered")] += 1
                continue
            try:
                # Fast path: the decoder built once for this type, version checked inline.
                event = known.decoder.decode(data)
                if event.version not in known.versions:
                    raise msgspec.ValidationError("unsupported version")
            except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError):
                reason, detail = _decode_failure(known.cls, data)
                out.dead.append((entry_id, fields, reason, detail, deliveries))
                out.counts[(label, "dead_lettered")] += 1
                continue
            problem = None if validate is None else validate(event)
            if problem is not None:
                out.dead.append((entry_id, fields, "invalid_event", problem, deliveries))
                out.counts[(label, "dead_lettered")] += 1
                continue
            if deliveries > max_deliveries:
                out.dead.append(
                    (
                        entry_id,
                        fields,
                        "max_deliveries",
                        f"delivered {deliveries} times; the consumer holding it stopped "
                        "before finishing",
                        deliveries,
                    )
                )
                out.counts[(label, "dead_lettered")] += 1
                continue
            items.append(_Item(entry_id, fields, label, event, deliveries))
        return items

    async def _handle(self, items: list[_Item], out: _Outcome) -> None:
        try:
            await self._commit_with_retries(items, out)
            return
        except Exception as exc:  # noqa: BLE001 - any failure falls back to per-entry isolation
            if len(items) == 1:
                self._failed(items[0], exc, out)
                return
            self._log.info("batch.isolating", size=len(items), error=_text(exc))
        for item in items:
            try:
                await self._commit_with_retries([item], out)
            except Exception as exc:  # noqa: BLE001 - recorded per entry, never blocks the rest
                self._failed(item, exc, out)

    def _failed(self, item: _Item, exc: BaseException, out: _Outcome) -> None:
        if isinstance(exc, Permanent):
            out.dead.append((item.entry_id, item.fields, exc.reason, str(exc), item.deliveries))
            out.counts[(item.type_label, "dead_lettered")] += 1
        elif item.deliveries >= self.settings.max_deliveries:
            out.dead.append(
                (item.entry_id, item.fields, "max_deliveries", _text(exc), item.deliveries)
            )
            out.counts[(item.type_label, "dead_lettered")] += 1
        else:
            # Stays pending; XAUTOCLAIM hands it out again after the idle time.
            self._held.pop(item.entry_id, None)
            out.counts[(item.type_label, "retried")] += 1
            self._log.warning(
                "event.failed",
                entry_id=item.entry_id.decode(),
                event_id=str(item.event.event_id),
                type=item.type_label,
                deliveries=item.deliveries,
                error=_text(exc),
            )

    def _stop_retrying(self, state: RetryCallState) -> bool:
        return self._hard_stop

    def _count_retry(self, state: RetryCallState) -> None:
        self._log.warning(
            "batch.retrying",
            attempt=state.attempt_number,
            error=_text(state.outcome.exception()) if state.outcome else None,  # type: ignore[arg-type]  # failed attempts carry an exception
        )
        metrics.EVENTS.labels(self.stream, self.group, "batch", "retried").inc()

    async def _commit_with_retries(self, items: list[_Item], out: _Outcome) -> None:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=wait_exponential_jitter(multiplier=0.05, max=5.0, jitter=0.05),
            stop=self._stop_retrying,
            before_sleep=self._count_retry,
            reraise=True,
        ):
            with attempt:
                await self._commit(items, out)

    async def _commit(self, items: list[_Item], out: _Outcome) -> None:
        if not self.worker.uses_database:
            await self.worker.apply(None, [i.event for i in items])
            fresh = items
        elif self.worker.writes_inbox:
            # One statement writes the inbox rows and the effects: atomic on its own, so
            # no explicit transaction and a single round trip per batch.
            assert self.pool is not None
            async with self.pool.acquire() as conn:
                new_ids = set(
                    await self.worker.apply_with_inbox(conn, self.group, [i.event for i in items])
                )
            fresh = _first_of_each(items, new_ids)
        else:
            assert self.pool is not None
            async with self.pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(_INBOX_SQL, self.group, [i.event.event_id for i in items])
                fresh = _first_of_each(items, {r[0] for r in rows})
                if fresh:
                    await self.worker.apply(conn, [i.event for i in fresh])
        out.ack.extend([item.entry_id for item in items])
        if len(fresh) == len(items) and not self._debug:
            for label, n in collections.Counter([item.type_label for item in items]).items():
                out.counts[(label, "ok")] += n
        else:
            fresh_ids = {id(i) for i in fresh}
            for item in items:
                outcome = "ok" if id(item) in fresh_ids else "duplicate"
                out.counts[(item.type_label, outcome)] += 1
                if self._debug:
                    self._log_event(item, outcome)
        if fresh:
            await self.worker.after_commit([i.event for i in fresh])

    async def _finish(self, out: _Outcome) -> None:
        if out.dead:
            for attempt in range(1, 6):
                try:
                    await streams.dead_letter(
                        self.redis, self.stream, self.group, self.consumer, out.dead
                    )
                except _REDIS_ERRORS as exc:
                    # Not dead-lettered and not acknowledged: the entry stays pending and
                    # comes back, so nothing is lost by giving up.
                    self._log.warning("dead_letter.failed", error=_text(exc), attempt=attempt)
                    if await self._pause(0.2 * attempt) and self._hard_stop:
                        break
                    continue
                except redis_exc.ResponseError as exc:
                    # Refused by the server (e.g. an ACL without MULTI): retrying cannot help.
                    # The entries stay pending and are released for redelivery.
                    self._log.error("dead_letter.refused", error=_text(exc))
                    for entry_id, *_ in out.dead:
                        self._held.pop(entry_id, None)
                    break
                for entry_id, fields, reason, detail, _ in out.dead:
                    self._held.pop(entry_id, None)
                    metrics.DEAD_LETTERS.labels(self.stream, self.group, reason).inc()
                    self._log.warning(
                        "event.dead_lettered",
                        entry_id=entry_id.decode(errors="replace"),
                        type=_type_label(fields.get(b"type")),
                        reason=reason,
                        error=detail[:200],
                    )
                break
        if out.ack:
            if self._acker_task is not None and not self._acker_task.done():
                await self._ack_room.acquire()
            self._acks.put_nowait(out.ack)

    async def _acker(self) -> None:
        """``XACK`` committed entries, coalescing whatever is waiting into one call."""
        finished = False
        while not finished:
            first = await self._acks.get()
            if first is None:
                return
            ids = list(first)
            taken = 1
            while not self._acks.empty():
                more = self._acks.get_nowait()
                if more is None:
                    finished = True
                    break
                ids.extend(more)
                taken += 1
            try:
                await self._acknowledge(ids)
            finally:
                for entry_id in ids:
                    self._held.pop(entry_id, None)
                for _ in range(taken):
                    self._ack_room.release()

    async def _acknowledge(self, ids: list[bytes]) -> None:
        for attempt in range(1, 6):
            try:
                await self.redis.xack(self.stream, self.group, *ids)
                return
            except _REDIS_ERRORS as exc:
                # Effects are committed; an unacknowledged entry is redelivered and then
                # recognised as a duplicate, so giving up here loses nothing.
                self._log.warning("ack.failed", error=_text(exc), attempt=attempt)
                if await self._pause(0.2 * attempt) and self._hard_stop:
                    return
            except redis_exc.ResponseError as exc:
                # Refused by the server (e.g. an ACL change): the entries stay pending.
                self._log.error("ack.refused", error=_text(exc))
                return

    def _observe(self, batch: Batch, out: _Outcome, elapsed: float) -> None:
        size = len(batch.entries)
        metrics.BATCH_SIZE.labels(self.stream, self.group).observe(size)
        per_type: collections.Counter[str] = collections.Counter()
        for (type_label, outcome), n in out.counts.items():
            self._child(type_label, outcome).inc(n)
            per_type[type_label] += n
        if size:
            per_event = elapsed / size
            for type_label in per_type:
                metrics.EVENT_HANDLE_SECONDS.labels(self.stream, self.group, type_label).observe(
                    per_event
                )
        self._log.info(
            "batch.handled",
            size=size,
            source=batch.source,
            seconds=round(elapsed, 6),
            outcomes={f"{t}:{o}": n for (t, o), n in out.counts.items()},
        )

    def _log_event(self, item: _Item, outcome: str) -> None:
        event = item.event
        self._log.debug(
            "event.handled",
            outcome=outcome,
            entry_id=item.entry_id.decode(),
            event_id=str(event.event_id),
            type=item.type_label,
            tenant_id=str(event.tenant_id),
            correlation_id=event.correlation_id,
            deliveries=item.deliveries,
        )

    def _child(self, type_label: str, outcome: str) -> Any:
        key = (type_label, outcome)
        child = self._children.get(key)
        if child is None:
            child = metrics.EVENTS.labels(self.stream, self.group, type_label, outcome)
            self._children[key] = child
        return child


async def _cancel_and_wait(tasks: Sequence[asyncio.Task[Any]], *, seconds: float) -> set[Any]:
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


def _first_of_each(items: list[_Item], new_ids: set[Any]) -> list[_Item]:
    """Items whose event id the inbox saw for the first time; a second copy of the same
    event within the batch is a duplicate."""
    if len(new_ids) == len(items):
        # As many new ids as items: every item's id is new and appears once.
        return items
    fresh = []
    for item in items:
        if item.event.event_id in new_ids:
            new_ids.discard(item.event.event_id)
            fresh.append(item)
    return fresh


def _type_label(raw: bytes | None) -> str:
    """Event types from the contract are labels as-is; anything else is ``unknown``
    so a misbehaving producer cannot explode label cardinality."""
    if raw is None:
        return "unknown"
    name = raw.decode(errors="replace")
    return name if event_class(name) is not None else "unknown"
