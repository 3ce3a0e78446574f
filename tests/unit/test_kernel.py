"""The kernel's guarantees with the in-memory inbox and fakeredis: no PostgreSQL, no
sockets. The same guarantees run against real Valkey and PostgreSQL in
``tests/integration/test_runtime.py`` and ``tests/integration/test_kernel_db.py``."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

import asyncpg
import fakeredis
import pytest

from contracts.notify import NotifyEvent
from devkit import workload
from tests.doubles import MemoryInbox
from tests.helpers import metric, poll, resources, running
from workers import streams
from workers.kernel import Tx, compose
from workers.kernel.worker import Worker
from workers.publishing import publish
from workers.settings import load_settings

STREAM = "notify:delivery"
GROUP = "notify-workers"
EFFECT = compose("effect AS (SELECT 1)\nSELECT")


class Scripted(Worker[NotifyEvent, list[uuid.UUID]]):
    """Applies a batch as one composed statement; fails as its script says."""

    name: ClassVar[str] = "scripted"
    stream: ClassVar[str] = STREAM

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.always: dict[uuid.UUID, Exception] = {}  # delivery id -> raised on every try
        self.first_calls_fail: list[Exception] = []  # raised by the next calls, any batch
        self.after_commits: list[tuple[list[uuid.UUID], list[uuid.UUID]]] = []
        self.after_commit_fails = 0
        self.gate: asyncio.Barrier | None = None

    async def apply(self, tx: Tx, fresh: Sequence[NotifyEvent]) -> list[uuid.UUID]:
        if self.first_calls_fail:
            raise self.first_calls_fail.pop(0)
        for event in fresh:
            if event.delivery_id in self.always:
                raise self.always[event.delivery_id]
        ids = [e.event_id for e in fresh]
        await tx.execute(EFFECT, ids)
        if self.gate is not None:
            await asyncio.wait_for(self.gate.wait(), timeout=10)
        return ids

    async def after_commit(self, fresh: Sequence[NotifyEvent], result: list[uuid.UUID]) -> None:
        self.after_commits.append(([e.event_id for e in fresh], result))
        if self.after_commit_fails:
            self.after_commit_fails -= 1
            raise RuntimeError("publishing failed")


def _setup(**overrides: Any) -> tuple[Scripted, Any, MemoryInbox]:
    values: dict[str, Any] = {
        "consumer_name": "k1",
        "block_ms": 20,
        "reclaim_idle_seconds": 0.3,
        "reclaim_interval_seconds": 0.05,
        "maintenance_interval_seconds": 0.5,
        "retry_budget_seconds": 0.3,
        "shutdown_grace_seconds": 10.0,
    }
    values.update(overrides)
    redis = fakeredis.FakeAsyncRedis(decode_responses=False)
    return Scripted(resources(load_settings({}, **values), redis)), redis, MemoryInbox()


def _applied(inbox: MemoryInbox) -> Counter[uuid.UUID]:
    """How often each event's effects were committed."""
    return Counter(i for _, (ids,) in inbox.effects for i in ids)


async def _settled(redis: Any) -> bool:
    for status in await streams.group_statuses(redis, STREAM):
        if status.pending or (status.lag or 0):
            return False
    return True


def _events(count: int, seed: int) -> list[NotifyEvent]:
    return list(workload.notification_events(count, seed=seed))  # type: ignore[arg-type]  # notification events


async def test_every_event_takes_effect_once_however_often_it_is_delivered() -> None:
    worker, redis, inbox = _setup(batch_size=50)
    events = _events(300, seed=1)
    before = sum(
        metric("fleet_events_total", stream=STREAM, group=GROUP, type=t, outcome="duplicate")
        for t in ("notification.sent", "notification.failed")
    )
    async with running(worker, inbox=inbox):
        await publish(redis, STREAM, events)
        await publish(redis, STREAM, events[::3] + events[:5])  # again, and twice in a batch
        await poll(lambda: _settled(redis), what="both copies handled")
    assert _applied(inbox) == Counter({e.event_id: 1 for e in events})
    after = sum(
        metric("fleet_events_total", stream=STREAM, group=GROUP, type=t, outcome="duplicate")
        for t in ("notification.sent", "notification.failed")
    )
    assert after - before == len(events[::3]) + 5
    assert await redis.xlen(f"{STREAM}:dlq") == 0


