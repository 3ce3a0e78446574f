"""scan-metrics throughput beside the bare stream loop, in one run (prints figures, asserts
nothing).

(a) bare loop: XREADGROUP COUNT n + msgspec decode + XACK, nothing else (the foundation
    benchmark's loop, on these entries);
(b) the runtime with a no-op handler (no database), for reference;
(c) scan-metrics end to end into PostgreSQL: decode, validate, inbox + one set-based
    statement per batch (scan_metrics and six execution_phases rows per scan), XACK.

Every entry is a ``scan.completed`` with six phases. Each round publishes fresh scans and
reads them through one consumer group per contender on an embedded Valkey and
PostgreSQL; the figures are medians over the rounds (see ``harness.rounds``). Run:
``python tests/perf/bench_scan_metrics.py [--scans N] [--batch N] [--concurrency N]
[--rounds N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import msgspec
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from contracts import Event
from contracts.scanner import ScanCompleted
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
from workers.scan_metrics import ScanMetricsWorker

TUNED = "a'"
STREAM = "scanner:events"


def completed_scans(total: int, seed: int) -> list[Event]:
    scans = workload.scan_lifecycles(total, seed=seed, failure_rate=0.0, replay_rate=0.0)
    events: list[Event] = []
    for _, outcome in scans:
        assert isinstance(outcome, ScanCompleted) and len(outcome.phases) == 6
        events.append(outcome)
    return events


async def main(total: int, batch: int, concurrency: int, count: int) -> None:
    async with bench_stack() as (valkey_url, database_url):
        settings = bench_settings(valkey_url, database_url, batch, concurrency)
        # The baseline reads with redis-py as it comes; the workers with the client
        # ``fleet run`` opens (streams.connect).
        client = aioredis.Redis.from_url(valkey_url, decode_responses=False)
        fleet_client = streams.connect(settings)
        pool = await create_pool(settings, max_size=concurrency + 2)
        resources = Resources(settings=settings, redis=fleet_client, pool=pool)
        noop_cls = noop_worker(STREAM, ScanMetricsWorker.event_types)
        sample = completed_scans(100, seed=1)
        size = sum(len(msgspec.json.encode(e)) for e in sample) / len(sample)
        print(
            f"scan.completed events: {total} a round (six phases each, ~{size:,.0f} bytes), "
            f"batch: {batch}, concurrency: {concurrency}"
        )

        async def measure(index: int) -> dict[str, float]:
            await client.delete(STREAM)
            await publish(client, STREAM, completed_scans(total, seed=99 + index))
            untuned_process()
            a = await bare_loop(client, STREAM, total, batch, group=f"bare-{index}")
            fleet_process()
            a_tuned = await bare_loop(client, STREAM, total, batch, group=f"tuned-{index}")
            noop = noop_cls(Resources(settings=settings, redis=fleet_client), group=f"noop-{index}")
            b = await through_runtime(noop, client, total)
            worker = ScanMetricsWorker(resources, group=f"scan-{index}")
            c = await through_runtime(worker, client, total)
            return {"a": a, TUNED: a_tuned, "b": b, "c": c}

        figures = await rounds(count, measure)
        scans = await pool.fetchval("SELECT count(*) FROM scanner.scan_metrics")
        phases = await pool.fetchval("SELECT count(*) FROM scanner.execution_phases")
        await pool.close()
        await client.aclose()
        await fleet_client.aclose()
        print(f"medians over {count} rounds ({scans} scans, {phases} phases written):")
        print(f"(a) bare XREADGROUP+decode+XACK loop : {median(figures['a']):>10,.0f} events/s")
        print(f"(a') the same loop, process tuned   : {median(figures[TUNED]):>10,.0f} events/s")
        print(f"(b) runtime, no-op handler           : {median(figures['b']):>10,.0f} events/s")
        print(f"(c) scan-metrics into PostgreSQL     : {median(figures['c']):>10,.0f} events/s")
        print(f"ratio b/a = {median(figures['b/a']):.2f}")
        print(f"ratio c/a = {median(figures['c/a']):.2f}   (target >= 0.3)")
        b_tuned, c_tuned = median(figures["b/tuned"]), median(figures["c/tuned"])
        print(f"against (a'): b/a' = {b_tuned:.2f}, c/a' = {c_tuned:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scans", type=int, default=30_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    configure_logging("warning", "json")
    asyncio.run(main(args.scans, args.batch, args.concurrency, args.rounds))
