"""Runtime throughput on one stream, three ways, in one run (prints figures, asserts nothing).

(a) bare loop: XREADGROUP COUNT n + msgspec decode + XACK, nothing else;
(b) the runtime with a no-op handler (no database);
(c) notify-delivery end to end into PostgreSQL (inbox + delivery_log, one transaction a batch).

Each reads the same entries through its own consumer group. Run:
``python tests/perf/bench_runtime.py [--events N] [--batch N]``.
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
from workers import streams, workload
from workers.base import Resources, Worker
from workers.db import DbConn, create_pool, load_migrations, migrate, schema_dir
from workers.demo import publish
from workers.embedded import start_postgres, start_valkey
from workers.notify_delivery import NotifyDeliveryWorker
from workers.runtime import StreamConsumer
from workers.settings import load_settings

STREAM = "notify:delivery"


class NoOp(Worker):
    name: ClassVar[str] = "noop"
    stream: ClassVar[str] = STREAM
    event_types: ClassVar[tuple[type[Event], ...]] = NotifyDeliveryWorker.event_types
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
        await publish(client, STREAM, workload.notification_events(total, seed=99))
        print(f"events: {total}, batch: {batch}, concurrency: {concurrency}")

        a = await bare_loop(client, total, batch)
        print(f"(a) bare XREADGROUP+decode+XACK loop : {a:>10,.0f} events/s")
        noop = NoOp(Resources(settings=settings, redis=client, pool=None), group="noop")
        b = await through_runtime(noop, "noop", client, total)
        print(f"(b) runtime, no-op handler           : {b:>10,.0f} events/s")
        pool = await create_pool(settings, max_size=6)
        notify = NotifyDeliveryWorker(Resources(settings=settings, redis=client, pool=pool))
        c = await through_runtime(notify, "notify-workers", client, total)
        rows = await pool.fetchval("SELECT count(*) FROM notify.delivery_log")
        await pool.close()
        print(f"(c) notify-delivery into PostgreSQL  : {c:>10,.0f} events/s ({rows} rows)")
        print(f"ratio b/a = {b / a:.2f}   (target >= 0.8)")
        print(f"ratio c/a = {c / a:.2f}   (target >= 0.35)")
        await client.aclose()
    finally:
        valkey.stop()
        pg.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=3)
    args = parser.parse_args()
    # PostgreSQL runs as an unprivileged user when this runs as root: a world-readable folder.
    work = Path(tempfile.mkdtemp(prefix="streamfleet-bench-"))
    work.chmod(0o755)
    asyncio.run(main(work, args.events, args.batch, args.concurrency))