async def test_two_batches_in_flight_each_get_their_own_result() -> None:
    worker, redis, inbox = _setup(batch_size=3, concurrency=2)
    # Both batches are applied before either commits: each after_commit must see the
    # result its own apply returned.
    worker.gate = asyncio.Barrier(2)
    async with running(worker, inbox=inbox):
        await publish(redis, STREAM, _events(6, seed=2))
        await poll(lambda: _settled(redis), what="both batches handled")
    assert len(worker.after_commits) == 2
    for fresh, result in worker.after_commits:
        assert result == fresh


async def test_a_failing_after_commit_is_counted_and_the_batch_never_applied_again() -> None:
    worker, redis, inbox = _setup(batch_size=10)
    worker.after_commit_fails = 1
    events = _events(30, seed=3)
    before = metric("fleet_after_commit_failures_total", stream=STREAM, group=GROUP)
    async with running(worker, inbox=inbox):
        await publish(redis, STREAM, events)
        await poll(lambda: _settled(redis), what="every batch handled")
    assert metric("fleet_after_commit_failures_total", stream=STREAM, group=GROUP) - before == 1
    assert _applied(inbox) == Counter({e.event_id: 1 for e in events})
    assert sum(len(fresh) for fresh, _ in worker.after_commits) == 30
    assert await redis.xlen(f"{STREAM}:dlq") == 0


async def test_contention_past_the_budget_releases_the_entry_until_max_deliveries() -> None:
    worker, redis, inbox = _setup(batch_size=20, max_deliveries=3)
    events = _events(40, seed=4)
    poison = events[7]
    worker.always[poison.delivery_id] = asyncpg.QueryCanceledError(
        "canceling statement due to statement timeout"
    )
    async with running(worker, inbox=inbox):
        await publish(redis, STREAM, events)
        await poll(lambda: _settled(redis), timeout=60, what="the poison dead-lettered")
    (dead,) = await streams.dlq_entries(redis, STREAM)
    assert dead.reason == "max_deliveries"
    assert int(dead.fields["dlq.deliveries"]) == 3
    assert b"statement timeout" in dead.fields["dlq.error"]
    assert _applied(inbox) == Counter({e.event_id: 1 for e in events if e is not poison})


@pytest.mark.parametrize(
    ("error", "sqlstate"),
    [
        (asyncpg.CheckViolationError("violates check constraint"), "23514"),
        (asyncpg.NumericValueOutOfRangeError("integer out of range"), "22003"),
    ],
)
async def test_a_database_rejection_is_dead_lettered_on_its_first_delivery(
    error: Exception, sqlstate: str
) -> None:
    worker, redis, inbox = _setup(batch_size=20, retry_budget_seconds=30.0)
    events = _events(25, seed=5)
    worker.always[events[3].delivery_id] = error
    async with running(worker, inbox=inbox):
        await publish(redis, STREAM, events)
        await poll(lambda: _settled(redis), what="the rejected event dead-lettered")
    (dead,) = await streams.dlq_entries(redis, STREAM)
    assert dead.reason == "rejected_by_database"
    assert dead.fields["dlq.deliveries"] == b"1"
    assert f"SQLSTATE {sqlstate}".encode() in dead.fields["dlq.error"]
    assert len(_applied(inbox)) == 24


async def test_a_database_outage_dead_letters_nothing_and_keeps_the_claims() -> None:
    # max_deliveries=1: any entry given up during the outage would be dead-lettered on
    # its redelivery, and a claim left to go idle would be reclaimed.
    worker, redis, inbox = _setup(batch_size=10, max_deliveries=1, retry_budget_seconds=0.05)
    worker.first_calls_fail = [ConnectionRefusedError("connection refused")] * 5 + [
        asyncpg.CannotConnectNowError("the database system is starting up")
    ]
    events = _events(30, seed=6)
    reclaimed = metric("fleet_reclaimed_total", stream=STREAM, group=GROUP)
    async with running(worker, inbox=inbox):
        await publish(redis, STREAM, events)
        await poll(lambda: _settled(redis), timeout=60, what="everything after the outage")
    assert not worker.first_calls_fail
    assert _applied(inbox) == Counter({e.event_id: 1 for e in events})
    assert await redis.xlen(f"{STREAM}:dlq") == 0
    assert metric("fleet_reclaimed_total", stream=STREAM, group=GROUP) == reclaimed
