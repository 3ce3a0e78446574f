"""Chaos: real worker processes (three per group) under a mixed workload while random
workers are SIGKILLed and restarted, PostgreSQL is restarted once and Valkey is killed and
restarted once (AOF with ``appendfsync always``).

At the end: every valid event's effect exists exactly once (one inbox row per event and
group, and the worker tables agree), nothing is pending, and the dead-letter streams hold
exactly the poison entries that were injected.

``make test`` runs a short version; ``make chaos`` runs the full one
(``FLEET_CHAOS_EVENTS=100000``). The figures are printed at the end.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from contracts import Event, encode_entry
from devkit import workload
from devkit.embedded import free_port, start_postgres, start_valkey
from tests.helpers import fleet_process, migrated_database, process_log, server_dir
from workers import streams
from workers.app import available_workers
from workers.kernel.lease import lease_key

EVENTS = int(os.environ.get("FLEET_CHAOS_EVENTS", "6000"))
SECONDS = float(os.environ.get("FLEET_CHAOS_SECONDS", "12"))
PER_GROUP = 3
POISON_PER_STREAM = 3
# What the test's own client sees while Valkey restarts: a refused or reset connection,
# or a reply that never comes (a timeout).
_RESTARTING = (ConnectionError, OSError, aioredis.ConnectionError, aioredis.TimeoutError)
# Exit codes of a worker that found Valkey (4) or PostgreSQL (5) unavailable at start-up.
_STARTUP_UNAVAILABLE = (4, 5)


@dataclass
class Part:
    """One stream's share of the workload and how to check its effects."""

    worker: str
    stream: str
    group: str
    events: list[Event]
    table_check: Callable[[asyncpg.Connection], Any] | None = None
    poison: list[bytes] = field(default_factory=list)


def _notify_part(count: int) -> Part:
    events = list(workload.notification_events(count, seed=2024))

    async def check(conn: asyncpg.Connection) -> None:
        rows = await conn.fetchval("SELECT count(*) FROM notify.delivery_log")
        assert rows == len({e.delivery_id for e in events})  # type: ignore[attr-defined]

    return Part("notify-delivery", "notify:delivery", "notify-workers", events, check)


