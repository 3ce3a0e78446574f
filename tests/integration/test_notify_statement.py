"""notify-delivery's batch statement: a batch of new events takes the plain inbox insert,
a batch holding a redelivered event falls back to the conflict-tolerant one, and either
way the new events, and only they, are recorded and reported."""

from __future__ import annotations

from typing import Any

import asyncpg

from contracts import Event
from tests.helpers import resources
from workers import workload
from workers.notify_delivery import NotifyDeliveryWorker

GROUP = "notify-workers"


def _worker(settings_for: Any, db: asyncpg.Pool) -> NotifyDeliveryWorker:
    # The statement needs no Valkey: nothing is read from or written to a stream here.
    return NotifyDeliveryWorker(resources(settings_for(), None, db))


async def _recorded(db: asyncpg.Pool) -> set[Any]:
    rows = await db.fetch("SELECT last_event_id FROM notify.delivery_log")
    return {r[0] for r in rows}


async def _inbox(db: asyncpg.Pool) -> int:
    return int(await db.fetchval("SELECT count(*) FROM fleet.inbox WHERE group_name = $1", GROUP))


def _distinct_deliveries(count: int, seed: int) -> list[Event]:
    """Events of distinct deliveries, so every event leaves its own row."""
    seen: set[Any] = set()
    events: list[Event] = []
    for event in workload.notification_events(count * 3, seed=seed):
        delivery = getattr(event, "delivery_id", None)
        if delivery not in seen:
            seen.add(delivery)
            events.append(event)
        if len(events) == count:
            break
    return events


async def test_new_events_then_a_batch_mixing_old_and_new(
    db: asyncpg.Pool, settings_for: Any
) -> None:
    worker = _worker(settings_for, db)
    first, second = _distinct_deliveries(200, seed=1), _distinct_deliveries(200, seed=2)
    async with db.acquire() as conn:
        new = await worker.apply_with_inbox(conn, GROUP, first)
        assert set(new) == {e.event_id for e in first}
        mixed = first[::2] + second
        new = await worker.apply_with_inbox(conn, GROUP, mixed)
    assert set(new) == {e.event_id for e in second}
    assert await _recorded(db) == {e.event_id for e in first + second}
    assert await _inbox(db) == 400


async def test_all_redelivered_reports_nothing_new(db: asyncpg.Pool, settings_for: Any) -> None:
    worker = _worker(settings_for, db)
    events = _distinct_deliveries(50, seed=3)
    async with db.acquire() as conn:
        await worker.apply_with_inbox(conn, GROUP, events)
        assert list(await worker.apply_with_inbox(conn, GROUP, events)) == []
    assert await _inbox(db) == 50


async def test_the_same_new_event_twice_in_a_batch_is_new_once(
    db: asyncpg.Pool, settings_for: Any
) -> None:
    worker = _worker(settings_for, db)
    events = _distinct_deliveries(10, seed=4)
    async with db.acquire() as conn:
        new = await worker.apply_with_inbox(conn, GROUP, events + events[:3])
    assert sorted(new) == sorted(e.event_id for e in events)
    assert await _inbox(db) == 10


async def test_inside_a_transaction_a_redelivery_does_not_abort_it(
    db: asyncpg.Pool, settings_for: Any
) -> None:
    worker = _worker(settings_for, db)
    old, fresh = _distinct_deliveries(20, seed=5), _distinct_deliveries(20, seed=6)
    async with db.acquire() as conn:
        await worker.apply_with_inbox(conn, GROUP, old)
        async with conn.transaction():
            new = await worker.apply_with_inbox(conn, GROUP, old[:5] + fresh)
            assert await conn.fetchval("SELECT 1") == 1  # the transaction is still usable
    assert set(new) == {e.event_id for e in fresh}
    assert await _inbox(db) == 40
