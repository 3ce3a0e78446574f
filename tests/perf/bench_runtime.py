"""Runtime throughput on one stream, three ways, in one run (prints figures, asserts nothing).

(a) bare loop: XREADGROUP COUNT n + msgspec decode + XACK, nothing else;
(b) the runtime with a no-op handler (no database);
(c) notify-delivery end to end into PostgreSQL (inbox + delivery_log, one statement a batch).

Each reads the same entries through its own consumer group. Run:
``python tests/perf/bench_runtime.py [--events N] [--batch N] [--concurrency N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.perf.harness import (
    bare_loop,
    bench_settings,
    bench_stack,
    noop_worker,
    through_runtime,
)
from workers import workload
from workers.base import Resources
from workers.db import create_pool
from workers.demo import publish
from workers.notify_delivery import NotifyDeliveryWorker

STREAM = "notify:delivery"


async def main(total: int, batch: int, concurrency: int) -> None:
    async with bench_stack() as (valkey_url, database_url):
        settings = bench_settings(valkey_url, database_url, batch, concurrency)
        client = aioredis.Redis.from_url(valkey_url, decode_responses=False)
        await publish(client, STREAM, workload.notification_events(total, seed=99))
        print(f"events: {total}, batch: {batch}, concurrency: {concurrency}")

        a = await bare_loop(client, STREAM, total, batch)
        print(f"(a) bare XREADGROUP+decode+XACK loop : {a:>10,.0f} events/s")
        noop_cls = noop_worker(STREAM, NotifyDeliveryWorker.event_types)
        noop = noop_cls(Resources(settings=settings, redis=client), group="noop")
        b = await through_runtime(noop, client, total)
        print(f"(b) runtime, no-op handler           : {b:>10,.0f} events/s")
        pool = await create_pool(settings, max_size=concurrency + 2)
        notify = NotifyDeliveryWorker(Resources(settings=settings, redis=client, pool=pool))
        c = await through_runtime(notify, client, total)
        rows = await pool.fetchval("SELECT count(*) FROM notify.delivery_log")
        await pool.close()
        print(f"(c) notify-delivery into PostgreSQL  : {c:>10,.0f} events/s ({rows} rows)")
        print(f"ratio b/a = {b / a:.2f}   (target >= 0.8)")
        print(f"ratio c/a = {c / a:.2f}   (target >= 0.35)")
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.batch, args.concurrency))
