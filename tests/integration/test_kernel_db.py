"""The kernel's guarantees against real PostgreSQL (and fakeredis and real Valkey):
per-batch results, bounded retries on a locked row, and database rejections."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, ClassVar

import asyncpg
import msgspec

from contracts.concelier import AdvisoryNew, AdvisoryUpdated
from contracts.notify import NotificationFailed, NotificationSent
from contracts.scanner import ScanCompleted, ScannerEvent
from contracts.wire import decode_event
from devkit import workload
from tests.helpers import metric, poll, resources, running
from tests.integration.test_vex_worker import ALIAS, VULN, A, B, C, advisory, seed
from workers import streams
from workers.db import create_pool
from workers.kernel import PgInbox, Tx
from workers.notify_delivery import NotifyDeliveryWorker
from workers.publishing import publish
from workers.scan_metrics import ScanMetricsWorker
from workers.vex_consensus import VexConsensusWorker
from workers.vex_consensus.service import RecomputeReport
from workers.vex_consensus.store import lock_bucket
from workers.vex_consensus.worker import advisory_pairs

Advisory = AdvisoryNew | AdvisoryUpdated


async def _settled(redis: Any, stream: str) -> bool:
    for status in await streams.group_statuses(redis, stream):
        if status.pending or (status.lag or 0):
            return False
    return True


class GatedVex(VexConsensusWorker):
    """Holds every batch after its recompute until two batches are in flight at once."""

    gate: ClassVar[asyncio.Barrier]
    seen: ClassVar[list[tuple[list[Advisory], RecomputeReport]]] = []

    async def apply(self, tx: Tx, fresh: Sequence[Advisory]) -> RecomputeReport:
        report = await super().apply(tx, fresh)
        await asyncio.wait_for(self.gate.wait(), timeout=10)
        return report

    async def after_commit(self, fresh: Sequence[Advisory], result: RecomputeReport) -> None:
        self.seen.append((list(fresh), result))
        await super().after_commit(fresh, result)


async def test_two_vex_batches_in_flight_each_see_their_own_result(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    await seed(db)
    GatedVex.gate = asyncio.Barrier(2)
    GatedVex.seen = []
    worker = GatedVex(resources(settings_for(batch_size=1, concurrency=2), redis, db))
    # Other vulnerabilities, so neither recompute waits for the other's lock.
    other = next(
        f"CVE-2099-{n:04d}"
        for n in range(100)
        if lock_bucket(f"CVE-2099-{n:04d}") not in {lock_bucket(VULN), lock_bucket(ALIAS)}
    )
    one = msgspec.structs.replace(advisory([C], aliases=()), advisory_id=other)  # 1 pair
    four = advisory([A, B], aliases=(ALIAS,))  # 4 pairs
    async with running(worker):
        await publish(redis, "concelier:drift", [one, four])
        await poll(lambda: _settled(redis, "concelier:drift"), what="both advisories handled")
    assert sorted(len(fresh) for fresh, _ in GatedVex.seen) == [1, 1]
    for fresh, report in GatedVex.seen:
        assert report.pairs == len(advisory_pairs(fresh)), "another batch's result"
    assert sorted(report.pairs for _, report in GatedVex.seen) == [1, 4]


async def test_a_statement_blocked_by_a_row_lock_is_dead_lettered_while_others_flow(
    redis: Any, db: asyncpg.Pool, settings_for: Any, database_url: str
) -> None:
    settings = settings_for(
        batch_size=50,
        max_deliveries=3,
        reclaim_idle_seconds=0.5,
        retry_budget_seconds=0.5,
        db_statement_timeout_ms=300,
    )
    pool = await create_pool(settings, max_size=4)
    events = [e for e in workload.notification_events(41, seed=31) if e is not None]
    first, blocked = events[0], events[1]
    assert isinstance(first, NotificationSent | NotificationFailed)
    assert isinstance(blocked, NotificationSent | NotificationFailed)
    # A later attempt of the first event's delivery: its upsert must wait for the row lock.
    blocked = msgspec.structs.replace(blocked, delivery_id=first.delivery_id, attempt=2)
    others = events[2:]
    locker = await asyncpg.connect(database_url)
    try:
        worker = NotifyDeliveryWorker(resources(settings, redis, pool))
        async with running(worker, inbox=PgInbox(pool)):
            await publish(redis, "notify:delivery", [first])
            await poll(lambda: _count(db, 1), what="the first delivery recorded")
            lock = locker.transaction()
            await lock.start()
            await locker.execute(
                "SELECT 1 FROM notify.delivery_log WHERE delivery_id = $1 FOR UPDATE",
                first.delivery_id,
            )
            await publish(redis, "notify:delivery", [*others[:20], blocked, *others[20:30]])
            await poll(lambda: _count(db, 31), timeout=60, what="the others recorded")
            await poll(lambda: _dlq(redis, 1), timeout=60, what="the blocked event dead-lettered")
            # The lock is still held: the stream keeps flowing.
            await publish(redis, "notify:delivery", others[30:])
            await poll(lambda: _count(db, 40), timeout=60, what="later events recorded")
            await lock.rollback()
    finally:
        await locker.close()
        await pool.close()
    (dead,) = await streams.dlq_entries(redis, "notify:delivery")
    assert dead.reason == "max_deliveries"
    assert int(dead.fields["dlq.deliveries"]) == 3
    assert b"statement timeout" in dead.fields["dlq.error"]
    # The entry as published: the event itself, with the traceparent publish stamped.
    kept = decode_event(dead.fields)
    assert kept.traceparent is not None
    assert msgspec.structs.replace(kept, traceparent=None) == blocked


async def _count(db: asyncpg.Pool, n: int) -> bool:
    return int(await db.fetchval("SELECT count(*) FROM notify.delivery_log")) == n


async def _dlq(redis: Any, n: int, stream: str = "notify:delivery") -> bool:
    return int(await redis.xlen(f"{stream}:dlq")) == n


class Unchecked(ScanMetricsWorker):
    """scan-metrics with its semantic checks off: the schema's CHECKs are the last line."""

    def validate(self, event: ScannerEvent) -> str | None:
        return None


