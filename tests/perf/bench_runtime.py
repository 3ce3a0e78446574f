"""Runtime throughput on one stream, three ways, in one run (prints figures, asserts nothing).

(a) bare loop: XREADGROUP COUNT n + msgspec decode + XACK, nothing else;
(b) the runtime with a no-op handler (no database);
(c) notify-delivery end to end into PostgreSQL (inbox + delivery_log, one statement a batch).

Each round publishes a fresh workload and reads it through one consumer group per
contender; the figures are medians over the rounds (see ``harness.rounds``). Run:
``python tests/perf/bench_runtime.py [--events N] [--batch N] [--concurrency N] [--rounds N]``.
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
    fleet_process,
    median,
    noop_worker,
    rounds,
    through_runtime,
    untuned_process,
)
from workers import streams, workload
from workers.base import Resources
from workers.db import create_pool
from workers.demo import publish
from workers.logs import configure_logging
from workers.notify_delivery import NotifyDeliveryWorker

TUNED = "a'"
STREAM = "notify:delivery"


async def main(total: int, batch: int, concurrency: int, count: int) -> None:
    async with bench_stack() as (valkey_url, database_url):
        settings = bench_settings(valkey_url, database_url, batch, concurrency)
        # The baseline reads with redis-py as it comes; the workers with the client
        # ``fleet run`` opens (streams.connect).
        client = aioredis.Redis.from_url(valkey_url, decode_responses=False)
        fleet_client = streams.connect(settings)
        pool = await create_pool(settings, max_size=concurrency + 2)
        resources = Resources(settings=settings, redis=fleet_client, pool=pool)
        noop_cls = noop_worker(STREAM, NotifyDeliveryWorker.event_types)
        print(f"events: {total} a round, batch: {batch}, concurrency: {concurrency}")

        async def measure(index: int) -> dict[str, float]:
            await client.delete(STREAM)
            await publish(client, STREAM, workload.notification_events(total, seed=99 + index))
            untuned_process()
            a = await bare_loop(client, STREAM, total, batch, group=f"bare-{index}")
            fleet_process()
            a_tuned = await bare_loop(client, STREAM, total, batch, group=f"tuned-{index}")
            noop = noop_cls(Resources(settings=settings, redis=fleet_client), group=f"noop-{index}")
            b = await through_runtime(noop, client, total)
            notify = NotifyDeliveryWorker(resources, group=f"notify-{index}")
            c = await through_runtime(notify, client, total)
            return {"a": a, TUNED: a_tuned, "b": b, "c": c}

        figures = await rounds(count, measure)
        rows = await pool.fetchval("SELECT count(*) FROM notify.delivery_log")
        await pool.close()
        await client.aclose()
        await fleet_client.aclose()
        print(f"medians over {count} rounds ({rows} delivery_log rows written):")
        print(f"(a) bare XREADGROUP+decode+XACK loop : {median(figures['a']):>10,.0f} events/s")
        print(f"(a') the same loop, process tuned   : {median(figures[TUNED]):>10,.0f} events/s")
        print(f"(b) runtime, no-op handler           : {median(figures['b']):>10,.0f} events/s")
        print(f"(c) notify-delivery into PostgreSQL  : {median(figures['c']):>10,.0f} events/s")
        print(f"ratio b/a = {median(figures['b/a']):.2f}   (target >= 0.8)")
        print(f"ratio c/a = {median(figures['c/a']):.2f}   (target >= 0.35)")
        b_tuned, c_tuned = median(figures["b/tuned"]), median(figures["c/tuned"])
        print(f"against (a'): b/a' = {b_tuned:.2f}, c/a' = {c_tuned:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    # Per-batch info lines as in production, rendered as JSON to /dev/null-like sinks
    # would be cheaper than a console; warnings only keep the figures readable.
    configure_logging("warning", "json")
    asyncio.run(main(args.events, args.batch, args.concurrency, args.rounds))
