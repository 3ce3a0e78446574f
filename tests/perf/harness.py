"""Shared pieces of the benchmarks: a private embedded stack, the bare baseline loop,
timing a worker through the runtime, and rounds that interleave them.

Benchmarks print figures and assert nothing. Two cores are shared by Valkey, PostgreSQL
and the worker, and a run's figures swing by a third from one minute to the next, so
every benchmark runs several rounds, each measuring the baseline and the contenders
back to back on a fresh stream, and reports the median of the per-round ratios.

Each contender runs on an event loop of its own:

- (a) the baseline is a hand-rolled loop as it comes: redis-py's defaults, the standard
  asyncio loop, CPython's collector settings;
- (a') is the same loop in a process set up the way ``fleet run`` sets itself up
  (``tune_gc``, uvloop, hiredis command packing), so the share of a difference that is
  process set-up rather than the runtime's design stays visible;
- the runtime contenders run as ``fleet run`` runs them.
"""

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
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import redis
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from contracts import Event
from devkit.embedded import start_postgres, start_valkey
from tests.helpers import migrated_database
from workers import streams
from workers.db import create_pool
from workers.kernel import NoInbox, PgInbox, StreamConsumer, Tx, tune_gc
from workers.kernel.inbox import Inbox, Statement
from workers.kernel.worker import Resources, Worker
from workers.publishing import publish
from workers.settings import Settings, load_settings
from workers.shell import run_event_loop


@contextlib.contextmanager
def bench_stack() -> Iterator[tuple[str, str]]:
    """Embedded Valkey (AOF without fsync or rewrites) and PostgreSQL with a migrated
    ``bench`` database: yields (valkey_url, database_url) and removes everything afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="streamfleet-bench-"))
    # PostgreSQL runs as an unprivileged user when this runs as root.
    os.chmod(folder, 0o755)
    valkey = start_valkey(folder / "valkey", appendfsync="no")
    # No automatic AOF rewrite during the run: each one forks a child that spends ~2.3 µs
    # of CPU per event read (measured with INFO) on whichever contender it lands on, and
    # takes the core the two-core contenders need. The AOF is still written.
    with redis.Redis.from_url(valkey.connection_url) as admin:
        admin.config_set("auto-aof-rewrite-percentage", 0)
    pg, pg_url = start_postgres(folder / "pg")
    try:
        yield valkey.connection_url, asyncio.run(migrated_database(pg_url, "bench"))
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


def noop_worker(on_stream: str) -> type[Worker[Event, None]]:
    """A worker class for ``on_stream`` whose handler does nothing (run with ``NoInbox``)."""

    class NoOp(Worker[Event, None]):
        name: ClassVar[str] = "noop"
        stream: ClassVar[str] = on_stream

        async def apply(self, tx: Tx, fresh: Sequence[Event]) -> None:
            return None

    return NoOp


async def bare_loop(client: Any, stream: str, total: int, batch: int, group: str) -> float:
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


async def through_runtime(worker: Worker[Any, Any], client: Any, total: int, inbox: Inbox) -> float:
    """Run ``worker`` as one consumer until its group read and acknowledged ``total``."""
    await streams.ensure_group(client, worker.stream, worker.group)
    consumer = StreamConsumer(worker, "r1", inbox)
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


class _Recorder:
    """A :class:`Tx` that keeps the statement ``apply`` sends instead of sending it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...]]] = []

    async def execute(self, statement: Statement, *params: Any) -> None:
        self.sent.append((statement.sql, params))

    async def connection(self) -> Any:
        raise RuntimeError("the ceiling replays composed statements only")


