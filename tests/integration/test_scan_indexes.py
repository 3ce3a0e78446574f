"""Each of the seed's eight indexes still serves the query pattern it exists for, however
it is built (migration 0008: partial, BRIN): the plan of each pattern, with sequential
scans priced out so that the choice is between indexes, names the index."""

from __future__ import annotations

import asyncpg
import pytest

_SCANS = """
INSERT INTO scanner.scan_metrics (
    metrics_id, scan_id, tenant_id, surface_id, artifact_digest, artifact_type, is_replay,
    status, outcome_event_id, started_at, finished_at
)
SELECT
    md5('m' || i)::uuid, md5('s' || i)::uuid,
    md5('t' || (i % 5))::uuid,
    CASE WHEN i % 3 = 0 THEN md5('f' || i)::uuid END,
    'sha256:' || md5('a' || i), 'oci_image', i % 20 = 0,
    'completed', md5('o' || i)::uuid,
    timestamptz '2026-11-01 00:00Z' + i * interval '1.5 seconds',
    timestamptz '2026-11-01 00:01Z' + i * interval '1.5 seconds'
FROM generate_series(1, 3000) AS i
"""
_PHASES = """
INSERT INTO scanner.execution_phases (
    metrics_id, phase_name, phase_order, started_at, finished_at
)
SELECT s.metrics_id, p.name, p.ord, s.started_at, s.finished_at
FROM scanner.scan_metrics s
CROSS JOIN unnest(ARRAY['ingest', 'analyze', 'reachability', 'vex', 'sign', 'publish'])
    WITH ORDINALITY AS p(name, ord)
"""

TENANT = "md5('t1')::uuid"
RANGE = "started_at >= '2026-11-01 00:10Z' AND started_at < '2026-11-01 00:20Z'"
PATTERNS = {
    "idx_scan_metrics_tenant": (
        f"SELECT count(*) FROM scanner.scan_metrics WHERE tenant_id = {TENANT}"
    ),
    "idx_scan_metrics_artifact": (
        "SELECT * FROM scanner.scan_metrics WHERE artifact_digest = 'sha256:' || md5('a7')"
    ),
    "idx_scan_metrics_started": f"SELECT * FROM scanner.scan_metrics WHERE {RANGE}",
    "idx_scan_metrics_surface": (
        "SELECT * FROM scanner.scan_metrics WHERE surface_id = md5('f9')::uuid"
    ),
    "idx_scan_metrics_replay": "SELECT * FROM scanner.scan_metrics WHERE is_replay",
    "idx_scan_metrics_tenant_started": (
        f"SELECT * FROM scanner.scan_metrics WHERE tenant_id = {TENANT} AND {RANGE}"
    ),
    "idx_execution_phases_metrics": (
        "SELECT * FROM scanner.execution_phases WHERE metrics_id = md5('m7')::uuid"
    ),
    "idx_execution_phases_name": (
        "SELECT count(*) FROM scanner.execution_phases WHERE phase_name = 'analyze'"
    ),
}


@pytest.fixture
async def populated(db: asyncpg.Pool) -> asyncpg.Pool:
    async with db.acquire() as conn:
        await conn.execute(_SCANS)
        await conn.execute(_PHASES)
        await conn.execute("ANALYZE scanner.scan_metrics")
        await conn.execute("ANALYZE scanner.execution_phases")
    return db


@pytest.mark.parametrize(("index", "query"), list(PATTERNS.items()), ids=list(PATTERNS))
async def test_each_seed_index_serves_its_query_pattern(
    populated: asyncpg.Pool, index: str, query: str
) -> None:
    async with populated.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {query}"))
    assert f" {index} " in f"{plan} ".replace("\n", " "), plan


async def test_replays_and_surfaces_take_index_entries_only_where_set(
    populated: asyncpg.Pool,
) -> None:
    # The partial indexes hold the rows their queries can return, and no others.
    definitions = {
        r["indexname"]: r["indexdef"]
        for r in await populated.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'scanner'"
        )
    }
    assert definitions["idx_scan_metrics_replay"].endswith("WHERE is_replay")
    assert definitions["idx_scan_metrics_surface"].endswith("WHERE (surface_id IS NOT NULL)")
    assert "USING brin (started_at)" in definitions["idx_scan_metrics_started"]
