"""The stream runtime's guarantees, each test run on fakeredis and on real Valkey."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

import asyncpg
import msgspec

from contracts import Event, encode_entry
from contracts.notify import NotificationFailed, NotificationSent, NotifyEvent
from devkit import workload
from tests.helpers import metric, poll, resources, running
from workers import streams
from workers.kernel import PgInbox, Stopping, StreamConsumer, Tx
from workers.notify_delivery import NotifyDeliveryWorker
from workers.publishing import publish

STREAM = "notify:delivery"
GROUP = "notify-workers"
DLQ = "notify:delivery:dlq"


async def rows(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM notify.delivery_log"))


async def pending(redis: Any, stream: str = STREAM, group: str = GROUP) -> int:
    return int((await redis.xpending(stream, group))["pending"])


def _counted(outcome: str) -> float:
    """``fleet_events_total`` for both notification types with ``outcome``."""
    return sum(
        metric("fleet_events_total", stream=STREAM, group=GROUP, type=t, outcome=outcome)
        for t in ("notification.sent", "notification.failed")
    )


async def test_each_event_recorded_once_even_when_published_twice(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    events = list(workload.notification_events(10_000, seed=11))
    before_dup = _counted("duplicate")
    worker = NotifyDeliveryWorker(resources(settings_for(), redis, db))
    async with running(worker):
        await publish(redis, STREAM, events)
        await poll(lambda: _equals(rows(db), 10_000), timeout=120, what="10,000 rows")
        await publish(redis, STREAM, events)
        await poll(
            lambda: _lag_zero_and_nothing_pending(redis), timeout=120, what="second copy consumed"
        )
    assert await rows(db) == 10_000
    after_dup = _counted("duplicate")
    assert after_dup - before_dup == 10_000
    assert await redis.xlen(DLQ) == 0


async def _equals(value: Any, expected: int) -> bool:
    return await value == expected


async def _lag_zero_and_nothing_pending(redis: Any, stream: str = STREAM) -> bool:
    for st in await streams.group_statuses(redis, stream):
        if st.pending or (st.lag or 0):
            return False
    return True


def _valid(seed: int, count: int) -> list[Event]:
    return list(workload.notification_events(count, seed=seed))


async def test_malformed_entries_are_dead_lettered_with_reasons(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    good = _valid(21, 6)
    sample = encode_entry(good[0])["data"]
    missing_field = sample.replace(b'"channelId"', b'"channelIdentifier"')
    wrong_type = sample.replace(b'"attempt":1', b'"attempt":"first"')
    unsupported = sample.replace(b'"version":1', b'"version":99')
    bad: list[tuple[dict[str, bytes], str]] = [
        ({"type": b"notification.sent", "data": b"{not json"}, "malformed_json"),
        ({"type": b"notification.sent", "data": missing_field}, "invalid_event"),
        ({"type": b"notification.sent", "data": wrong_type}, "invalid_event"),
        ({"type": b"notification.sent", "data": unsupported}, "unsupported_version"),
        ({"type": b"notification.sent", "data": b"\x00\xff" * (512 * 1024)}, "malformed_json"),
        ({"type": b"notification.sent"}, "missing_data"),
        ({"data": sample}, "missing_type"),
    ]
    worker = NotifyDeliveryWorker(resources(settings_for(), redis, db))
    async with running(worker) as consumer:
        for i, (fields, _) in enumerate(bad):
            await publish(redis, STREAM, good[i : i + 1])
            await redis.xadd(STREAM, fields)
        # Good events around the bad ones except the first, which the sample was taken from
        # and is already published as good[0].
        await publish(redis, STREAM, good[len(bad) :])
        await poll(
            lambda: _dlq_len_is(redis, len(bad)), timeout=30, what="every bad entry dead-lettered"
        )
        await poll(lambda: _lag_zero_and_nothing_pending(redis), what="stream drained")
        assert not consumer.stopping.is_set()
    dead = await streams.dlq_entries(redis, STREAM, count=100)
    # Batches are handled concurrently, so dead letters may be written out of order;
    # the original entry id restores the publishing order.
    dead.sort(key=lambda d: tuple(int(p) for p in d.fields["dlq.source_id"].split(b"-")))
    assert [d.reason for d in dead] == [reason for _, reason in bad]
    for d in dead:
        assert d.fields["dlq.group"] == GROUP.encode()
        assert d.fields["dlq.error"]
        assert d.fields["dlq.deliveries"] == b"1"
    assert dead[4].fields["data"] == b"\x00\xff" * (512 * 1024)  # original fields kept whole
    assert await rows(db) == len(set(e.event_id for e in good))


async def _dlq_len_is(redis: Any, n: int) -> bool:
    return int(await redis.xlen(DLQ)) == n


async def test_types_the_group_does_not_handle_are_acknowledged_as_ignored(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    before = metric(
        "fleet_events_total", stream=STREAM, group=GROUP, type="unknown", outcome="ignored"
    )
    worker = NotifyDeliveryWorker(resources(settings_for(), redis, db))
    async with running(worker):
        await redis.xadd(STREAM, {"type": b"notification.read", "data": b"{}"})
        await publish(redis, STREAM, _valid(3, 2))
        await poll(lambda: _lag_zero_and_nothing_pending(redis), what="drained")
    assert await rows(db) == 2
    assert await redis.xlen(DLQ) == 0
    after = metric(
        "fleet_events_total", stream=STREAM, group=GROUP, type="unknown", outcome="ignored"
    )
    assert after - before == 1


async def test_pending_entries_of_a_dead_consumer_are_reclaimed(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    await streams.ensure_group(redis, STREAM, GROUP)
    await publish(redis, STREAM, _valid(5, 40))
    # A consumer that reads and then dies without acknowledging anything.
    await redis.xreadgroup(GROUP, "crashed", {STREAM: ">"}, count=25)
    assert await pending(redis) == 25
    before = metric("fleet_reclaimed_total", stream=STREAM, group=GROUP)
    worker = NotifyDeliveryWorker(resources(settings_for(reclaim_idle_seconds=0.3), redis, db))
    async with running(worker, "survivor"):
        await poll(lambda: _equals(rows(db), 40), what="all 40 rows")
        await poll(lambda: _lag_zero_and_nothing_pending(redis), what="nothing pending")
    assert metric("fleet_reclaimed_total", stream=STREAM, group=GROUP) - before == 25


async def test_own_pending_list_is_drained_before_new_entries(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    await streams.ensure_group(redis, STREAM, GROUP)
    await publish(redis, STREAM, _valid(6, 10))
    await redis.xreadgroup(GROUP, "same-name", {STREAM: ">"}, count=10)
    # A restart under the same consumer name finds its own pending entries first;
    # the idle time is long, so only the own-pending drain can pick them up.
    worker = NotifyDeliveryWorker(resources(settings_for(reclaim_idle_seconds=3600), redis, db))
    async with running(worker, "same-name"):
        await poll(lambda: _equals(rows(db), 10), what="own pending handled")
        await poll(lambda: _lag_zero_and_nothing_pending(redis), what="nothing pending")


class Flaky(NotifyDeliveryWorker):
    """Fails on chosen delivery ids: transiently a few times, or forever."""

    poison: ClassVar[set[uuid.UUID]] = set()
    transient_left: ClassVar[dict[uuid.UUID, int]] = {}

    async def apply(self, tx: Tx, events: Sequence[NotifyEvent]) -> None:
        for e in events:
            if not isinstance(e, NotificationSent | NotificationFailed):
                continue
            if e.delivery_id in self.poison:
                raise RuntimeError(f"cannot render delivery {e.delivery_id}")
            left = self.transient_left.get(e.delivery_id, 0)
            if left:
                self.transient_left[e.delivery_id] = left - 1
                raise asyncpg.DeadlockDetectedError("deadlock detected")
        return await super().apply(tx, events)


async def test_poison_event_is_dead_lettered_after_max_deliveries_and_others_proceed(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    events = _valid(8, 30)
    poison = events[7]
    assert isinstance(poison, NotificationSent | NotificationFailed)
    Flaky.poison = {poison.delivery_id}
    worker = Flaky(resources(settings_for(reclaim_idle_seconds=0.2, max_deliveries=3), redis, db))
    async with running(worker):
        await publish(redis, STREAM, events)
        await poll(lambda: _equals(rows(db), 29), what="the 29 good events")
        await poll(lambda: _dlq_len_is(redis, 1), timeout=30, what="the poison dead-lettered")
        await poll(lambda: _lag_zero_and_nothing_pending(redis), what="nothing pending")
    (dead,) = await streams.dlq_entries(redis, STREAM)
    assert dead.reason == "max_deliveries"
    assert b"cannot render delivery" in dead.fields["dlq.error"]
    assert int(dead.fields["dlq.deliveries"]) == 3
    # The original entry as published: the event, stamped with the producer's traceparent.
    kept = msgspec.json.decode(dead.fields["data"])
    original = msgspec.json.decode(encode_entry(poison)["data"])
    assert kept.pop("traceparent") and original.pop("traceparent") is None
    assert kept == original
    Flaky.poison = set()


async def test_transient_errors_retry_in_process(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    events = _valid(9, 5)
    target = events[2]
    assert isinstance(target, NotificationSent | NotificationFailed)
    Flaky.transient_left = {target.delivery_id: 2}
    before = metric(
        "fleet_events_total", stream=STREAM, group=GROUP, type="batch", outcome="retried"
    )
    worker = Flaky(resources(settings_for(reclaim_idle_seconds=3600), redis, db))
    async with running(worker):
        await publish(redis, STREAM, events)
        await poll(lambda: _equals(rows(db), 5), what="all rows after retries")
        await poll(lambda: _lag_zero_and_nothing_pending(redis), what="nothing pending")
    after = metric(
        "fleet_events_total", stream=STREAM, group=GROUP, type="batch", outcome="retried"
    )
    assert after - before == 2
    assert await redis.xlen(DLQ) == 0
    Flaky.transient_left = {}


async def test_dead_letters_replayed_after_a_fix_are_processed(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    events = _valid(10, 4)
    Flaky.poison = {e.delivery_id for e in events[:2]}  # type: ignore[attr-defined]
    worker = Flaky(resources(settings_for(reclaim_idle_seconds=0.2, max_deliveries=2), redis, db))
    async with running(worker):
        await publish(redis, STREAM, events)
        await poll(lambda: _dlq_len_is(redis, 2), timeout=30, what="two dead letters")
        await poll(lambda: _lag_zero_and_nothing_pending(redis), what="nothing pending")
        assert await rows(db) == 2
        Flaky.poison = set()  # the fix is deployed
        assert await streams.dlq_replay(redis, STREAM, None) == 2
        await poll(lambda: _equals(rows(db), 4), what="replayed events recorded")
    assert await redis.xlen(DLQ) == 0


async def test_trim_never_removes_what_a_lagging_group_has_not_acknowledged(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    await streams.ensure_group(redis, STREAM, GROUP)
    await streams.ensure_group(redis, STREAM, "audit")  # a second, lagging group
    await publish(redis, STREAM, _valid(12, 100))
    await redis.xreadgroup("audit", "slow", {STREAM: ">"}, count=30)
    delivered = await redis.xrange(STREAM, "-", "+", count=30)
    await redis.xack(STREAM, "audit", *[eid for eid, _ in delivered[:10]])
    worker = NotifyDeliveryWorker(resources(settings_for(), redis, db))
    async with running(worker):
        await poll(lambda: _equals(rows(db), 100), what="the fast group done")
    # Retention 0 days: everything is old enough, only group progress protects entries.
    plan = await streams.trim_stream(redis, STREAM, retention_days=0)
    assert plan.limited_by == "audit"
    assert plan.removable == 10
    remaining = [eid for eid, _ in await redis.xrange(STREAM, "-", "+")]
    assert remaining == [eid for eid, _ in delivered[10:]] + remaining[20:]
    assert len(remaining) == 90
    # Every entry the audit group has not acknowledged is still there to read.
    unacked = await redis.xpending_range(STREAM, "audit", min="-", max="+", count=100)
    assert {r["message_id"] for r in unacked} <= set(remaining)


async def test_hard_cap_counts_unconsumed_entries_it_removes(redis: Any) -> None:
    await streams.ensure_group(redis, STREAM, GROUP)
    await publish(redis, STREAM, _valid(13, 50))
    before = metric("fleet_stream_trimmed_unconsumed_total", stream=STREAM)
    plan = await streams.trim_stream(redis, STREAM, retention_days=0, max_len=20)
    assert plan.removable == 0 and plan.cap_removals == 30
    assert await redis.xlen(STREAM) == 20
    assert metric("fleet_stream_trimmed_unconsumed_total", stream=STREAM) - before == 30


async def test_prune_claims_pending_entries_before_deleting_a_consumer(redis: Any) -> None:
    await streams.ensure_group(redis, STREAM, GROUP)
    await publish(redis, STREAM, _valid(14, 6))
    await redis.xreadgroup(GROUP, "gone", {STREAM: ">"}, count=4)
    await redis.xgroup_createconsumer(STREAM, GROUP, "idle-empty")
    await redis.xgroup_createconsumer(STREAM, GROUP, "alive")
    result = await streams.prune_consumers(redis, STREAM, GROUP, idle_ms=0, claim_to="alive")
    assert sorted(result.deleted) == ["gone", "idle-empty"]
    assert result.claimed == 4
    names = {c["name"] for c in await redis.xinfo_consumers(STREAM, GROUP)}
    assert names == {b"alive"}
    moved = await redis.xpending_range(STREAM, GROUP, min="-", max="+", count=10)
    assert {r["consumer"] for r in moved} == {b"alive"} and len(moved) == 4


async def test_prune_without_a_live_consumer_keeps_one_holding_work(redis: Any) -> None:
    await streams.ensure_group(redis, STREAM, GROUP)
    await publish(redis, STREAM, _valid(15, 3))
    await redis.xreadgroup(GROUP, "gone", {STREAM: ">"}, count=3)
    result = await streams.prune_consumers(redis, STREAM, GROUP, idle_ms=0, claim_to=None)
    assert result.kept == ["gone"] and result.deleted == []
    assert await pending(redis) == 3


async def test_stop_finishes_and_acknowledges_what_was_read(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    worker = NotifyDeliveryWorker(resources(settings_for(batch_size=200), redis, db))
    await publish(redis, STREAM, _valid(16, 3000))
    async with running(worker):
        await poll(lambda: _more_than(rows(db), 0), what="first batch")
    # After a graceful stop nothing this consumer read is left pending.
    assert await pending(redis) == 0
    info = {g["name"]: g for g in await redis.xinfo_groups(STREAM)}
    assert await rows(db) == int(info[GROUP.encode()]["entries-read"])


async def _more_than(value: Any, n: int) -> bool:
    return await value > n


class Slow(NotifyDeliveryWorker):
    """Takes longer than the group's idle time for every batch."""

    seconds: ClassVar[float] = 1.5
    calls: ClassVar[list[int]] = []

    async def apply(self, tx: Tx, events: Sequence[NotifyEvent]) -> None:
        self.calls.append(len(events))
        await asyncio.sleep(self.seconds)  # the slow handler under test, not synchronisation
        return await super().apply(tx, events)


