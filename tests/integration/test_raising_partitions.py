"""Raising FLEET_STREAM_PARTITIONS from 1 to 3 as docs/scaling.md describes it, with real
worker processes: nothing is lost, nothing is applied twice, the old key is drained and
retired.

1. A worker with P=1 consumes events published with P=1, then stops; more events are
   published with P=1 meanwhile (a backlog on the old key).
2. The worker restarts with P=3 and FLEET_STREAM_PARTITIONS_PREVIOUS=1: it reads the
   three new keys and the old one. Producers switch to P=3; a late one still publishes
   with P=1.
3. ``fleet partitions status`` exits 0 once the old key is drained; the worker restarts
   without the previous layout and ``fleet partitions retire`` deletes the old key.
4. More events with P=3. Every event is in the inbox exactly once, every delivery in
   the delivery log once, nothing is pending on any key.
"""

from __future__ import annotations

import signal
import subprocess
from typing import Any

import asyncpg

from contracts import Event
from devkit import workload
from tests.helpers import fleet_cli, fleet_process, poll, process_log
from workers.partitions import stream_keys
from workers.publishing import publish

STREAM = "notify:delivery"
GROUP = "notify-workers"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    assert code == 0, process_log(proc)[-2000:]


async def test_raising_partitions_loses_nothing_and_retires_the_old_key(
    real_redis: Any, db: asyncpg.Pool, database_url: str, valkey_url: str
) -> None:
    base = {
        "FLEET_VALKEY_URL": valkey_url,
        "FLEET_DATABASE_URL": database_url,
        "FLEET_HTTP_PORT": "0",
        "FLEET_BLOCK_MS": "100",
        "FLEET_LOG_LEVEL": "warning",
        "FLEET_SHUTDOWN_GRACE_SECONDS": "5",
    }
    before = {**base, "FLEET_STREAM_PARTITIONS": "1"}
    during = {**base, "FLEET_STREAM_PARTITIONS": "3", "FLEET_STREAM_PARTITIONS_PREVIOUS": "1"}
    after = {**base, "FLEET_STREAM_PARTITIONS": "3"}
    batches = [list(workload.notification_events(n, seed=70 + n)) for n in (60, 80, 90, 15, 40)]
    a, b, c, late, e = batches
    published: list[Event] = []

    async def produce(events: list[Event], partitions: int) -> None:
        await publish(real_redis, STREAM, events, partitions=partitions, chunk_size=25)
        published.extend(events)

    async def handled() -> int:
        return int(
            await db.fetchval("SELECT count(*) FROM fleet.inbox WHERE group_name = $1", GROUP)
        )

    def all_handled(count: int) -> Any:
        async def check() -> bool:
            return await handled() == count

        return check

    # 1. P=1: consumed, then a backlog while the worker is down.
    worker = fleet_process(before, "run", "notify-delivery")
    try:
        await produce(a, 1)
        await poll(all_handled(len(a)), what="the P=1 worker to handle the first events")
    finally:
        _stop(worker)
    await produce(b, 1)
    assert int(await real_redis.xlen(STREAM)) == len(a) + len(b)

    # 2. P=3 with the previous layout draining; producers switch, one lags behind.
    worker = fleet_process(during, "run", "notify-delivery")
    try:
        await produce(c, 3)
        await produce(late, 1)
        await poll(all_handled(len(published)), what="every event on the old and new keys")

        async def drained() -> bool:
            return fleet_cli(during, "partitions", "status", "--stream", STREAM).returncode == 0

        await poll(drained, what="fleet partitions status to call the old key drained")
    finally:
        _stop(worker)

    # 3. The previous layout forgotten by the workers, its key retired.
    worker = fleet_process(after, "run", "notify-delivery")
    try:
        retired = fleet_cli(during, "partitions", "retire", "--stream", STREAM)
        assert retired.returncode == 0, retired.stdout.decode() + retired.stderr.decode()
        assert f"{STREAM}: retired" in retired.stdout.decode()
        assert int(await real_redis.exists(STREAM, f"{STREAM}:dlq")) == 0

        # 4. Life goes on with P=3.
        await produce(e, 3)
        await poll(all_handled(len(published)), what="the events published after the change")
    finally:
        _stop(worker)

    rows = await db.fetch("SELECT event_id FROM fleet.inbox WHERE group_name = $1", GROUP)
    got = [r["event_id"] for r in rows]
    assert sorted(got) == sorted(ev.event_id for ev in published)  # none lost, none twice
    deliveries = await db.fetchval("SELECT count(*) FROM notify.delivery_log")
    assert deliveries == len({ev.delivery_id for ev in published})  # type: ignore[attr-defined]
    for key in stream_keys(STREAM, 3):
        if await real_redis.exists(key):
            assert int((await real_redis.xpending(key, GROUP))["pending"]) == 0
    assert int(await real_redis.exists(STREAM)) == 0