async def test_an_event_violating_a_schema_check_is_dead_lettered_on_its_first_delivery(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    scans = workload.scan_lifecycles(12, seed=41, failure_rate=0.0, replay_rate=0.0)
    completed = [outcome for _, outcome in scans]
    bad = completed[5]
    assert isinstance(bad, ScanCompleted)
    # A phase that finishes before it starts: CHECK (finished_at >= started_at).
    phase = bad.phases[0]
    backwards = msgspec.structs.replace(phase, finished_at=phase.started_at - timedelta(seconds=1))
    bad = msgspec.structs.replace(bad, phases=[backwards, *bad.phases[1:]])
    completed[5] = bad
    before = metric(
        "fleet_dead_letters_total",
        stream="scanner:events",
        group="scan-metrics",
        reason="rejected_by_database",
    )
    worker = Unchecked(resources(settings_for(batch_size=20, reclaim_idle_seconds=60), redis, db))
    async with running(worker):
        await publish(redis, "scanner:events", completed)
        await poll(lambda: _settled(redis, "scanner:events"), what="the batch settled")
    (dead,) = await streams.dlq_entries(redis, "scanner:events")
    assert dead.reason == "rejected_by_database"
    assert dead.fields["dlq.deliveries"] == b"1"
    assert b"SQLSTATE 23514" in dead.fields["dlq.error"]
    assert uuid.UUID(msgspec.json.decode(dead.fields["data"])["eventId"]) == bad.event_id
    recorded = await db.fetchval("SELECT count(*) FROM scanner.scan_metrics")
    assert recorded == 11
    after = metric(
        "fleet_dead_letters_total",
        stream="scanner:events",
        group="scan-metrics",
        reason="rejected_by_database",
    )
    assert after - before == 1