async def _ceiling(
    settings: Settings, make: MakeWorker, group: str, events: Sequence[Event]
) -> float:
    """PostgreSQL alone: the statements ``make``'s worker sends for ``events`` (cut into
    batches as the stream would hand them over), prepared in advance, then sent on
    ``concurrency`` connections of a pool sized as the runtime's, with no worker and no
    Valkey in the way: events/s."""
    pool = await create_pool(settings, max_size=settings.concurrency + 2)
    try:
        worker = make(Resources(settings=settings, redis=None, pool=pool), group)  # type: ignore[arg-type]  # apply touches neither
        batches: list[tuple[str, list[Any], tuple[Any, ...]]] = []
        size = settings.batch_size
        for start in range(0, len(events), size):
            batch = list(events[start : start + size])
            recorder = _Recorder()
            await worker.apply(recorder, batch)
            ids = [e.event_id for e in batch]
            batches.extend((sql, ids, params) for sql, params in recorder.sent)
        queue = iter(batches)

        async def send() -> None:
            async with pool.acquire() as conn:
                for sql, ids, params in queue:
                    await conn.execute(sql, group, ids, *params)

        started = time.perf_counter()
        await asyncio.gather(*(send() for _ in range(settings.concurrency)))
        return len(events) / (time.perf_counter() - started)
    finally:
        await pool.close()


MakeWorker = Callable[[Resources, str], Worker[Any, Any]]
"""Builds a contender from the process's resources and its consumer group's name."""

_CPYTHON_GC = gc.get_threshold()


def untuned_process() -> None:
    """The interpreter as a hand-rolled loop runs it: CPython's collector settings."""
    gc.unfreeze()
    gc.set_threshold(*_CPYTHON_GC)


async def _republish(valkey_url: str, stream: str, events: Iterable[Event]) -> None:
    client = aioredis.Redis.from_url(valkey_url, decode_responses=False)
    try:
        await client.delete(stream)
        await publish(client, stream, events)
    finally:
        await client.aclose()


async def _bare(settings: Settings, stream: str, total: int, group: str, *, fleet: bool) -> float:
    if fleet:
        client = streams.connect(settings)
    else:
        client = aioredis.Redis.from_url(settings.valkey_url, decode_responses=False)
    try:
        return await bare_loop(client, stream, total, settings.batch_size, group)
    finally:
        await client.aclose()


async def _runtime(settings: Settings, make: MakeWorker, group: str, total: int) -> float:
    client = streams.connect(settings)
    pool = await create_pool(settings, max_size=settings.concurrency + 2)
    try:
        worker = make(Resources(settings=settings, redis=client, pool=pool), group)
        inbox: Inbox = NoInbox() if worker.name == "noop" else PgInbox(pool)
        return await through_runtime(worker, client, total, inbox)
    finally:
        await pool.close()
        await client.aclose()


def run_round(
    index: int,
    settings: Settings,
    stream: str,
    make_events: Callable[[], Sequence[Event]],
    contenders: dict[str, MakeWorker],
    ceiling: tuple[MakeWorker, Callable[[], Sequence[Event]]] | None = None,
) -> dict[str, float]:
    """Publish fresh events on a fresh ``stream``, then read them all through the baseline
    (a), the baseline in a tuned process (a') and each contender, one group each. The
    events are dropped before anything is measured: no contender carries them.

    ``ceiling``, a worker and events of their own (unseen by the contenders' tables):
    figure ``ceiling`` is PostgreSQL alone running the statements that worker sends for
    them (:func:`_ceiling`), measured last."""
    events = make_events()
    total = len(events)
    untuned_process()
    asyncio.run(_republish(settings.valkey_url, stream, events))
    del events
    gc.collect()
    figures = {"a": asyncio.run(_bare(settings, stream, total, f"bare-{index}", fleet=False))}
    tune_gc()
    loop = settings.event_loop
    figures["a'"] = run_event_loop(
        _bare(settings, stream, total, f"tuned-{index}", fleet=True), loop
    )
    for name, make in contenders.items():
        figures[name] = run_event_loop(_runtime(settings, make, f"{name}-{index}", total), loop)
    if ceiling is not None:
        make, events_of_its_own = ceiling
        figures["ceiling"] = run_event_loop(
            _ceiling(settings, make, f"ceiling-{index}", events_of_its_own()), loop
        )
    return figures


