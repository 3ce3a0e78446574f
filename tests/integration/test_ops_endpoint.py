"""Every process serves /metrics, /health/liveness, /health/readiness and /status."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import pytest

from tests.helpers import poll
from workers.app import Fleet


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
async def fleet(settings_for: Any, real_redis: Any, db: Any) -> Any:
    settings = settings_for(api_token="t0ken-never-shown")
    fleet = Fleet(settings, ["notify-delivery"])
    task = asyncio.create_task(fleet.run(install_signals=False))
    await asyncio.wait_for(fleet.started.wait(), timeout=30)
    yield fleet
    fleet.stop()
    await asyncio.wait_for(task, timeout=30)


async def test_liveness_readiness_metrics_and_status(fleet: Fleet) -> None:
    assert fleet.server is not None and fleet.server.port
    port = fleet.server.port
    status, body = await asyncio.to_thread(_get, port, "/health/liveness")
    assert status == 200
    status, body = await asyncio.to_thread(_get, port, "/health/readiness")
    assert status == 200, body
    assert json.loads(body)["checks"] == {"valkey": "ok", "postgres": "ok"}

    async def gauges_exported() -> bool:
        _, text = await asyncio.to_thread(_get, port, "/metrics")
        return b'fleet_consumers{group="notify-workers",stream="notify:delivery"}' in text

    await poll(gauges_exported, timeout=20, what="group gauges on /metrics")
    status, body = await asyncio.to_thread(_get, port, "/status")
    doc = json.loads(body)
    assert status == 200
    assert doc["workers"] == ["notify-delivery"]
    assert doc["consumers"][0]["group"] == "notify-workers"
    assert doc["settings"]["api_token"] == "***"
    assert b"t0ken-never-shown" not in body


async def test_readiness_fails_when_postgres_is_gone(fleet: Fleet) -> None:
    assert fleet.server is not None and fleet.server.port
    pool = fleet.server.resources.pool
    assert pool is not None
    await pool.close()  # the dependency disappears under a running process
    status, body = await asyncio.to_thread(_get, fleet.server.port, "/health/readiness")
    assert status == 503
    assert json.loads(body)["checks"]["postgres"].startswith("unavailable")
    status, _ = await asyncio.to_thread(_get, fleet.server.port, "/health/liveness")
    assert status == 200
