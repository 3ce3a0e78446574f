"""Shared pieces of the benchmarks: a private embedded stack, the bare baseline loop,
timing a worker through the runtime, and rounds that interleave them.

Benchmarks print figures and assert nothing. Two cores are shared by Valkey, PostgreSQL
and the worker, and a run's figures swing by a third from one minute to the next, so
every benchmark runs several rounds, each measuring the baseline and the contenders
back to back on a fresh stream, and reports the median of the per-round ratios.

The baseline (a) is a hand-rolled loop: redis-py as it comes, CPython's collector
settings. The runtime runs as ``fleet run`` runs it (``tune_gc``, hiredis command
packing). The same loop in the tuned process is printed beside it as (a'), so the share
of the difference that is process tuning rather than the runtime's design stays visible."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from contracts import Event
from workers import streams
from workers.base import Worker
from workers.db import DbConn, load_migrations, migrate, schema_dir
from workers.embedded import start_postgres, start_valkey
from workers.runtime import StreamConsumer, tune_gc
from workers.settings import Settings, load_settings


@contextlib.asynccontextmanager
async def bench_stack() -> AsyncIterator[tuple[str, str]]:
    """Embedded Valkey (no fsync) and PostgreSQL with a migrated ``bench`` database:
    yields (valkey_url, database_url) and removes everything afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="streamfleet-bench-"))
    # PostgreSQL runs as an unprivileged user when this runs as root.
    os.chmod(folder, 0o755)
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
        yield valkey.connection_url, url
    finally:
        valkey.stop()
        pg.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def bench_settings(valkey_url: str, database_url: str, batch: int, concurrency: int) -> Settings:
    """The settings every benchmark runs the runtime with (no HTTP, rare maintenance)."""
    return load_settings(
        {},
        valkey_url=valkey_url,
        database_url=database_url,
        batch_size=batch,
        block_ms=100,
        http_port=0,
        maintenance_interval_seconds=60,
        concurrency=concurrency,
    )


def noop_worker(stream: str, types: tuple[type[Event], ...]) -> type[Worker]:
    """A worker class for ``stream`` whose handler does nothing and uses no database."""

    class NoOp(Worker):
        name: ClassVar[str] = "noop"
        event_types: ClassVar[tuple[type[Event], ...]] = types
        uses_database: ClassVar[bool] = False

        async def apply(self, conn: DbConn | None, events: Sequence[Event]) -> None:
            return None

    NoOp.stream = stream
    return NoOp


async def bare_loop(client: Any, stream: str, total: int, batch: int, group: str = "bare") -> float:
    """(a) ``XREADGROUP COUNT batch`` + msgspec decode + ``XACK``: events/s."""
    await streams.ensure_group(client, stream, group)
    decoder = msgspec.json.Decoder()
    seen = 0
    started = time.perf_counter()
    while seen < total:
        reply = await client.xreadgroup(group, "b1", {stream: ">"}, count=batch, block=1000)
        if not reply:
            continue
        entries = reply[0][1]
        for _, fields in entries:
            decoder.decode(fields[b"data"])
        await client.xack(stream, group, *[e[0] for e in entries])
        seen += len(entries)
    return total / (time.perf_counter() - started)


async def through_runtime(worker: Worker, client: Any, total: int) -> float:
    """Run ``worker`` as one consumer until its group read and acknowledged ``total``."""
    await streams.ensure_group(client, worker.stream, worker.group)
    consumer = StreamConsumer(worker, "r1")
    started = time.perf_counter()
    task = asyncio.create_task(consumer.run())
    while True:
        groups = await client.xinfo_groups(worker.stream)
        info = {g["name"]: g for g in groups}[worker.group.encode()]
        if int(info["entries-read"] or 0) >= total and int(info["pending"]) == 0:
            break
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    consumer.stop()
    await task
    return total / elapsed


Measure = Callable[[int], Awaitable[dict[str, float]]]
"""One round: given the round number, run every contender on a fresh stream and return
events/s by name (the baseline under ``"a"``)."""

_CPYTHON_GC = gc.get_threshold()


def untuned_process() -> None:
    """The interpreter as a hand-rolled loop runs it: CPython's collector settings."""
    gc.unfreeze()
    gc.set_threshold(*_CPYTHON_GC)


def fleet_process() -> None:
    """The interpreter as ``fleet run`` sets it up (``tune_gc``)."""
    tune_gc()


async def rounds(count: int, measure: Measure) -> dict[str, list[float]]:
    """Run ``count`` rounds, printing each, then return every figure and every ratio to
    the baseline ``"a"`` computed within its round, by name."""
    figures: dict[str, list[float]] = {}
    for index in range(count):
        result = await measure(index)
        line = "  ".join(f"({k}) {v:>9,.0f}/s" for k, v in result.items())
        ratios = "  ".join(f"{k}/a {v / result['a']:.2f}" for k, v in result.items() if k != "a")
        print(f"round {index + 1}: {line}   {ratios}", flush=True)
        tuned = result.get("a'")
        for key, value in result.items():
            figures.setdefault(key, []).append(value)
            if key != "a":
                figures.setdefault(f"{key}/a", []).append(value / result["a"])
            if tuned and key not in ("a", "a'"):
                figures.setdefault(f"{key}/tuned", []).append(value / tuned)
    return figures


def median(values: list[float]) -> float:
    return statistics.median(values)
