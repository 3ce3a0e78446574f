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
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import msgspec
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from contracts import Event
from contracts.scanner import ScanCompleted
from workers import streams, workload
from workers.base import Resources, Worker
from workers.db import DbConn, create_pool, load_migrations, migrate, schema_dir
from workers.demo import publish
from workers.embedded import start_postgres, start_valkey
from workers.logs import configure_logging
from workers.runtime import StreamConsumer
from workers.scan_metrics import ScanMetricsWorker
from workers.settings import load_settings

STREAM = "scanner:events"


class NoOp(Worker):
    name: ClassVar[str] = "noop"
    stream: ClassVar[str] = STREAM
    event_types: ClassVar[tuple[type[Event], ...]] = ScanMetricsWorker.event_types
    uses_database: ClassVar[bool] = False

    async def apply(self, conn: DbConn | None, events: Sequence[Event]) -> None:
        return None


async def bare_loop(client: Any, total: int, batch: int) -> float:
    await streams.ensure_group(client, STREAM, "bare")
    decoder = msgspec.json.Decoder()
    seen = 0
    started = time.perf_counter()
    while seen < total:
        reply = await client.xreadgroup("bare", "b1", {STREAM: ">"}, count=batch, block=1000)
        if not reply:
            continue
        entries = reply[0][1]
        for _, fields in entries:
            decoder.decode(fields[b"data"])
        await client.xack(STREAM, "bare", *[e[0] for e in entries])
        seen += len(entries)
    return total / (time.perf_counter() - started)


async def through_runtime(worker: Worker, group: str, client: Any, total: int) -> float:
    await streams.ensure_group(client, STREAM, group)
    consumer = StreamConsumer(worker, "r1")
    started = time.perf_counter()
    task = asyncio.create_task(consumer.run())
    while True:
        info = {g["name"]: g for g in await client.xinfo_groups(STREAM)}[group.encode()]
        if int(info["entries-read"] or 0) >= total and int(info["pending"]) == 0:
            break
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    consumer.stop()
    await task
    return total / elapsed


def completed_scans(total: int) -> list[Event]:
    scans = workload.scan_lifecycles(total, seed=99, failure_rate=0.0, replay_rate=0.0)
    events: list[Event] = []
    for _, outcome in scans:
        assert isinstance(outcome, ScanCompleted) and len(outcome.phases) == 6
        events.append(outcome)
    return events


async def main(folder: Path, total: int, batch: int, concurrency: int) -> None:
    valkey = start_valkey(folder / "valkey", appendfsync="no")
    pg, pg_url = start_postgres(folder / "pg")
    try:
        conn = await asyncpg.connect(pg_url)
        await conn.execute("DROP DATABASE IF EXISTS bench")
        await conn.execute("CREATE DATABASE bench")
        await conn.close()
        url = pg_url.replace("/postgres?", "/bench?")
        conn = await asyncpg.connect(url)
        await migrate(conn, load_migrations(schema_dir()))
        await conn.close()
        settings = load_settings(
            {},
            valkey_url=valkey.connection_url,
            database_url=url,
            batch_size=batch,
            block_ms=100,
            http_port=0,
            maintenance_interval_seconds=60,
            concurrency=concurrency,
        )
        client = aioredis.Redis.from_url(valkey.connection_url, decode_responses=False)
        events = completed_scans(total)
        await publish(client, STREAM, events)
        size = sum(len(e) for e in (msgspec.json.encode(x) for x in events[:100])) / 100
        print(
            f"scan.completed events: {total} (six phases each, ~{size:,.0f} bytes), "
            f"batch: {batch}, concurrency: {concurrency}"
        )

        a = await bare_loop(client, total, batch)
        print(f"(a) bare XREADGROUP+decode+XACK loop : {a:>10,.0f} events/s")
        noop = NoOp(Resources(settings=settings, redis=client, pool=None), group="noop")
        b = await through_runtime(noop, "noop", client, total)
        print(f"(b) runtime, no-op handler           : {b:>10,.0f} events/s")
        pool = await create_pool(settings, max_size=concurrency + 2)
        worker = ScanMetricsWorker(Resources(settings=settings, redis=client, pool=pool))
        c = await through_runtime(worker, "scan-metrics", client, total)
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
    finally:
        valkey.stop()
        pg.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scans", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=3)
    args = parser.parse_args()
    # PostgreSQL runs as an unprivileged user when this runs as root: a world-readable folder.
    configure_logging("warning", "console")
    work = Path(tempfile.mkdtemp(prefix="streamfleet-bench-"))
    work.chmod(0o755)
    asyncio.run(main(work, args.scans, args.batch, args.concurrency))
