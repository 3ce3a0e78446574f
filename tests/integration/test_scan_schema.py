"""The scanner schema as docs/workers.md describes it: columns and types, generated columns, views,
the TTE percentile function and every index, read from the database catalogue."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

# Seed 000_1b721ff8eb89e770.txt, in the seed's order.
SCAN_METRICS = [
    ("metrics_id", "uuid"),
    ("scan_id", "uuid"),
    ("tenant_id", "uuid"),
    ("surface_id", "uuid"),
    ("artifact_digest", "text"),
    ("artifact_type", "text"),
    ("replay_manifest_hash", "text"),
    ("findings_sha256", "text"),
    ("vex_bundle_sha256", "text"),
    ("proof_bundle_sha256", "text"),
    ("sbom_sha256", "text"),
    ("policy_digest", "text"),
    ("feed_snapshot_id", "text"),
    ("started_at", "timestamp with time zone"),
    ("finished_at", "timestamp with time zone"),
    ("total_duration_ms", "integer"),
    ("t_ingest_ms", "integer"),
    ("t_analyze_ms", "integer"),
    ("t_reachability_ms", "integer"),
    ("t_vex_ms", "integer"),
    ("t_sign_ms", "integer"),
    ("t_publish_ms", "integer"),
    ("package_count", "integer"),
    ("finding_count", "integer"),
    ("vex_decision_count", "integer"),
    ("scanner_version", "text"),
    ("scanner_image_digest", "text"),
    ("is_replay", "boolean"),
    ("created_at", "timestamp with time zone"),
]
EXECUTION_PHASES = [
    ("id", "bigint"),  # BIGSERIAL
    ("metrics_id", "uuid"),
    ("phase_name", "text"),
    ("phase_order", "integer"),
    ("started_at", "timestamp with time zone"),
    ("finished_at", "timestamp with time zone"),
    ("duration_ms", "integer"),
    ("success", "boolean"),
    ("error_code", "text"),
    ("error_message", "text"),
    ("phase_metrics", "jsonb"),
]
GENERATED = {("scan_metrics", "total_duration_ms"), ("execution_phases", "duration_ms")}
INDEXES = {
    "idx_scan_metrics_tenant": ("scan_metrics", ["tenant_id"]),
    "idx_scan_metrics_artifact": ("scan_metrics", ["artifact_digest"]),
    "idx_scan_metrics_started": ("scan_metrics", ["started_at"]),
    "idx_scan_metrics_surface": ("scan_metrics", ["surface_id"]),
    "idx_scan_metrics_replay": ("scan_metrics", ["is_replay"]),
    "idx_scan_metrics_tenant_started": ("scan_metrics", ["tenant_id", "started_at"]),
    "idx_execution_phases_metrics": ("execution_phases", ["metrics_id"]),
    "idx_execution_phases_name": ("execution_phases", ["phase_name"]),
}
SCAN_TTE = [
    "metrics_id",
    "scan_id",
    "tte_ms",
    "tte_seconds",
    "ingest_percent",
    "analyze_percent",
    "reachability_percent",
    "vex_percent",
    "sign_percent",
    "publish_percent",
]
TTE_STATS = [
    "hour_bucket",
    "scan_count",
    "tte_avg_ms",
    "tte_p50_ms",
    "tte_p95_ms",
    "slo_p50_compliance_percent",
    "slo_p95_compliance_percent",
]


async def _columns(db: asyncpg.Pool, table: str) -> dict[str, str]:
    rows = await db.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'scanner' AND table_name = $1 ORDER BY ordinal_position",
        table,
    )
    return {r["column_name"]: r["data_type"] for r in rows}


@pytest.mark.parametrize(
    ("table", "expected"),
    [("scan_metrics", SCAN_METRICS), ("execution_phases", EXECUTION_PHASES)],
)
async def test_every_seed_column_exists_with_its_type(
    db: asyncpg.Pool, table: str, expected: list[tuple[str, str]]
) -> None:
    found = await _columns(db, table)
    assert found, f"scanner.{table} does not exist"
    missing = [(c, t) for c, t in expected if found.get(c) != t]
    assert missing == [], f"scanner.{table}: missing or mistyped {missing} (found {found})"
    # Seed columns come first, in the seed's order; additions follow them.
    assert list(found)[: len(expected)] == [c for c, _ in expected]


async def test_generated_columns_are_exactly_the_seeds_two(db: asyncpg.Pool) -> None:
    rows = await db.fetch(
        """
        SELECT c.relname, a.attname, a.attgenerated::text AS attgenerated,
               pg_get_expr(d.adbin, d.adrelid) AS expr
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = 'scanner' AND c.relkind = 'r' AND a.attnum > 0
          AND NOT a.attisdropped AND a.attgenerated <> ''
        """
    )
    assert {(r["relname"], r["attname"]) for r in rows} == GENERATED
    assert {r["attgenerated"] for r in rows} == {"s"}  # STORED
    for r in rows:
        assert "finished_at - started_at" in r["expr"], r["expr"]


async def test_keys_sequence_and_cascade(db: asyncpg.Pool) -> None:
    constraints = {
        (r["table"], r["contype"], tuple(r["columns"])): r
        for r in await db.fetch(
            """
            SELECT c.relname AS table, k.contype::text AS contype,
                   k.confdeltype::text AS confdeltype, f.relname AS references,
                   array_agg(a.attname ORDER BY u.ord) AS columns
            FROM pg_constraint k
            JOIN pg_class c ON c.oid = k.conrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_class f ON f.oid = k.confrelid
            CROSS JOIN LATERAL unnest(k.conkey) WITH ORDINALITY AS u(attnum, ord)
            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = u.attnum
            WHERE n.nspname = 'scanner' AND k.contype IN ('p', 'u', 'f')
            GROUP BY c.relname, k.contype, k.confdeltype, f.relname
            """
        )
    }
    assert ("scan_metrics", "p", ("metrics_id",)) in constraints
    assert ("scan_metrics", "u", ("scan_id",)) in constraints
    assert ("execution_phases", "p", ("id",)) in constraints
    # Phases are replaced as a whole under the scan row's lock (migration 0008): no key
    # of their own beside the seed's primary key.
    assert ("execution_phases", "u", ("metrics_id", "phase_order")) not in constraints
    fk = constraints[("execution_phases", "f", ("metrics_id",))]
    assert (fk["references"], fk["confdeltype"]) == ("scan_metrics", "c")  # ON DELETE CASCADE
    default = await db.fetchval(
        "SELECT column_default FROM information_schema.columns "
        "WHERE table_schema = 'scanner' AND table_name = 'execution_phases' "
        "AND column_name = 'id'"
    )
    assert default.startswith("nextval("), default  # BIGSERIAL


async def test_all_eight_seed_indexes_with_their_columns(db: asyncpg.Pool) -> None:
    names = {
        r["indexname"]
        for r in await db.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = 'scanner'")
    }
    assert set(INDEXES) <= names, f"missing {sorted(set(INDEXES) - names)}"
    rows = await db.fetch(
        """
        SELECT i.relname AS index, t.relname AS table,
               array_agg(a.attname ORDER BY k.ord) AS columns
        FROM pg_index x
        JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_class t ON t.oid = x.indrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace
        CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
        WHERE n.nspname = 'scanner' AND i.relname = ANY($1::text[])
        GROUP BY i.relname, t.relname
        """,
        list(INDEXES),
    )
    assert {r["index"]: (r["table"], list(r["columns"])) for r in rows} == INDEXES


@pytest.mark.parametrize(
    ("view", "expected"),
    [("scan_tte", SCAN_TTE), ("tte_stats", TTE_STATS)],
)
async def test_views_have_the_seeds_columns(
    db: asyncpg.Pool, view: str, expected: list[str]
) -> None:
    assert await db.fetchval(
        "SELECT count(*) FROM pg_views WHERE schemaname = 'scanner' AND viewname = $1", view
    )
    found = await _columns(db, view)
    assert set(expected) <= set(found), f"{view}: missing {sorted(set(expected) - set(found))}"
    # The seed's example queries filter on these.
    assert "tenant_id" in found
    if view == "scan_tte":
        assert {"is_replay", "started_at"} <= set(found)


async def test_tte_percentile_function_signature(db: asyncpg.Pool) -> None:
    row = await db.fetchrow(
        """
        SELECT pg_get_function_identity_arguments(p.oid) AS args,
               pg_get_function_result(p.oid) AS result, p.provolatile::text AS provolatile
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'scanner' AND p.proname = 'tte_percentile'
        """
    )
    assert row is not None, "scanner.tte_percentile does not exist"
    assert row["args"] == (
        "p_tenant_id uuid, p_percentile double precision, p_since timestamp with time zone"
    )
    assert row["result"] == "double precision"
    assert row["provolatile"] == "s"  # STABLE: usable in queries, reads tables


async def test_generated_durations_are_whole_milliseconds_rounded_down(
    db: asyncpg.Pool,
) -> None:
    metrics_id = uuid.uuid4()
    started = datetime(2026, 11, 1, 10, 0, 0, 250_999, tzinfo=UTC)
    finished = datetime(2026, 11, 1, 10, 2, 0, 250_000, tzinfo=UTC)  # 119 999.001 ms
    await db.execute(
        "INSERT INTO scanner.scan_metrics (metrics_id, scan_id, tenant_id, artifact_digest, "
        "artifact_type, started_at, finished_at, status, outcome_event_id) "
        "VALUES ($1, $2, $3, 'sha256:x', 'oci_image', $4, $5, 'completed', $6)",
        metrics_id,
        uuid.uuid4(),
        uuid.uuid4(),
        started,
        finished,
        uuid.uuid4(),
    )
    await db.execute(
        "INSERT INTO scanner.execution_phases (metrics_id, phase_name, phase_order, "
        "started_at, finished_at) VALUES ($1, 'analyze', 1, $2, $3)",
        metrics_id,
        started,
        finished,
    )
    assert (
        await db.fetchval(
            "SELECT total_duration_ms FROM scanner.scan_metrics WHERE metrics_id = $1", metrics_id
        )
        == 119_999
    )
    assert (
        await db.fetchval(
            "SELECT duration_ms FROM scanner.execution_phases WHERE metrics_id = $1", metrics_id
        )
        == 119_999
    )
    # Deleting a scan deletes its phases.
    await db.execute("DELETE FROM scanner.scan_metrics WHERE metrics_id = $1", metrics_id)
    assert await db.fetchval("SELECT count(*) FROM scanner.execution_phases") == 0


async def test_seed_example_queries_run(db: asyncpg.Pool) -> None:
    tenant = uuid.uuid4()
    async with db.acquire() as conn:
        await conn.fetch(
            "SELECT metrics_id, scan_id, tte_ms, tte_seconds, ingest_percent, analyze_percent, "
            "reachability_percent, vex_percent, sign_percent, publish_percent "
            "FROM scanner.scan_tte WHERE tenant_id = $1",
            tenant,
        )
        await conn.fetch(
            "SELECT scan_id, tte_ms, tte_seconds FROM scanner.scan_tte "
            "WHERE tenant_id = $1 AND NOT is_replay ORDER BY started_at DESC LIMIT 100",
            tenant,
        )
        await conn.fetch(
            "SELECT hour_bucket, scan_count, tte_avg_ms, tte_p50_ms, tte_p95_ms, "
            "slo_p50_compliance_percent, slo_p95_compliance_percent "
            "FROM scanner.tte_stats WHERE tenant_id = $1 "
            "AND hour_bucket >= NOW() - INTERVAL '24 hours'",
            tenant,
        )
        assert (
            await conn.fetchval(
                "SELECT scanner.tte_percentile(p_tenant_id := $1, p_percentile := 0.95, "
                "p_since := NOW() - INTERVAL '7 days')",
                tenant,
            )
            is None
        )
        await conn.fetch(
            "SELECT phase_name, AVG(duration_ms) AS avg_ms, "
            "PERCENTILE_CONT(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_ms "
            "FROM scanner.execution_phases ep "
            "JOIN scanner.scan_metrics sm ON ep.metrics_id = sm.metrics_id "
            "WHERE sm.tenant_id = $1 AND sm.started_at >= NOW() - INTERVAL '7 days' "
            "GROUP BY phase_name ORDER BY min(phase_order)",
            tenant,
        )
