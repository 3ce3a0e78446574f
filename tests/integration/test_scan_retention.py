"""Old scan metrics leave with their phases when the retention job runs: the
snapshot-retention service's step works on the real scanner tables."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg

from devkit import workload
from tests.helpers import apply_directly, resources
from workers.scan_metrics import ScanMetricsWorker
from workers.snapshot_retention.service import Snapshots, utcnow


async def test_rows_older_than_the_retention_are_deleted_with_their_phases(
    db: asyncpg.Pool, settings_for: Any
) -> None:
    settings = settings_for(scan_metrics_retention_days=30)
    scans = workload.scan_lifecycles(60, seed=23, failure_rate=0.1, replay_rate=0.1)
    worker = ScanMetricsWorker(resources(settings, None, db))
    await apply_directly(worker, db, [e for scan in scans for e in scan])
    old = [submitted.scan_id for submitted, _ in scans[:25]]
    await db.execute(
        "UPDATE scanner.scan_metrics SET created_at = now() - interval '31 days' "
        "WHERE scan_id = ANY($1::uuid[])",
        old,
    )
    old_phases = await db.fetchval(
        "SELECT count(*) FROM scanner.execution_phases e JOIN scanner.scan_metrics m "
        "USING (metrics_id) WHERE m.scan_id = ANY($1::uuid[])",
        old,
    )
    kept_phases = await db.fetchval("SELECT count(*) FROM scanner.execution_phases") - old_phases

    snapshots = Snapshots(settings, db, None)
    planned = (await snapshots.run_retention(utcnow(), dry_run=True)).scan_metrics
    assert planned is not None and (planned.status, planned.metrics_rows) == ("planned", 25)
    done = (await snapshots.run_retention(utcnow())).scan_metrics
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
    assert done.cutoff < utcnow() - timedelta(days=29)
