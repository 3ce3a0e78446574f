"""Network faults between real worker processes and their servers, through a fault
proxy (``proxy.py``): latency, throttled bandwidth, connections reset mid-command, and a
partition that swallows every byte, after which new connections pass while the old ones
stay silent. Each test asserts every effect exactly once and nothing pending; the
partition tests print how long consumption took to resume after the network healed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from devkit import workload
from devkit.embedded import free_port
from tests.faults.proxy import FaultProxy
from tests.helpers import fleet_process, migrated_database, poll, process_log
from workers import streams
from workers.kernel.lease import lease_key
from workers.publishing import publish

PARTITION_SECONDS = float(os.environ.get("FLEET_PARTITION_SECONDS", "12"))
STREAM = "notify:delivery"
GROUP = "notify-workers"


def _pg_target(url: str) -> tuple[str, int] | str:
    parts = urlsplit(url)
    host = parse_qs(parts.query).get("host", [parts.hostname or "127.0.0.1"])[0]
    port = parts.port or 5432
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


def _via(url: str, port: int, database: str | None = None) -> str:
    """``url`` pointed at the proxy on 127.0.0.1:``port``."""
    parts = urlsplit(url)
    user = parts.username or "postgres"
    auth = f"{user}:{parts.password}@" if parts.password else f"{user}@"
    if parts.scheme.startswith("redis"):
        auth = parts.netloc.rpartition("@")[0] + "@" if "@" in parts.netloc else ""
    path = f"/{database}" if database else parts.path
    return urlunsplit((parts.scheme, f"{auth}127.0.0.1:{port}", path, "", ""))


class Setup:
    def __init__(self, valkey: FaultProxy, postgres: FaultProxy, env: dict[str, str], db: str):
        self.valkey = valkey
        self.postgres = postgres
        self.env = env
        self.db_url = db


@pytest.fixture
async def setup(valkey_url: str, database_url: str, real_redis: Any) -> AsyncIterator[Setup]:
    base = urlunsplit(urlsplit(database_url)._replace(path="/postgres"))
    db = await migrated_database(base, f"netfault_{os.getpid()}")
    vsplit = urlsplit(valkey_url)
    valkey = FaultProxy((vsplit.hostname or "127.0.0.1", vsplit.port or 6379))
    postgres = FaultProxy(_pg_target(db))
    await valkey.start()
    await postgres.start()
    env = {
        "FLEET_VALKEY_URL": _via(valkey_url, valkey.port),
        "FLEET_DATABASE_URL": _via(db, postgres.port, urlsplit(db).path.lstrip("/")),
        "FLEET_BATCH_SIZE": "200",
        "FLEET_BLOCK_MS": "500",
        "FLEET_RECLAIM_IDLE_SECONDS": "60",
        "FLEET_LOG_LEVEL": "warning",
        "FLEET_HTTP_PORT": "0",
        # A silent PostgreSQL connection is given up a second past the statement timeout.
        "FLEET_DB_STATEMENT_TIMEOUT_MS": "5000",
    }
    await streams.ensure_group(real_redis, STREAM, GROUP)
    yield Setup(valkey, postgres, env, db)
    await valkey.stop()
    await postgres.stop()


async def _recorded(db_url: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM notify.delivery_log"))
    finally:
        await conn.close()


async def _exactly_once(
    setup: Setup, redis: Any, events: list[Any], *, timeout: float = 180
) -> None:
    async def settled() -> bool:
        for status in await streams.group_statuses(redis, STREAM):
            if status.pending or (status.lag or 0):
                return False
        return await _recorded(setup.db_url) == len(events)

    await poll(settled, timeout=timeout, what="every event recorded and nothing pending")
    conn = await asyncpg.connect(setup.db_url)
    try:
        rows = await conn.fetch("SELECT last_event_id FROM notify.delivery_log")
        inbox = int(await conn.fetchval("SELECT count(*) FROM fleet.inbox"))
    finally:
        await conn.close()
    assert {r[0] for r in rows} == {e.event_id for e in events}
    assert inbox == len(events), "an event applied twice or not at all"
    assert await redis.xlen(f"{STREAM}:dlq") == 0


async def _stop(proc: Any) -> None:
    """SIGTERM, then wait without blocking the event loop the proxy runs on."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)

    async def exited() -> bool:
        return proc.poll() is not None

    try:
        await poll(exited, timeout=60, what="the worker to stop")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, process_log(proc)[-3000:]


@pytest.mark.parametrize("server", ["valkey", "postgres"])
async def test_latency_and_a_throttled_link_lose_and_repeat_nothing(
    setup: Setup, real_redis: Any, server: str
) -> None:
    proxy = setup.valkey if server == "valkey" else setup.postgres
    proxy.latency = 0.05
    proxy.rate = 2_000_000  # bytes per second, each way
    events = list(workload.notification_events(3000, seed=71))
    procs = [fleet_process(setup.env, "run", "notify-delivery") for _ in range(2)]
    try:
        await publish(real_redis, STREAM, events)
        await _exactly_once(setup, real_redis, events)
    finally:
        for proc in procs:
            await _stop(proc)


