"""A PostgreSQL outage in the middle of a run: worker processes wait it out, keep their
claims, and resume; nothing is dead-lettered, lost or applied twice.

Two notify-delivery workers share the main workload; an export worker (S3 up, its
database down) takes export requests published before and during the outage, and
announces each outcome once afterwards.

The outage lasts ``FLEET_OUTAGE_SECONDS`` (12 by default; ``make chaos`` runs 60), six
times the reclaim idle time of 2 s and longer than the retry budget and several delivery
limits put together: a consumer that gave entries up, or let their claims lapse, would
show up as dead letters or reclaims."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from contracts.exports import ExportCompleted, ExportProfile
from contracts.wire import decode_event
from devkit import workload
from devkit.demo_exports import export_key
from devkit.embedded import start_postgres
from tests.helpers import fleet_process, migrated_database, poll, process_log, server_dir
from workers import streams
from workers.publishing import publish

OUTAGE_SECONDS = float(os.environ.get("FLEET_OUTAGE_SECONDS", "12"))
STREAM = "notify:delivery"
GROUP = "notify-workers"
EXPORTS = "export:requests"
EXPORT_GROUP = "export-workers"


@pytest.fixture
def own_postgres() -> Iterator[Any]:
    """A PostgreSQL of this test's own, since the test stops it."""
    with server_dir("streamfleet-outage-") as folder:
        server, _ = start_postgres(folder / "pg")
        yield server
        server.cleanup()


def _stop(pg: Any) -> None:
    from pgserver import _commands

    _commands.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=pg.pgdata, user=pg.system_user)


async def _settled(redis: Any) -> bool:
    for stream in (STREAM, EXPORTS):
        for status in await streams.group_statuses(redis, stream):
            if status.pending or (status.lag or 0):
                return False
    return True


@pytest.mark.slow
async def test_a_postgres_outage_dead_letters_nothing_and_loses_nothing(
    real_redis: Any, valkey_url: str, own_postgres: Any, s3_url: str, tmp_path: Path
) -> None:
    db_url = await migrated_database(own_postgres.get_uri(), "outage")
    env = {
        "FLEET_VALKEY_URL": valkey_url,
        "FLEET_DATABASE_URL": db_url,
        "FLEET_HTTP_PORT": "0",
        "FLEET_BATCH_SIZE": "200",
        "FLEET_BLOCK_MS": "100",
        "FLEET_RECLAIM_IDLE_SECONDS": "2",
        "FLEET_RECLAIM_INTERVAL_SECONDS": "0.3",
        "FLEET_MAX_DELIVERIES": "2",
        "FLEET_LOG_LEVEL": "warning",
    }
    events = list(workload.notification_events(12_000, seed=51))
    chunks = [events[i : i + 500] for i in range(0, len(events), 500)]
    profiles: tuple[ExportProfile, ...] = ("scan-metrics", "snapshots", "vex")
    requests = [workload.export_request(p, source="outage-test") for p in profiles * 4]
    key_file = export_key(tmp_path)
    await streams.ensure_group(real_redis, STREAM, GROUP)
    await streams.ensure_group(real_redis, EXPORTS, EXPORT_GROUP)
    procs = [fleet_process({**env, "FLEET_CONSUMER_NAME": f"w{i}"}, "run", "notify-delivery")
             for i in range(2)]  # fmt: skip
    exporter_env = {
        **env,
        "FLEET_CONSUMER_NAME": "x0",
        "FLEET_S3_ENDPOINT_URL": s3_url,
        "FLEET_EXPORT_KEY_FILE": str(key_file),
        "FLEET_MAINTENANCE_INTERVAL_SECONDS": "1",
    }
    procs.append(fleet_process(exporter_env, "run", "export"))
    db = await asyncpg.connect(db_url)
    try:
        await publish(real_redis, STREAM, chunks[0])

        async def started() -> bool:
            return int(await db.fetchval("SELECT count(*) FROM notify.delivery_log")) > 0

        await poll(started, timeout=60, what="the first rows")

        async def both_running() -> bool:
            # Each registers its consumer once started: the outage is meant to hit running
            # workers, not one still starting up.
            names = {c["name"] for c in await real_redis.xinfo_consumers(STREAM, GROUP)}
            return {b"w0", b"w1"} <= names

        await poll(both_running, timeout=60, what="both workers running")

        async def exporter_running() -> bool:
            names = {c["name"] for c in await real_redis.xinfo_consumers(EXPORTS, EXPORT_GROUP)}
            return b"x0" in names

        await poll(exporter_running, timeout=60, what="the export worker running")
        await db.close()
        _stop(own_postgres)
        # Publishing goes on for the whole outage: the workers read, hold and wait.
        outage_ends = time.monotonic() + OUTAGE_SECONDS
        sent = 1
        exported = 0
        while time.monotonic() < outage_ends:
            if sent < len(chunks) // 2:
                await publish(real_redis, STREAM, chunks[sent])
                sent += 1
            if exported < len(requests):
                await publish(real_redis, EXPORTS, [requests[exported]])
                exported += 1
            await asyncio.sleep(1.0)  # paces the publishing over the outage; no synchronisation
        own_postgres.ensure_postgres_running()
        for chunk in chunks[sent:]:
            await publish(real_redis, STREAM, chunk)
        await publish(real_redis, EXPORTS, requests[exported:])
        await poll(lambda: _settled(real_redis), timeout=180, what="everything handled")

        async def announced() -> bool:
            return int(await real_redis.xlen("export:events")) >= len(requests)

        await poll(announced, timeout=60, what="every export outcome announced")
        for proc in procs:
            assert proc.poll() is None, process_log(proc)[-3000:]
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(timeout=60) == 0, process_log(proc)[-3000:]
        db = await asyncpg.connect(db_url)
        rows = await db.fetch("SELECT last_event_id FROM notify.delivery_log")
        inbox = int(await db.fetchval("SELECT count(*) FROM fleet.inbox"))
        jobs = await db.fetch("SELECT status, published_at FROM export.jobs")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        await db.close()
    assert {r[0] for r in rows} == {e.event_id for e in events}, "lost events"
    assert inbox == len(events) + len(requests), "events applied twice or not at all"
    assert await real_redis.xlen(f"{STREAM}:dlq") == 0
    assert await real_redis.xlen(f"{EXPORTS}:dlq") == 0
    assert [j["status"] for j in jobs] == ["completed"] * len(requests)
    assert all(j["published_at"] is not None for j in jobs)
    outcomes = [decode_event(f) for _, f in await real_redis.xrange("export:events")]
    assert all(isinstance(o, ExportCompleted) for o in outcomes), outcomes
    announced_ids = sorted(o.export_id for o in outcomes if isinstance(o, ExportCompleted))
    assert announced_ids == sorted(r.event_id for r in requests), "an outcome lost or repeated"
    logs = "".join(process_log(p) for p in procs)
    assert "dead_lettered" not in logs
