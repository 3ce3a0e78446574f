"""Scan-metrics retention belongs to scan-metrics: old rows leave with their phases, in
batches, once across replicas, run by the scan-metrics worker itself with no S3 and no
snapshot-retention worker (docs/snapshots.md, "Scan-metrics retention")."""

from __future__ import annotations

import signal
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from devkit import workload
from tests.helpers import apply_directly, fleet_process, poll, process_log, resources
from workers.scan_metrics import ScanMetricsWorker
from workers.scan_metrics.retention import (
    RETENTION_LOCK_KEY,
    ScanMetricsRetention,
    expire_scan_metrics,
)


async def _age(db: asyncpg.Pool, scan_ids: list[Any], days: int) -> None:
    await db.execute(
        "UPDATE scanner.scan_metrics SET created_at = now() - make_interval(days => $2) "
        "WHERE scan_id = ANY($1::uuid[])",
        scan_ids,
        days,
    )


async def test_rows_older_than_the_retention_are_deleted_with_their_phases(
    db: asyncpg.Pool, settings_for: Any
) -> None:
    settings = settings_for(scan_metrics_retention_days=30)
    scans = workload.scan_lifecycles(60, seed=23, failure_rate=0.1, replay_rate=0.1)
    worker = ScanMetricsWorker(resources(settings, None, db))
    await apply_directly(worker, db, [e for scan in scans for e in scan])
    old = [submitted.scan_id for submitted, _ in scans[:25]]
    await _age(db, old, 31)
    old_phases = await db.fetchval(
        "SELECT count(*) FROM scanner.execution_phases e JOIN scanner.scan_metrics m "
        "USING (metrics_id) WHERE m.scan_id = ANY($1::uuid[])",
        old,
    )
    kept_phases = await db.fetchval("SELECT count(*) FROM scanner.execution_phases") - old_phases

    retention = ScanMetricsRetention(settings, db)
    now = datetime.now(UTC)
    planned = await expire_scan_metrics(db, retention_days=30, now=now, dry_run=True)
    assert (planned.status, planned.metrics_rows) == ("planned", 25)
    # Another replica holds the lock: this one skips and deletes nothing.
    async with db.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", RETENTION_LOCK_KEY)
        try:
            skipped = await retention.run_once(now)
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK_KEY)
    assert skipped is not None and skipped.status == "skipped"
    assert await db.fetchval("SELECT count(*) FROM scanner.scan_metrics") == 60

    done = await retention.run_once(now)
    assert done is not None
    assert (done.status, done.metrics_rows, done.phase_rows) == ("applied", 25, old_phases)
    assert await db.fetchval("SELECT count(*) FROM scanner.scan_metrics") == 35
    assert (
        await db.fetchval(
            "SELECT count(*) FROM scanner.scan_metrics WHERE scan_id = ANY($1::uuid[])", old
        )
        == 0
    )
    assert await db.fetchval("SELECT count(*) FROM scanner.execution_phases") == kept_phases
    assert done.cutoff < now - timedelta(days=29)


async def test_deletion_runs_in_batches_and_skips_a_missing_schema(db: asyncpg.Pool) -> None:
    schema = f"scan_retention_{uuid.uuid4().hex[:8]}"
    now = datetime(2025, 12, 4, tzinfo=UTC)
    async with db.acquire() as conn:
        await conn.execute(
            f"""
            CREATE SCHEMA {schema};
            CREATE TABLE {schema}.scan_metrics (
                metrics_id UUID PRIMARY KEY, created_at TIMESTAMPTZ NOT NULL);
            CREATE TABLE {schema}.execution_phases (
                id BIGSERIAL PRIMARY KEY,
                metrics_id UUID NOT NULL REFERENCES {schema}.scan_metrics (metrics_id),
                phase_name TEXT NOT NULL);
            """
        )
        await conn.execute(
            f"INSERT INTO {schema}.scan_metrics "
            "SELECT gen_random_uuid(), $1::timestamptz - make_interval(days => 91, secs => g) "
            "FROM generate_series(1, 1200) AS g",
            now,
        )
        await conn.execute(
            f"INSERT INTO {schema}.scan_metrics "
            "SELECT gen_random_uuid(), $1::timestamptz - make_interval(days => 89) "
            "FROM generate_series(1, 25)",
            now,
        )
        await conn.execute(
            f"INSERT INTO {schema}.execution_phases (metrics_id, phase_name) "
            f"SELECT metrics_id, p FROM {schema}.scan_metrics, "
            "unnest(ARRAY['ingest', 'analyze']) AS p"
        )
    try:
        report = await expire_scan_metrics(db, retention_days=90, now=now, schema=schema, batch=500)
        assert (report.status, report.metrics_rows, report.phase_rows) == ("applied", 1200, 2400)
        assert await db.fetchval(f"SELECT count(*) FROM {schema}.scan_metrics") == 25
        assert await db.fetchval(f"SELECT count(*) FROM {schema}.execution_phases") == 50

        skipped = await expire_scan_metrics(db, retention_days=90, now=now, schema="no_such_schema")
        assert skipped.status == "skipped"
        assert skipped.detail == "no_such_schema.scan_metrics does not exist"
    finally:
        await db.execute(f"DROP SCHEMA {schema} CASCADE")


async def test_the_scan_metrics_worker_expires_old_rows_with_s3_not_configured(
    db: asyncpg.Pool, settings_for: Any, valkey_url: str, database_url: str
) -> None:
    """``fleet run scan-metrics`` alone, no S3 endpoint and no snapshot-retention worker:
    the worker's own housekeeping deletes the old rows when it starts."""
    settings = settings_for()
    scans = workload.scan_lifecycles(20, seed=5)
    await apply_directly(
        ScanMetricsWorker(resources(settings, None, db)), db, [e for scan in scans for e in scan]
    )
    old = [submitted.scan_id for submitted, _ in scans[:8]]
    await _age(db, old, 40)
    env = {
        "FLEET_VALKEY_URL": valkey_url,
        "FLEET_DATABASE_URL": database_url,
        "FLEET_S3_ENDPOINT_URL": "",  # empty: S3 not configured
        "FLEET_HTTP_PORT": "0",
        "FLEET_LOG_LEVEL": "info",
        "FLEET_LOG_FORMAT": "json",
        "FLEET_SCAN_METRICS_RETENTION_DAYS": "30",
        "FLEET_SHUTDOWN_GRACE_SECONDS": "10",
    }
    proc = fleet_process(env, "run", "scan-metrics")
    try:

        async def expired() -> bool:
            assert proc.poll() is None, process_log(proc)
            return await db.fetchval("SELECT count(*) FROM scanner.scan_metrics") == 12

        await poll(expired, timeout=60, what="the old scan metrics to be deleted")
        assert (
            await db.fetchval(
                "SELECT count(*) FROM scanner.scan_metrics WHERE scan_id = ANY($1::uuid[])", old
            )
            == 0
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, process_log(proc)
    assert "scan_metrics.retention_applied" in process_log(proc)
