"""The soak (``make soak``, not part of ``make test``): a million notification events
through notify-delivery, one of two consumers restarted every minute (SIGTERM and SIGKILL
in turn), the other's resident memory sampled throughout. Prints the figures; asserts
every effect exactly once, nothing pending, memory flat within ±10% after warm-up, and
no growth of the consumer list.

``FLEET_SOAK_EVENTS`` (unset: skipped), ``FLEET_SOAK_RESTART_SECONDS`` (60),
``FLEET_SOAK_RATE`` (events published per second, 5000).
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from devkit import workload
from devkit.embedded import free_port, start_postgres, start_valkey
from tests.helpers import fleet_process, migrated_database, process_log, server_dir
from workers import streams
from workers.publishing import publish

EVENTS = int(os.environ.get("FLEET_SOAK_EVENTS", "0"))
RESTART_SECONDS = float(os.environ.get("FLEET_SOAK_RESTART_SECONDS", "60"))
RATE = float(os.environ.get("FLEET_SOAK_RATE", "5000"))
STREAM = "notify:delivery"
GROUP = "notify-workers"

pytestmark = pytest.mark.skipif(not EVENTS, reason="the soak runs with `make soak`")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.fixture
def soak_dir() -> Iterator[Path]:
    with server_dir("streamfleet-soak-") as folder:
        yield folder


async def test_soak_a_million_events_with_a_consumer_restarted_every_minute(
    soak_dir: Path,
) -> None:
    folder = soak_dir
    port = free_port()
    valkey = start_valkey(folder / "valkey", port=port)
    pg, pg_url = start_postgres(folder / "pg")
    procs: list[Any] = []
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0", decode_responses=False)
    try:
        db_url = await migrated_database(pg_url, "soak")
        env = {
            "FLEET_VALKEY_URL": f"redis://127.0.0.1:{port}/0",
            "FLEET_DATABASE_URL": db_url,
            "FLEET_HTTP_PORT": "0",
            "FLEET_LOG_LEVEL": "warning",
            "FLEET_RECLAIM_IDLE_SECONDS": "10",
            "FLEET_MAINTENANCE_INTERVAL_SECONDS": "5",
            "FLEET_CONSUMER_PRUNE_IDLE_SECONDS": "30",
        }
        await streams.ensure_group(client, STREAM, GROUP)
        steady = fleet_process(env, "run", "notify-delivery")
        restarted = fleet_process(env, "run", "notify-delivery")
        procs += [steady, restarted]
        started = time.monotonic()
        samples: list[tuple[float, int]] = []
        restarts = 0
        sent = 0
        chunk = 5000
        events = workload.notification_events(EVENTS, seed=91)
        next_restart = started + RESTART_SECONDS
        conn = await asyncpg.connect(db_url)
        try:
            while True:
                if sent < EVENTS:
                    batch = [next(events) for _ in range(min(chunk, EVENTS - sent))]
                    await publish(client, STREAM, batch)
                    sent += len(batch)
                await asyncio.sleep(chunk / RATE)  # the publishing rate, not synchronisation
                now = time.monotonic()
                assert steady.poll() is None, process_log(steady)[-3000:]
                samples.append((now - started, _rss_kib(steady.pid)))
                if now >= next_restart:
                    if restarts % 2:
                        restarted.send_signal(signal.SIGKILL)
                    else:
                        restarted.send_signal(signal.SIGTERM)
                    restarted.wait(timeout=60)
                    restarted = fleet_process(env, "run", "notify-delivery")
                    procs.append(restarted)
                    restarts += 1
                    next_restart = now + RESTART_SECONDS
                if sent >= EVENTS:
                    recorded = int(await conn.fetchval("SELECT count(*) FROM fleet.inbox"))
                    statuses = {s.group: s for s in await streams.group_statuses(client, STREAM)}
                    status = statuses[GROUP]
                    if recorded == EVENTS and not status.pending and not (status.lag or 0):
                        break
                    assert now - started < EVENTS / 1000 + 600, "the soak did not finish"
            took = time.monotonic() - started
            rows = int(await conn.fetchval("SELECT count(*) FROM notify.delivery_log"))
            inbox = int(await conn.fetchval("SELECT count(*) FROM fleet.inbox"))
        finally:
            await conn.close()
        consumers = [c["name"] for c in await client.xinfo_consumers(STREAM, GROUP)]
        dead = int(await client.xlen(f"{STREAM}:dlq"))
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=60) == 0, process_log(proc)[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        await client.aclose()
        valkey.stop()
        pg.cleanup()

    warm = [rss for at, rss in samples if at >= took * 0.25]
    median = statistics.median(warm)
    low, high = min(warm), max(warm)
    print(
        f"\nsoak: {EVENTS:,} events in {took:.0f}s ({EVENTS / took:,.0f}/s), {restarts} restarts, "
        f"consumers {sorted(c.decode() for c in consumers)}, dead letters {dead}\n"
        f"steady consumer RSS after warm-up: median {median / 1024:.1f} MiB, "
        f"min {low / 1024:.1f}, max {high / 1024:.1f} ({len(warm)} samples); "
        f"first sample {samples[0][1] / 1024:.1f} MiB"
    )
    assert rows == EVENTS and inbox == EVENTS
    assert dead == 0
    assert len(consumers) <= 2, consumers
    assert low >= median * 0.9 and high <= median * 1.1, (low, median, high)
