"""Real worker processes killed and stopped mid-batch, against real Valkey and PostgreSQL."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import asyncpg
import pytest

from devkit import workload
from tests.helpers import fleet_process, poll, process_log
from workers import streams
from workers.publishing import publish

STREAM = "notify:delivery"
GROUP = "notify-workers"


def worker_env(valkey_url: str, database_url: str, name: str, **extra: str) -> dict[str, str]:
    return {
        "FLEET_VALKEY_URL": valkey_url,
        "FLEET_DATABASE_URL": database_url,
        "FLEET_HTTP_PORT": "0",
        "FLEET_CONSUMER_NAME": name,
        "FLEET_BATCH_SIZE": "500",
        "FLEET_BLOCK_MS": "100",
        "FLEET_RECLAIM_IDLE_SECONDS": "1",
        "FLEET_RECLAIM_INTERVAL_SECONDS": "0.3",
        "FLEET_LOG_LEVEL": "warning",
        **extra,
    }


async def _rows(db: asyncpg.Pool) -> int:
    return int(await db.fetchval("SELECT count(*) FROM notify.delivery_log"))


async def test_sigkill_mid_batch_loses_nothing_and_applies_nothing_twice(
    real_redis: Any, db: asyncpg.Pool, valkey_url: str, database_url: str
) -> None:
    events = list(workload.notification_events(20_000, seed=31))
    await streams.ensure_group(real_redis, STREAM, GROUP)
    await publish(real_redis, STREAM, events)
    victim = fleet_process(worker_env(valkey_url, database_url, "victim"), "run", "notify-delivery")
    try:

        async def started() -> bool:
            return await _rows(db) > 0

        await poll(started, timeout=60, what="the victim's first batch")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
    finally:
        if victim.poll() is None:
            victim.kill()
    held = await real_redis.xpending_range(
        STREAM, GROUP, min="-", max="+", count=10, consumername="victim"
    )
    rows_at_kill = await _rows(db)
    assert rows_at_kill < len(events), "the kill came too late to test anything"

    survivor = fleet_process(
        worker_env(valkey_url, database_url, "survivor"), "run", "notify-delivery"
    )
    try:

        async def finished() -> bool:
            st = {s.group: s for s in await streams.group_statuses(real_redis, STREAM)}[GROUP]
            return st.pending == 0 and (st.lag or 0) == 0 and await _rows(db) == len(events)

        await poll(finished, timeout=120, what="the survivor to finish")
    finally:
        survivor.send_signal(signal.SIGTERM)
        survivor.wait(timeout=30)
    assert await _rows(db) == len(events)
    assert int(await real_redis.xlen(f"{STREAM}:dlq")) == 0
    inbox = int(await db.fetchval("SELECT count(*) FROM fleet.inbox WHERE group_name = $1", GROUP))
    assert inbox == len(events)
    # The victim's pending entries, if the kill caught any, were taken over.
    if held:
        assert all(
            r["consumer"] != b"victim"
            for r in await real_redis.xpending_range(STREAM, GROUP, min="-", max="+", count=100)
        )


async def test_sigterm_mid_batch_drains_acknowledges_and_exits_zero(
    real_redis: Any, db: asyncpg.Pool, valkey_url: str, database_url: str
) -> None:
    await streams.ensure_group(real_redis, STREAM, GROUP)
    await publish(real_redis, STREAM, workload.notification_events(30_000, seed=32))
    grace = 10.0
    proc = fleet_process(
        worker_env(
            valkey_url,
            database_url,
            "graceful",
            FLEET_SHUTDOWN_GRACE_SECONDS=str(grace),
            FLEET_RECLAIM_IDLE_SECONDS="600",
        ),
        "run",
        "notify-delivery",
    )
    try:

        async def started() -> bool:
            return await _rows(db) > 0

        await poll(started, timeout=60, what="the first batch")
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=grace + 5)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, process_log(proc)
    assert took < grace, f"exit took {took:.1f}s, grace is {grace}s"
    assert int((await real_redis.xpending(STREAM, GROUP))["pending"]) == 0
    info = {g["name"]: g for g in await real_redis.xinfo_groups(STREAM)}[GROUP.encode()]
    assert await _rows(db) == int(info["entries-read"])
    assert await _rows(db) < 30_000, "the signal came after everything was done"


@pytest.mark.parametrize(
    ("env", "args", "expected"),
    [
        (
            {"FLEET_VALKEY_URL": "redis://127.0.0.1:1/0"},
            ["run", "notify-delivery"],
            "cannot reach Valkey",
        ),
        ({"FLEET_VALKEY_URL": "http://nope"}, ["run", "notify-delivery"], "FLEET_VALKEY_URL"),
        ({"FLEET_BATCH_SIZE": "lots"}, ["status"], "FLEET_BATCH_SIZE"),
        ({}, ["run", "no-such-worker"], "unknown worker 'no-such-worker'"),
        (
            {"FLEET_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x"},
            ["migrate"],
            "cannot connect to PostgreSQL",
        ),
        ({}, ["status", "--stream", "no:such"], "unknown stream"),
    ],
)
def test_bad_configuration_is_one_clear_line(
    env: dict[str, str], args: list[str], expected: str, valkey_url: str
) -> None:
    from tests.helpers import fleet_cli

    base = {"FLEET_VALKEY_URL": valkey_url, "FLEET_HTTP_PORT": "0"}
    result = fleet_cli({**base, **env}, *args, timeout=60)
    stderr = result.stderr.decode()
    assert result.returncode != 0
    assert expected in stderr, stderr
    assert "Traceback" not in stderr
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, stderr


def test_environment_of_the_test_process_is_untouched() -> None:
    assert "FLEET_BATCH_SIZE" not in os.environ