async def test_a_handler_slower_than_the_idle_time_keeps_its_entries(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    Slow.calls = []
    slow = Slow(resources(settings_for(reclaim_idle_seconds=0.5), redis, db))
    other = NotifyDeliveryWorker(resources(settings_for(reclaim_idle_seconds=0.5), redis, db))
    before = metric("fleet_reclaimed_total", stream=STREAM, group=GROUP)
    async with running(slow, "slow"):
        await publish(redis, STREAM, _valid(17, 20))
        await poll(lambda: _truthy(len(Slow.calls) > 0), what="the slow handler started")
        async with running(other, "eager"):
            await poll(lambda: _equals(rows(db), 20), timeout=30, what="rows")
    # Without the claim being extended, "eager" would take over the slow batch.
    assert metric("fleet_reclaimed_total", stream=STREAM, group=GROUP) == before


async def _truthy(value: bool) -> bool:
    return value


async def test_inbox_rows_past_retention_are_expired_in_bounded_batches(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    old, recent = uuid.uuid4(), uuid.uuid4()
    await db.execute(
        "INSERT INTO fleet.inbox (event_id, group_name, processed_at) VALUES "
        "($1, $3, now() - interval '31 days'), ($2, $3, now() - interval '29 days'), "
        "($1, 'another-group', now() - interval '400 days')",
        old,
        recent,
        GROUP,
    )
    worker = NotifyDeliveryWorker(resources(settings_for(inbox_retention_days=30), redis, db))
    await StreamConsumer(worker, "c1", PgInbox(db)).housekeeping.expire_inbox()
    left = {
        (r["event_id"], r["group_name"])
        for r in await db.fetch("SELECT event_id, group_name FROM fleet.inbox")
    }
    assert left == {(recent, GROUP), (old, "another-group")}


async def test_delivery_rows_converge_whatever_the_arrival_order(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    base = next(workload.notification_events(1, seed=77, failure_rate=1.0))
    assert isinstance(base, NotificationFailed)
    import msgspec

    attempts = [
        msgspec.structs.replace(base, event_id=uuid.uuid4(), attempt=1, error="timeout"),
        msgspec.structs.replace(base, event_id=uuid.uuid4(), attempt=2, error="503"),
    ]
    success = NotificationSent(
        **{
            f: getattr(base, f)
            for f in NotificationSent.__struct_fields__
            if f not in ("sent_at", "attempt", "event_id", "status_code")
        },
        event_id=uuid.uuid4(),
        attempt=3,
        sent_at=base.failed_at,
    )
    worker = NotifyDeliveryWorker(resources(settings_for(batch_size=1), redis, db))
    async with running(worker):
        # Newest first, one per batch: later arrivals are older attempts and must not win.
        await publish(redis, STREAM, [success, attempts[1], attempts[0]])
        await poll(lambda: _lag_zero_and_nothing_pending(redis), what="drained")
    row = await db.fetchrow("SELECT status, attempt, error FROM notify.delivery_log")
    assert dict(row) == {"status": "sent", "attempt": 3, "error": None}


async def test_hard_cap_does_not_count_entries_every_group_already_consumed(redis: Any) -> None:
    await streams.ensure_group(redis, STREAM, GROUP)
    await publish(redis, STREAM, _valid(18, 50))
    read = await redis.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=40)
    await redis.xack(STREAM, GROUP, *[eid for eid, _ in read[0][1]])
    before = metric("fleet_stream_trimmed_unconsumed_total", stream=STREAM)
    # A week of retention keeps all 50; the cap of 5 removes 45: 40 consumed, 5 not.
    await streams.trim_stream(redis, STREAM, retention_days=7, max_len=5)
    assert await redis.xlen(STREAM) == 5
    assert metric("fleet_stream_trimmed_unconsumed_total", stream=STREAM) - before == 5


async def test_logs_one_line_per_batch_and_at_debug_one_per_event(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    from structlog.testing import capture_logs

    events = _valid(19, 3)
    worker = NotifyDeliveryWorker(resources(settings_for(log_level="debug"), redis, db))
    with capture_logs() as logs:
        async with running(worker):
            await publish(redis, STREAM, events)
            await poll(lambda: _lag_zero_and_nothing_pending(redis), what="drained")
    handled = [e for e in logs if e["event"] == "event.handled"]
    assert sorted(e["event_id"] for e in handled) == sorted(str(e.event_id) for e in events)
    for line in handled:
        assert line["outcome"] == "ok"
        assert line["entry_id"] and line["tenant_id"] and line["type"].startswith("notification.")
        assert line["stream"] == STREAM and line["group"] == GROUP and line["consumer"] == "c1"
    batches = [e for e in logs if e["event"] == "batch.handled"]
    assert batches and all(e["log_level"] == "info" for e in batches)
    assert sum(e["size"] for e in batches) == 3


async def test_entries_held_in_memory_stay_bounded_whatever_the_backlog(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    class Brief(Slow):
        seconds: ClassVar[float] = 0.05

    settings = settings_for(batch_size=50, prefetch_batches=1, concurrency=2)
    bound = (settings.prefetch_batches + 3 * settings.concurrency) * settings.batch_size
    await publish(redis, STREAM, _valid(20, 3000))
    worker = Brief(resources(settings, redis, db))
    most = 0
    async with running(worker) as consumer:

        async def done() -> bool:
            nonlocal most
            most = max(most, len(consumer.held))
            return await rows(db) == 3000

        await poll(done, timeout=60, what="the backlog handled")
    assert 0 < most <= bound


async def test_entries_stay_claimed_while_a_stopping_consumer_drains(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    Slow.calls = []
    slow = StreamConsumer(
        Slow(resources(settings_for(reclaim_idle_seconds=0.5, batch_size=5), redis, db)),
        "slow",
        PgInbox(db),
    )
    other = NotifyDeliveryWorker(resources(settings_for(reclaim_idle_seconds=0.5), redis, db))
    before = metric("fleet_reclaimed_total", stream=STREAM, group=GROUP)
    slow_task = asyncio.create_task(slow.run())
    await asyncio.wait_for(slow.ready.wait(), timeout=10)
    await publish(redis, STREAM, _valid(21, 5))
    await poll(lambda: _truthy(len(Slow.calls) > 0), what="the slow handler started")
    async with running(other, "eager"):
        slow.stop()  # mid-batch: the drain outlives the idle time
        await asyncio.wait_for(slow_task, timeout=30)
        await poll(lambda: _equals(rows(db), 5), timeout=30, what="rows")
    assert metric("fleet_reclaimed_total", stream=STREAM, group=GROUP) == before
    assert await pending(redis) == 0


class SwallowsACancellation(NotifyDeliveryWorker):
    """A background task that swallows the first cancellation it gets, as a task inside
    Python 3.11's ``asyncio.timeout`` can when the cancellation races its deadline."""

    swallowed = 0

    async def background(self, stopping: Stopping) -> None:
        while True:
            try:
                await asyncio.sleep(3600)  # ignores the stop request on purpose
            except asyncio.CancelledError:
                if self.swallowed:
                    raise
                self.swallowed += 1


async def test_a_swallowed_cancellation_does_not_hold_up_the_stop(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    worker = SwallowsACancellation(resources(settings_for(), redis, db))
    async with running(worker):
        pass  # running() stops it and fails if the stop does not end
    assert worker.swallowed == 1


async def test_entries_held_stay_bounded_while_acknowledging_is_stuck(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    settings = settings_for(batch_size=50, prefetch_batches=1, concurrency=2)
    bound = (settings.prefetch_batches + 3 * settings.concurrency) * settings.batch_size
    await publish(redis, STREAM, _valid(21, 3000))
    gate = asyncio.Event()
    xack = redis.xack

    async def stuck_xack(*args: Any) -> Any:
        await gate.wait()
        return await xack(*args)

    redis.xack = stuck_xack
    async with running(NotifyDeliveryWorker(resources(settings, redis, db))) as consumer:
        try:
            # Every processor ends up waiting for room to hand over its acknowledgements,
            # the queue fills, the readers wait: nothing more is read.
            async def backed_up() -> bool:
                return consumer.held.ack_backed_up and consumer.queue.full()

            await poll(backed_up, what="the consumer backed up behind acknowledging")
            assert len(consumer.held) <= bound
            assert await rows(db) < 3000
        finally:
            gate.set()
        await poll(lambda: _lag_zero_and_nothing_pending(redis), timeout=60, what="drained")
        assert await rows(db) == 3000


async def test_a_refused_acknowledgement_leaves_entries_pending_and_the_acker_running(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    import redis.exceptions as redis_exc

    xack = redis.xack
    refused = 0

    async def refuse_once(*args: Any) -> Any:
        nonlocal refused
        if not refused:
            refused += 1
            raise redis_exc.ResponseError("NOPERM this user has no permissions to run 'xack'")
        return await xack(*args)

    redis.xack = refuse_once
    settings = settings_for(batch_size=20, reclaim_idle_seconds=0.3)
    async with running(NotifyDeliveryWorker(resources(settings, redis, db))) as consumer:
        await publish(redis, STREAM, _valid(22, 100))
        # The refused batch stays pending, is reclaimed once idle and acknowledged then,
        # and the acknowledgements of every other batch go through meanwhile.
        await poll(lambda: _lag_zero_and_nothing_pending(redis), what="drained")
        assert refused == 1 and await rows(db) == 100
        assert consumer.acker.task is not None and not consumer.acker.task.done()