def _scan_part(count: int) -> Part | None:
    make = getattr(workload, "scan_events", None)
    if make is None or "scan-metrics" not in available_workers():
        return None
    events = list(make(max(1, count // 4), seed=2025))
    scans = {e.scan_id for e in events}  # type: ignore[attr-defined]

    async def check(conn: asyncpg.Connection) -> None:
        rows = await conn.fetchval("SELECT count(*) FROM scanner.scan_metrics")
        assert rows == len(scans)

    return Part("scan-metrics", "scanner:events", "scan-metrics", events, check)


def _vex_part(count: int) -> Part | None:
    make = getattr(workload, "advisory_events", None)
    if make is None or "vex-consensus" not in available_workers():
        return None
    events = list(make(max(1, count // 20), seed=2026))
    return Part("vex-consensus", "concelier:drift", "vex-consensus", events)


def _interleave(parts: list[Part], rng: random.Random) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Entries in a mixed order across streams, each stream keeping its own order."""
    queues = [
        [(p.stream, encode_entry(e)) for e in p.events]
        + [(p.stream, {"type": p.events[0].event_type().encode(), "data": bad}) for bad in p.poison]
        for p in parts
    ]
    for q in queues:
        # Poison entries somewhere in the middle of their stream, not all at the end.
        tail = q[len(q) - POISON_PER_STREAM :]
        del q[len(q) - POISON_PER_STREAM :]
        for item in tail:
            q.insert(rng.randrange(len(q) + 1), item)
    cursors = [0] * len(queues)
    while any(c < len(q) for c, q in zip(cursors, queues, strict=True)):
        i = rng.choice([k for k, q in enumerate(queues) if cursors[k] < len(q)])
        yield queues[i][cursors[i]]
        cursors[i] += 1


@pytest.fixture
def chaos_dir() -> Iterator[Path]:
    with server_dir("streamfleet-chaos-") as folder:
        yield folder


async def _consumed(client: aioredis.Redis, parts: list[Part]) -> bool:
    for p in parts:
        try:
            found = await streams.group_statuses(client, p.stream)
        except _RESTARTING:
            return False  # the test's own connection saw the Valkey restart
        statuses = {s.group: s for s in found}
        st = statuses.get(p.group)
        if st is None or st.pending or (st.lag or 0):
            return False
    return True


async def _lease_holders(client: aioredis.Redis, stream: str, group: str) -> set[int]:
    """Pids of the processes holding a consumer-name lease of ``group``."""
    tokens = [await client.get(lease_key(stream, f"{group}-{n}")) for n in range(PER_GROUP * 3)]
    return {int(t.split(b"/")[1]) for t in tokens if t}


async def test_chaos_nothing_lost_nothing_twice(chaos_dir: Path) -> None:
    rng = random.Random(int(os.environ.get("FLEET_CHAOS_SEED", "7")))
    parts = [p for p in (_notify_part(EVENTS), _scan_part(EVENTS), _vex_part(EVENTS)) if p]
    for p in parts:
        p.poison = [b"{not json %d" % i for i in range(POISON_PER_STREAM - 1)] + [
            b'{"type":"poison"}'
        ]

    valkey_port = free_port()
    valkey = start_valkey(chaos_dir / "valkey", appendfsync="always", port=valkey_port)
    pg, pg_url = start_postgres(chaos_dir / "pg")
    db_url = await migrated_database(pg_url, "chaos")

    env = {
        "FLEET_VALKEY_URL": f"redis://127.0.0.1:{valkey_port}/0",
        "FLEET_DATABASE_URL": db_url,
        "FLEET_HTTP_PORT": "0",
        "FLEET_RECLAIM_IDLE_SECONDS": "2",
        "FLEET_RECLAIM_INTERVAL_SECONDS": "0.5",
        "FLEET_BLOCK_MS": "200",
        "FLEET_BATCH_SIZE": "200",
        "FLEET_LOG_LEVEL": "warning",
        "FLEET_SHUTDOWN_GRACE_SECONDS": "10",
    }
    procs: dict[tuple[str, int], subprocess.Popen[bytes]] = {}

    def start(worker: str, slot: int) -> None:
        procs[(worker, slot)] = fleet_process(env, "run", worker)

    def supervise() -> None:
        """Restart, as an orchestrator would, a process that stopped by design: at start-up
        because a server was being restarted (exit 4 Valkey, 5 PostgreSQL; README "Exit
        codes"), or on finding its consumer-name lease taken after it lapsed (exit 1,
        ``LeaseLost``: docs/kernel.md). Any other exit fails the test with its log."""
        for key, proc in list(procs.items()):
            code = proc.poll()
            if code is None:
                continue
            log = process_log(proc)
            if code == 1 and "LeaseLost" in log:
                figures["lease_lost_exits"] += 1
            else:
                assert code in _STARTUP_UNAVAILABLE, f"{key} exit {code}: {log[-2000:]}"
                figures["startup_exits"] += 1
            start(*key)

    client = aioredis.Redis.from_url(env["FLEET_VALKEY_URL"], decode_responses=False)
    figures = {"events": 0, "poison": 0, "kills": 0, "pg_restarts": 0, "valkey_restarts": 0}
    figures["startup_exits"] = figures["lease_lost_exits"] = 0
    try:
        for p in parts:
            await streams.ensure_group(client, p.stream, p.group)
            for slot in range(PER_GROUP):
                start(p.worker, slot)

        entries = list(_interleave(parts, rng))
        figures["events"] = sum(len(p.events) for p in parts)
        figures["poison"] = sum(len(p.poison) for p in parts)

        async def producer() -> None:
            # Publish over the whole kill window so kills land mid-batch, not on idle workers.
            chunk = max(100, len(entries) // 80)
            pause = (SECONDS * 0.9) / max(1, len(entries) // chunk)
            sent = 0
            while sent < len(entries):
                try:
                    async with client.pipeline(transaction=False) as pipe:
                        for stream, fields in entries[sent : sent + chunk]:
                            pipe.xadd(stream, fields)  # type: ignore[arg-type]  # str keys are valid
                        await pipe.execute()
                except _RESTARTING:
                    # Valkey is being restarted: the chunk is retried whole. XADD is not
                    # idempotent, so only chunks whose reply never came are resent, and
                    # a chunk that did land twice shows up as duplicates, not as loss.
                    await asyncio.sleep(0.2)
                    if await _landed(client, entries[sent : sent + chunk]):
                        sent += chunk
                    continue
                sent += chunk
                await asyncio.sleep(pause)

        publishing = asyncio.create_task(producer())
        started = time.monotonic()
        pg_restart_at = started + SECONDS * 0.35
        valkey_restart_at = started + SECONDS * 0.65
        while time.monotonic() - started < SECONDS or not publishing.done():
            await asyncio.sleep(rng.uniform(0.8, 2.0))
            supervise()
            victim = rng.choice(sorted(procs))
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait(timeout=10)
            figures["kills"] += 1
            start(*victim)
            if figures["pg_restarts"] == 0 and time.monotonic() > pg_restart_at:
                _restart_postgres(pg)
                figures["pg_restarts"] += 1
            if figures["valkey_restarts"] == 0 and time.monotonic() > valkey_restart_at:
                valkey.terminate()  # SIGKILL: only the append-only file survives
                valkey.start(timeout=30)
                figures["valkey_restarts"] += 1
        await publishing

        deadline = time.monotonic() + 240
        while not await _consumed(client, parts):
            assert time.monotonic() < deadline, "the fleet did not drain within 240 s"
            supervise()
            await asyncio.sleep(0.5)

        # A process restarted by the last kill may still be importing; SIGTERM is only
        # graceful once it runs, which its registration as a consumer proves.
        group_of = {p.worker: (p.stream, p.group) for p in parts}
        deadline = time.monotonic() + 60

        async def all_running() -> bool:
            supervise()
            for (worker, _), proc in procs.items():
                stream, group = group_of[worker]
                if proc.pid not in await _lease_holders(client, stream, group):
                    return False
            return True

        while not await all_running():
            assert time.monotonic() < deadline, "a restarted worker never took its lease"
            await asyncio.sleep(0.1)
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for key, proc in procs.items():
            code = proc.wait(timeout=30)
            assert code == 0, f"{key} exit {code}: {process_log(proc)[-2000:]}"

        conn = await asyncpg.connect(db_url)
        try:
            lost = duplicated = 0
            for p in parts:
                expected = {e.event_id for e in p.events}
                rows = await conn.fetch(
                    "SELECT event_id FROM fleet.inbox WHERE group_name = $1", p.group
                )
                got = [r["event_id"] for r in rows]
                lost += len(expected - set(got))
                duplicated += len(got) - len(set(got)) + len(set(got) - expected)
                if p.table_check is not None:
                    await p.table_check(conn)
        finally:
            await conn.close()
        pending = 0
        for p in parts:
            pending += int((await client.xpending(p.stream, p.group))["pending"])
        dead_letters: dict[str, list[bytes]] = {}
        unexpected: list[tuple[bytes, bytes, bytes]] = []
        for p in parts:
            rows = await client.xrange(f"{p.stream}:dlq")
            dead_letters[p.stream] = sorted(f.get(b"data", b"") for _, f in rows)
            unexpected += [
                (f[b"dlq.reason"], f[b"dlq.deliveries"], f[b"dlq.error"][:300])
                for _, f in rows
                if f.get(b"data", b"") not in p.poison
            ]
        figures.update(lost=lost, duplicated=duplicated, pending=pending)
        figures["dead_lettered"] = sum(len(v) for v in dead_letters.values())
        print("\nchaos figures:", figures)
        if unexpected:
            print("unexpected dead letters (reason, deliveries, error):", unexpected)
        assert lost == 0
        assert duplicated == 0
        assert pending == 0
        for p in parts:
            assert dead_letters[p.stream] == sorted(p.poison), p.stream
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        await client.aclose()
        valkey.stop() if valkey.is_running() else None
        pg.cleanup()


async def _landed(client: aioredis.Redis, chunk: list[tuple[str, dict[str, bytes]]]) -> bool:
    """Whether the last entry of a chunk whose reply was lost is on its stream."""
    stream, fields = chunk[-1]
    try:
        tail = await client.xrevrange(stream, count=len(chunk) * 4)
    except _RESTARTING:
        return False
    return any(f.get(b"data") == fields["data"] for _, f in tail)


def _restart_postgres(pg: Any) -> None:
    """Stop PostgreSQL hard (immediate mode, like a crash) and start it again."""
    from pgserver import _commands

    _commands.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=pg.pgdata, user=pg.system_user)
    pg.ensure_postgres_running()
