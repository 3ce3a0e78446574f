"""The rows of each export profile, read in one repeatable-read snapshot.

Rows come back as PostgreSQL renders them (``to_jsonb``, timestamps in UTC), so a file
depends on the stored state only. vex and snapshots data is fleet-wide (their tables
carry no tenant); ``tenant`` narrows the scan-metrics profile.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from workers.db import DbConn
from workers.export.bundles import Row

_CONSENSUS = """
SELECT coalesce(jsonb_agg(to_jsonb(c) - 'scope_base'
                          ORDER BY c.component_purl, c.vulnerability_id), '[]')::text
FROM vex.consensus c
WHERE ($1::timestamptz IS NULL OR c.computed_at >= $1)
"""

_SCANS = """
SELECT coalesce(jsonb_agg(to_jsonb(m) ORDER BY m.scan_id), '[]')::text
FROM scanner.scan_metrics m
WHERE ($1::uuid IS NULL OR m.tenant_id = $1)
  AND ($2::timestamptz IS NULL OR m.started_at >= $2)
"""

_PHASES = """
SELECT coalesce(jsonb_agg(to_jsonb(p) - 'id' - 'metrics_id' || jsonb_build_object('scan_id',
                          m.scan_id) ORDER BY m.scan_id, p.phase_order), '[]')::text
FROM scanner.execution_phases p
JOIN scanner.scan_metrics m USING (metrics_id)
WHERE ($1::uuid IS NULL OR m.tenant_id = $1)
  AND ($2::timestamptz IS NULL OR m.started_at >= $2)
"""

_TTE_STATS = """
SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.tenant_id, s.hour_bucket), '[]')::text
FROM scanner.tte_stats s
WHERE ($1::uuid IS NULL OR s.tenant_id = $1)
  AND ($2::timestamptz IS NULL OR s.hour_bucket >= date_trunc('hour', $2, 'UTC'))
"""

_TTE = """
SELECT jsonb_build_object(
    'tenant_id', $1::uuid,
    'since', $2::timestamptz,
    'tte_p50_ms', scanner.tte_percentile($1, 0.5, $2),
    'tte_p95_ms', scanner.tte_percentile($1, 0.95, $2),
    'slo_p50_ms', 120000,
    'slo_p95_ms', 300000
)::text
"""

_ACTIVE = """
SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.tool), '[]')::text
FROM ingest.feed_snapshots s
WHERE s.state = 'active'
"""

_AUDIT = """
SELECT coalesce(jsonb_agg(to_jsonb(a) ORDER BY a.seq), '[]')::text
FROM ingest.snapshot_audit a
"""


async def _rows(conn: DbConn, sql: str, *args: Any) -> list[Row]:
    text = await conn.fetchval(sql, *args)
    rows = json.loads(text)
    assert isinstance(rows, list)
    return rows


async def _utc(conn: DbConn) -> None:
    await conn.execute("SET LOCAL TIME ZONE 'UTC'")


def _snapshot(conn: DbConn) -> Any:
    """One snapshot for every read of a profile; inside a caller's transaction (the
    export worker's) a savepoint of it."""
    if conn.is_in_transaction():
        return conn.transaction()
    return conn.transaction(isolation="repeatable_read", readonly=True)


async def consensus_rows(conn: DbConn, since: datetime | None) -> list[Row]:
    async with _snapshot(conn):
        await _utc(conn)
        return await _rows(conn, _CONSENSUS, since)


async def scan_metrics_rows(
    conn: DbConn, tenant: uuid.UUID | None, since: datetime | None
) -> tuple[list[Row], list[Row], list[Row], Row]:
    """(scans, phases, hourly TTE statistics, overall TTE percentiles)."""
    async with _snapshot(conn):
        await _utc(conn)
        scans = await _rows(conn, _SCANS, tenant, since)
        phases = await _rows(conn, _PHASES, tenant, since)
        stats = await _rows(conn, _TTE_STATS, tenant, since)
        tte = json.loads(await conn.fetchval(_TTE, tenant, since))
        return scans, phases, stats, tte


async def snapshot_rows(conn: DbConn) -> tuple[list[Row], list[Row]]:
    """(active snapshot records, the whole audit trail)."""
    async with _snapshot(conn):
        await _utc(conn)
        return await _rows(conn, _ACTIVE), await _rows(conn, _AUDIT)
