"""notify-delivery's batch statement behind the kernel's inbox: a batch of new events is
one statement; a batch holding a redelivered event is told so by the inbox key, and the
new events, and only they, are then recorded and reported."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, get_args

import asyncpg
import pytest

from contracts import Event
from contracts.notify import ChannelType, NotificationFailed, NotificationSent
from devkit import workload
from tests.helpers import resources
from workers.db import array_literal
from workers.kernel import PgInbox
from workers.kernel.inbox import apply_new
from workers.notify_delivery import NotifyDeliveryWorker

GROUP = "notify-workers"


def _worker(settings_for: Any, db: asyncpg.Pool) -> NotifyDeliveryWorker:
    # The statement needs no Valkey: nothing is read from or written to a stream here.
    return NotifyDeliveryWorker(resources(settings_for(), None, db))


async def _apply(worker: NotifyDeliveryWorker, db: asyncpg.Pool, events: list[Event]) -> list[Any]:
    """What the kernel does with a batch: the ids of the events applied."""
    fresh, _ = await apply_new(PgInbox(db), GROUP, worker.apply, events)  # type: ignore[arg-type]  # notification events only
    return [e.event_id for e in fresh]


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
    new = await _apply(worker, db, first)
    assert set(new) == {e.event_id for e in first}
    mixed = first[::2] + second
    new = await _apply(worker, db, mixed)
    assert set(new) == {e.event_id for e in second}
    assert await _recorded(db) == {e.event_id for e in first + second}
    assert await _inbox(db) == 400


async def test_all_redelivered_reports_nothing_new(db: asyncpg.Pool, settings_for: Any) -> None:
    worker = _worker(settings_for, db)
    events = _distinct_deliveries(50, seed=3)
    await _apply(worker, db, events)
    assert list(await _apply(worker, db, events)) == []
    assert await _inbox(db) == 50


async def test_the_same_new_event_twice_in_a_batch_is_new_once(
    db: asyncpg.Pool, settings_for: Any
) -> None:
    worker = _worker(settings_for, db)
    events = _distinct_deliveries(10, seed=4)
    new = await _apply(worker, db, events + events[:3])
    assert sorted(new) == sorted(e.event_id for e in events)
    assert await _inbox(db) == 10


def _edge_events() -> list[Event]:
    """Distinct deliveries covering every column's awkward values: texts an array literal
    would need quoted, empty and non-ASCII errors, missing optional values, microsecond
    and non-UTC timestamps, both event types."""
    base = _distinct_deliveries(8, seed=7)
    errors = ['say "hi", {now}', "back\\slash", "", "ünïcödé ✓", "NULL", " padded ", "a,b", "}{"]
    at = datetime(2026, 11, 1, 12, 30, 45, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    events: list[Event] = []
    for i, (event, error) in enumerate(zip(base, errors, strict=True)):
        common = {
            f: getattr(event, f)
            for f in ("event_id", "version", "tenant_id", "occurred_at", "source", "delivery_id")
        }
        common |= {
            "rule_id": None if i % 2 else uuid.uuid4(),
            "channel_id": uuid.uuid4(),
            "channel_type": ("slack", "teams", "email", "webhook")[i % 4],
            "source_event_id": uuid.uuid4(),
            "attempt": i + 1,
            "status_code": None if i % 3 == 0 else 200 + i,
            "latency_ms": None if i % 4 == 1 else 1000 * i,
        }
        when = at + timedelta(days=i, microseconds=i)
        if i % 2:
            events.append(NotificationSent(**common, sent_at=when))  # type: ignore[arg-type]
        else:
            events.append(
                NotificationFailed(**common, failed_at=when, error=error, retryable=i % 4 == 0)  # type: ignore[arg-type]
            )
    return events


async def test_every_column_holds_the_events_values(db: asyncpg.Pool, settings_for: Any) -> None:
    worker = _worker(settings_for, db)
    events = _edge_events()
    # First the all-new statement, then the fallback on an (updated) redelivery.
    await _apply(worker, db, events[:4])
    await _apply(worker, db, events)
    rows = {r["delivery_id"]: r for r in await db.fetch("SELECT * FROM notify.delivery_log")}
    assert len(rows) == len(events)
    for event in events:
        assert isinstance(event, NotificationSent | NotificationFailed)
        row = rows[event.delivery_id]
        sent = isinstance(event, NotificationSent)
        expected = {
            "tenant_id": event.tenant_id,
            "rule_id": event.rule_id,
            "channel_id": event.channel_id,
            "channel_type": event.channel_type,
            "event_id": event.source_event_id,
            "status": "sent" if sent else "failed",
            "attempt": event.attempt,
            "delivered_at": event.sent_at if isinstance(event, NotificationSent) else None,
            "failed_at": event.failed_at if isinstance(event, NotificationFailed) else None,
            "status_code": event.status_code,
            "error": event.error if isinstance(event, NotificationFailed) else None,
            "retryable": event.retryable if isinstance(event, NotificationFailed) else None,
            "latency_ms": event.latency_ms,
            "last_event_id": event.event_id,
        }
        assert {k: row[k] for k in expected} == expected, event


@pytest.mark.parametrize(
    "values",
    [
        [1, None, 0, -7, 2_147_483_647],
        [True, False, None],
        ["slack", "teams", "email", "webhook", None],
        [
            datetime(2026, 11, 1, tzinfo=UTC),
            None,
            datetime(2026, 2, 28, 23, 59, 59, 999_999, tzinfo=UTC),
            datetime(1999, 12, 31, 1, 2, 3, 4, tzinfo=timezone(timedelta(hours=-9, minutes=-30))),
        ],
        [],
    ],
    ids=["int", "bool", "channel-type", "timestamptz", "empty"],
)
async def test_array_literals_read_back_as_the_values(db: asyncpg.Pool, values: list[Any]) -> None:
    kind = {int: "int", bool: "bool", str: "text", datetime: "timestamptz"}
    present = [v for v in values if v is not None]
    cast = kind[type(present[0])] if present else "int"
    read = await db.fetchval(f"SELECT $1::text::{cast}[]", array_literal(values))
    assert read == values


def test_channel_type_names_need_no_quoting_in_an_array_literal() -> None:
    # array_literal sends channel types unquoted: a name with a space, comma, brace,
    # quote or backslash would need the binary path instead.
    for name in get_args(ChannelType):
        assert name.isascii() and name.replace("_", "").replace("-", "").isalnum(), name
