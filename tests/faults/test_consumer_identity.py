"""Consumer identity with real processes: a worker SIGKILLed with entries pending takes
its name back on restart and drains them itself; restarts do not pile up consumers."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Any

import asyncpg

from devkit import workload
from tests.helpers import fleet_process, poll, process_log
from workers import streams
from workers.kernel.lease import lease_key
from workers.publishing import publish

STREAM = "notify:delivery"
GROUP = "notify-workers"
IDLE_SECONDS = 60.0  # the group's reclaim idle time: XAUTOCLAIM cannot help within it


def _env(valkey_url: str, database_url: str, **extra: str) -> dict[str, str]:
    return {
        "FLEET_VALKEY_URL": valkey_url,
        "FLEET_DATABASE_URL": database_url,
        "FLEET_HTTP_PORT": "0",
        "FLEET_BATCH_SIZE": "250",
        "FLEET_BLOCK_MS": "100",
        "FLEET_RECLAIM_IDLE_SECONDS": str(IDLE_SECONDS),
        "FLEET_LOG_LEVEL": "warning",
        **extra,
    }


async def _consumers(redis: Any) -> dict[str, int]:
    return {
        c["name"].decode(): int(c["pending"]) for c in await redis.xinfo_consumers(STREAM, GROUP)
    }


async def _holder_pid(redis: Any, name: str) -> int | None:
    token = await redis.get(lease_key(STREAM, name))
    return int(token.split(b"/")[1]) if token else None


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)  # reaped: the pid is gone, not a zombie


async def test_a_killed_worker_takes_its_name_back_and_drains_its_own_pending_entries(
    real_redis: Any, db: asyncpg.Pool, valkey_url: str, database_url: str
) -> None:
    await streams.ensure_group(real_redis, STREAM, GROUP)
    env = _env(valkey_url, database_url)
    locker = await asyncpg.connect(database_url)
    victim = fleet_process(env, "run", "notify-delivery")
    try:
        # The table is locked: the victim reads 500 entries and cannot commit them.
        lock = locker.transaction()
        await lock.start()
        await locker.execute("LOCK TABLE notify.delivery_log IN ACCESS EXCLUSIVE MODE")
        await publish(real_redis, STREAM, workload.notification_events(500, seed=61))

        async def holding() -> bool:
            return (await _consumers(real_redis)).get("notify-workers-0") == 500

        await poll(holding, timeout=60, what="the victim holding 500 entries")
        assert await _holder_pid(real_redis, "notify-workers-0") == victim.pid
        _kill(victim)
        await lock.rollback()
        restarted_at = time.monotonic()
        again = fleet_process(env, "run", "notify-delivery")
        try:

            async def drained() -> bool:
                count = await db.fetchval("SELECT count(*) FROM notify.delivery_log")
                return int(count) == 500 and not any((await _consumers(real_redis)).values())

            await poll(drained, timeout=IDLE_SECONDS - 10, what="the restarted worker's drain")
            took = time.monotonic() - restarted_at
            assert await _holder_pid(real_redis, "notify-workers-0") == again.pid
            assert set(await _consumers(real_redis)) == {"notify-workers-0"}
        finally:
            again.send_signal(signal.SIGTERM)
            assert again.wait(timeout=30) == 0, process_log(again)
    finally:
        for proc in (victim,):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        await locker.close()
    assert took < IDLE_SECONDS
    # A graceful stop gives the name back.
    assert await real_redis.get(lease_key(STREAM, "notify-workers-0")) is None


async def test_twenty_restarts_leave_one_consumer_name(
    real_redis: Any, db: asyncpg.Pool, valkey_url: str, database_url: str
) -> None:
    await streams.ensure_group(real_redis, STREAM, GROUP)
    env = _env(valkey_url, database_url)
    for restart in range(20):
        proc = fleet_process(env, "run", "notify-delivery")
        try:

            async def leased() -> bool:
                return await _holder_pid(real_redis, "notify-workers-0") == proc.pid  # noqa: B023 - polled within this iteration

            await poll(leased, timeout=60, what=f"restart {restart} to lease its name")
        finally:
            if restart % 2:
                _kill(proc)  # a crash: the lease is left behind
            else:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0, process_log(proc)
    assert set(await _consumers(real_redis)) == {"notify-workers-0"}
    statuses = {s.group: s for s in await streams.group_statuses(real_redis, STREAM)}
    assert statuses[GROUP].consumers == 1
