"""``fleet tte`` as a real subprocess against the test database."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from contracts.scanner import ScanCompleted, ScanFailed
from devkit import workload
from tests.helpers import apply_directly, fleet_cli, resources
from workers.errors import ExitCode
from workers.scan_metrics import ScanMetricsWorker


def _ms(start: datetime, end: datetime) -> int:
    return (end - start) // timedelta(milliseconds=1)


def _interpolate(values: Sequence[int], p: float) -> float:
    xs = sorted(values)
    pos = p * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


async def _record(db: asyncpg.Pool, settings_for: Any, events: Sequence[Any]) -> None:
    worker = ScanMetricsWorker(resources(settings_for(), None, db))
    await apply_directly(worker, db, events)


async def test_tte_prints_percentiles_compliance_and_phases(
    db: asyncpg.Pool, settings_for: Any, database_url: str
) -> None:
    start = datetime.now(UTC) - timedelta(hours=3)
    scans = workload.scan_lifecycles(400, seed=17, failure_rate=0.08, replay_rate=0.1, start=start)
    events = [e for scan in scans for e in scan]
    await _record(db, settings_for, events)
    tenant = workload.TENANTS[1]
    mine = [e for _, e in scans if e.tenant_id == tenant]
    completed = [e for e in mine if isinstance(e, ScanCompleted) and not e.is_replay]
    ttes = [_ms(e.started_at, e.finished_at) for e in completed]

    env = {"FLEET_DATABASE_URL": database_url}
    result = fleet_cli(env, "tte", "--tenant", str(tenant), "--since", "1d", "--json")
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    assert report["tenant_id"] == str(tenant)
    assert report["completed"] == len(completed)
    assert report["failed"] == sum(isinstance(e, ScanFailed) and not e.is_replay for e in mine)
    assert report["replays"] == sum(e.is_replay for e in mine)
    assert abs(report["p50"]["value_ms"] - _interpolate(ttes, 0.5)) < 1
    assert abs(report["p95"]["value_ms"] - _interpolate(ttes, 0.95)) < 1
    assert report["p50"]["met"] is (_interpolate(ttes, 0.5) < 120_000)
    assert report["p95"]["compliance_percent"] == pytest.approx(
        100 * sum(t <= 300_000 for t in ttes) / len(ttes)
    )
    phases = {p["phase"]: p for p in report["phases"]}
    assert list(phases) == ["ingest", "analyze", "reachability", "vex", "sign", "publish"]
    analyze = [
        _ms(p.started_at, p.finished_at) for e in completed for p in e.phases if p.name == "analyze"
    ]
    assert phases["analyze"]["runs"] == len(analyze)
    assert abs(phases["analyze"]["avg_ms"] - sum(analyze) / len(analyze)) < 1e-6
    assert abs(phases["analyze"]["percent_of_tte"] - 100 * sum(analyze) / sum(ttes)) < 1e-6

    # A window that ends before the scans started holds nothing.
    empty = fleet_cli(env, "tte", "--tenant", str(tenant), "--since", "30m", "--json")
    assert empty.returncode == 0, empty.stderr.decode()
    assert json.loads(empty.stdout)["p50"] == {
        "target_ms": 120_000,
        "value_ms": None,
        "met": None,
        "compliance_percent": None,
    }

    table = fleet_cli({**env, "COLUMNS": "160"}, "tte", "--since", "2d")
    text = table.stdout.decode()
    assert table.returncode == 0, table.stderr.decode()
    for expected in ("TTE p50", "TTE p95", "< 120 s", "< 300 s", "Phase breakdown", "reachability"):
        assert expected in text, text
    assert "every tenant" in text


def test_bad_input_ends_with_one_line(database_url: str) -> None:
    env = {"FLEET_DATABASE_URL": database_url}
    for args, phrase in (
        (("--since", "7x"), "--since '7x' is not a duration"),
        (("--since", "0d"), "empty duration"),
        (("--tenant", "tenant-a"), "--tenant 'tenant-a' is not a UUID"),
    ):
        result = fleet_cli(env, "tte", *args)
        stderr = result.stderr.decode()
        assert result.returncode == 2, stderr
        assert phrase in stderr and stderr.startswith("error:"), stderr
        assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    down = fleet_cli({"FLEET_DATABASE_URL": "postgresql://fleet@127.0.0.1:1/none"}, "tte")
    stderr = down.stderr.decode()
    assert down.returncode == ExitCode.POSTGRES
    assert "cannot connect to PostgreSQL" in stderr and len(stderr.strip().splitlines()) == 1
