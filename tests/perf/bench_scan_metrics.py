"""scan-metrics throughput beside the bare stream loop, in one run (prints figures, asserts
nothing).

(a) bare loop: XREADGROUP COUNT n + msgspec decode + XACK, nothing else;
(b) the runtime with a no-op handler (no database), for reference;
(c) scan-metrics end to end into PostgreSQL: decode, validate, inbox + one set-based
    statement per batch (scan_metrics and six execution_phases rows per scan), XACK.

Every entry is a ``scan.completed`` with six phases. Each reads the same entries through
its own consumer group on an embedded Valkey and PostgreSQL. Run:
``python tests/perf/bench_scan_metrics.py [--scans N] [--batch N] [--concurrency N]``.
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
    noop_worker,
    through_runtime,
)
from workers import workload
from workers.base import Resources
from workers.db import create_pool
from workers.demo import publish
from workers.logs import configure_logging
from workers.scan_metrics import ScanMetricsWorker

STREAM = "scanner:events"


def completed_scans(total: int) -> list[Event]:
    scans = workload.scan_lifecycles(total, seed=99, failure_rate=0.0, replay_rate=0.0)
    events: list[Event] = []
    for _, outcome in scans:
        assert isinstance(outcome, ScanCompleted) and len(outcome.phases) == 6
        events.append(outcome)
    return events


async def main(total: int, batch: int, concurrency: int) -> None:
    async with bench_stack() as (valkey_url, database_url):
        settings = bench_settings(valkey_url, database_url, batch, concurrency)
        client = aioredis.Redis.from_url(valkey_url, decode_responses=False)
        events = completed_scans(total)
        await publish(client, STREAM, events)
        size = sum(len(e) for e in (msgspec.json.encode(x) for x in events[:100])) / 100
        print(
            f"scan.completed events: {total} (six phases each, ~{size:,.0f} bytes), "
            f"batch: {batch}, concurrency: {concurrency}"
        )

        a = await bare_loop(client, STREAM, total, batch)
        print(f"(a) bare XREADGROUP+decode+XACK loop : {a:>10,.0f} events/s")
        noop_cls = noop_worker(STREAM, ScanMetricsWorker.event_types)
        noop = noop_cls(Resources(settings=settings, redis=client), group="noop")
        b = await through_runtime(noop, client, total)
        print(f"(b) runtime, no-op handler           : {b:>10,.0f} events/s")
        pool = await create_pool(settings, max_size=concurrency + 2)
        worker = ScanMetricsWorker(Resources(settings=settings, redis=client, pool=pool))
        c = await through_runtime(worker, client, total)
        scans = await pool.fetchval("SELECT count(*) FROM scanner.scan_metrics")
        phases = await pool.fetchval("SELECT count(*) FROM scanner.execution_phases")
        await pool.close()
        print(
            f"(c) scan-metrics into PostgreSQL     : {c:>10,.0f} events/s "
            f"({scans} scans, {phases} phases)"
        )
        print(f"ratio b/a = {b / a:.2f}")
        print(f"ratio c/a = {c / a:.2f}   (target >= 0.3)")
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scans", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=3)
    args = parser.parse_args()
    configure_logging("warning", "console")
    asyncio.run(main(args.scans, args.batch, args.concurrency))