def rounds(count: int, measure: Callable[[int], dict[str, float]]) -> dict[str, list[float]]:
    """Run ``count`` rounds, printing each, and return every figure and every ratio to
    the baselines computed within its round: ``x/a`` and ``x/tuned`` (to a'), and
    ``c/ceiling`` when the round measured a ceiling."""
    figures: dict[str, list[float]] = {}
    for index in range(count):
        result = measure(index)
        line = "  ".join(f"({k}) {v:>9,.0f}/s" for k, v in result.items())
        ratios = "  ".join(f"{k}/a {v / result['a']:.2f}" for k, v in result.items() if k != "a")
        if "ceiling" in result:
            ratios += f"  c/ceiling {result['c'] / result['ceiling']:.2f}"
            figures.setdefault("c/ceiling", []).append(result["c"] / result["ceiling"])
        print(f"round {index + 1}: {line}   {ratios}", flush=True)
        for key, value in result.items():
            figures.setdefault(key, []).append(value)
            if key != "a":
                figures.setdefault(f"{key}/a", []).append(value / result["a"])
            if key not in ("a", "a'"):
                figures.setdefault(f"{key}/tuned", []).append(value / result["a'"])
    return figures


def report(
    figures: dict[str, list[float]], labels: dict[str, str], targets: dict[str, str]
) -> None:
    """Medians of every figure and ratio; ``targets`` names the ratios with a target."""
    count = len(figures["a"])
    print(f"medians over {count} rounds:")
    for key, label in labels.items():
        values = figures[key]
        print(
            f"({key}) {label:<36}: {statistics.median(values):>10,.0f} events/s"
            f"   (range {min(values):,.0f}-{max(values):,.0f})"
        )
    for key in labels:
        if key in ("a", "a'", "ceiling"):
            continue
        target = f"   (target {targets[key]})" if key in targets else ""
        print(
            f"ratio {key}/a = {statistics.median(figures[f'{key}/a']):.2f}{target}   "
            f"{key}/a' = {statistics.median(figures[f'{key}/tuned']):.2f}   "
            f"(range {min(figures[f'{key}/a']):.2f}-{max(figures[f'{key}/a']):.2f})"
        )
    if "c/ceiling" in figures:
        share = figures["c/ceiling"]
        target = f"   (target {targets['ceiling']})" if "ceiling" in targets else ""
        print(
            f"ratio c/ceiling = {statistics.median(share):.2f}{target}   "
            f"(range {min(share):.2f}-{max(share):.2f})"
        )


def compare_worker(
    settings: Settings,
    worker: type[Worker[Any, Any]],
    events_for: Callable[[int], Sequence[Event]],
    count: int,
    *,
    label: str,
    targets: dict[str, str],
    ceiling_events_for: Callable[[int], Sequence[Event]] | None = None,
) -> None:
    """``count`` rounds of the baselines, (b) the runtime with a no-op handler for
    ``worker``'s event types and (c) ``worker`` itself, on ``events_for(round)``; then
    the report. With ``ceiling_events_for`` (events like the round's, of other scans or
    deliveries), each round also measures PostgreSQL alone running the statements (c)'s
    worker sends for them, and reports (c) as a fraction of that ceiling."""
    noop = noop_worker(worker.stream)
    contenders: dict[str, MakeWorker] = {
        "b": lambda resources, group: noop(resources, group=group),
        "c": lambda resources, group: worker(resources, group=group),
    }

    def measure(index: int) -> dict[str, float]:
        ceiling = None
        if ceiling_events_for is not None:
            ceiling = (contenders["c"], lambda: ceiling_events_for(index))
        return run_round(
            index, settings, worker.stream, lambda: events_for(index), contenders, ceiling
        )

    labels = {
        "a": "bare XREADGROUP+decode+XACK loop",
        "a'": "the same loop, process set up",
        "b": "runtime, no-op handler",
        "c": label,
    }
    if ceiling_events_for is not None:
        labels["ceiling"] = "PostgreSQL alone, (c)'s statements"
    report(rounds(count, measure), labels, targets)