@pytest.mark.parametrize("server", ["valkey", "postgres"])
async def test_connections_reset_mid_command_lose_and_repeat_nothing(
    setup: Setup, real_redis: Any, server: str
) -> None:
    proxy = setup.valkey if server == "valkey" else setup.postgres
    events = list(workload.notification_events(6000, seed=72))
    procs = [fleet_process(setup.env, "run", "notify-delivery") for _ in range(2)]
    try:
        # Both running (each holds its consumer name) before the first reset: this test is
        # about connections lost in the middle of the work, not during start-up.
        await poll(lambda: _started(real_redis, procs), timeout=60, what="both workers started")
        resets = 0
        for chunk in range(6):
            await publish(real_redis, STREAM, events[chunk * 1000 : (chunk + 1) * 1000])
            await poll(lambda: _more(setup.db_url, chunk * 1000 // 2), what="progress")  # noqa: B023 - polled now
            resets += proxy.reset()
        assert resets > 0
        await _exactly_once(setup, real_redis, events)
        for proc in procs:
            assert proc.poll() is None, process_log(proc)[-3000:]
    finally:
        for proc in procs:
            await _stop(proc)


async def _started(redis: Any, procs: list[Any]) -> bool:
    tokens = [await redis.get(lease_key(STREAM, f"{GROUP}-{n}")) for n in range(len(procs))]
    holders = {int(t.split(b"/")[1]) for t in tokens if t}
    return holders == {p.pid for p in procs}


async def _more(db_url: str, n: int) -> bool:
    return await _recorded(db_url) > n


async def _ready(port: int) -> int:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.get(f"http://127.0.0.1:{port}/health/readiness") as response,
    ):
        return response.status


@pytest.mark.parametrize("server", ["valkey", "postgres"])
async def test_a_partition_then_half_open_connections_resume_within_bounded_time(
    setup: Setup, real_redis: Any, server: str
) -> None:
    proxy = setup.valkey if server == "valkey" else setup.postgres
    # Two ports each found free (not port and port + 1: the next one may be taken).
    ports = [free_port(), free_port()]
    while ports[1] == ports[0]:
        ports[1] = free_port()
    port = ports[0]
    # Reclaiming another consumer's idle entries is put out of reach: entries whose read
    # reply the partition swallowed must be taken up again by their own consumer.
    env = {**setup.env, "FLEET_RECLAIM_IDLE_SECONDS": "600"}
    events = list(workload.notification_events(6000, seed=73))
    procs = [
        fleet_process({**env, "FLEET_HTTP_PORT": str(p)}, "run", "notify-delivery") for p in ports
    ]
    try:
        # Both running before the partition: a process still starting when the network
        # goes silent fails its start-up ping and exits (one line, exit code 4), by design;
        # this test is about connections that go silent while in use.
        await poll(lambda: _started(real_redis, procs), timeout=60, what="both workers started")
        await publish(real_redis, STREAM, events[:2000])
        await poll(lambda: _more(setup.db_url, 0), timeout=60, what="consumption started")
        for each in ports:
            await poll(lambda: _is(_ready(each), 200), timeout=30, what="ready before")  # noqa: B023 - polled now
        proxy.blackhole()
        partition_ends = time.monotonic() + PARTITION_SECONDS
        await publish(real_redis, STREAM, events[2000:4000])
        await poll(lambda: _is(_ready(port), 503), timeout=30, what="unready in the partition")
        await asyncio.sleep(max(0.0, partition_ends - time.monotonic()))  # the partition
        before = await _recorded(setup.db_url)
        proxy.heal()
        healed = time.monotonic()
        await poll(lambda: _more(setup.db_url, before), timeout=120, what="consumption resumed")
        resumed = time.monotonic() - healed
        print(
            f"\n{server}: partition {PARTITION_SECONDS:.0f}s; "
            f"consumption resumed {resumed:.1f}s after healing"
        )
        await publish(real_redis, STREAM, events[4000:])
        await _exactly_once(setup, real_redis, events, timeout=120)
        await poll(lambda: _is(_ready(port), 200), timeout=30, what="ready after")
        for proc in procs:
            assert proc.poll() is None, process_log(proc)[-3000:]
    finally:
        for proc in procs:
            await _stop(proc)
    assert resumed < 60, f"consumption resumed only {resumed:.1f}s after the network healed"


async def _is(status: Any, expected: int) -> bool:
    try:
        return await status == expected
    except (aiohttp.ClientError, TimeoutError):
        return False
