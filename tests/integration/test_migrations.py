"""Migrations: ordered, once under concurrency, refusing edited files."""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from tests.helpers import drop_database, empty_database, fleet_cli
from workers.app import migration_steps
from workers.db import MigrationError, load_migrations, migrate, schema_dir


@pytest.fixture
async def fresh_database(database_url: str) -> Any:
    """An empty database next to the test database, dropped afterwards."""
    name = "fleet_migrate_probe"
    yield await empty_database(database_url, name)
    await drop_database(database_url, name)


async def test_ten_processes_starting_together_migrate_once(fresh_database: str) -> None:
    import asyncio
    import os
    import subprocess
    import sys

    env = {**os.environ, "FLEET_DATABASE_URL": fresh_database}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "workers",
            "migrate",
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(10)
    ]
    results = [await p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1] for r in results]
    applied_lines = sum(r[0].decode().count("applied 0") for r in results)
    assert applied_lines == len(load_migrations(schema_dir()))
    conn = await asyncpg.connect(fresh_database)
    try:
        versions = [
            r[0] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        ]
    finally:
        await conn.close()
    assert versions == [m.version for m in load_migrations(schema_dir())]


async def test_an_edited_applied_migration_is_refused(fresh_database: str, tmp_path: Path) -> None:
    folder = tmp_path / "schema"
    shutil.copytree(schema_dir(), folder)
    conn = await asyncpg.connect(fresh_database)
    try:
        await migrate(conn, load_migrations(folder), steps={})
        first = sorted(folder.glob("*.sql"))[0]
        first.write_text(first.read_text() + "\n-- edited after the fact\n")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, load_migrations(folder), steps={})
    finally:
        await conn.close()


async def test_check_reports_pending_without_applying(fresh_database: str) -> None:
    result = fleet_cli({"FLEET_DATABASE_URL": fresh_database}, "migrate", "--check")
    assert result.returncode == 1
    assert "pending 0001_fleet_inbox.sql" in result.stdout.decode()
    conn = await asyncpg.connect(fresh_database)
    try:
        assert await conn.fetchval("SELECT to_regclass('fleet.inbox')") is None
    finally:
        await conn.close()
    assert fleet_cli({"FLEET_DATABASE_URL": fresh_database}, "migrate").returncode == 0
    again = fleet_cli({"FLEET_DATABASE_URL": fresh_database}, "migrate", "--check")
    assert again.returncode == 0 and "up to date" in again.stdout.decode()


def test_badly_named_migration_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1_oops.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        load_migrations(tmp_path)


# --- 0007: stored purls made canonical ----------------------------------------------------

VULN = "CVE-2025-0018"
VENDOR, DISTRO = "https://vendor.example/psirt", "https://distro.example/security"
APP_AS_VENDOR_WROTE = "pkg:oci/app@sha256%3Aaa11?os=linux&arch=amd64"
APP_AS_DISTRO_WROTE = "pkg:oci/app@sha256%3Aaa11?arch=amd64&os=linux"
APP = "pkg:oci/app@sha256:aa11?arch=amd64&os=linux"
WEB_AS_VENDOR_WROTE = "pkg:oci/web@sha256%3Abb22?arch=amd64"
WEB_AS_DISTRO_WROTE = "pkg:oci/web@sha256%3Abb22?arch=amd64&os=linux"
WEB_ARCH = "pkg:oci/web@sha256:bb22?arch=amd64"
WEB = "pkg:oci/web@sha256:bb22?arch=amd64&os=linux"
NAMELESS = "pkg:maven/@1.3.4"  # stored by earlier releases; the purl specification refuses it


def _raw_id(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


async def _store_rows_as_before(conn: asyncpg.Connection) -> None:
    """What releases before canonical purls stored: purls as written, one pair per
    spelling, each resolved from the statements filed under its exact string."""
    t0 = datetime(2025, 6, 1, tzinfo=UTC)
    statements = [
        (1, VENDOR, APP_AS_VENDOR_WROTE, "not_affected", "vulnerable_code_not_present"),
        (2, DISTRO, APP_AS_DISTRO_WROTE, "affected", None),
        (3, VENDOR, WEB_AS_VENDOR_WROTE, "fixed", None),
        (4, DISTRO, WEB_AS_DISTRO_WROTE, "affected", None),
        (5, DISTRO, NAMELESS, "affected", None),
    ]
    await conn.executemany(
        "INSERT INTO vex.vex_raw (raw_id, issuer_id, component_purl, vulnerability_id, status, "
        "justification, raw_statement, published_at) VALUES ($1, $2, $3, $4, $5, $6, '{}', $7)",
        [(_raw_id(n), i, p, VULN, st, j, t0) for n, i, p, st, j in statements],
    )
    await conn.execute(
        "INSERT INTO vex.issuer_trust (issuer_id, trust_score, priority, issuer_type) "
        "VALUES ($1, 0.90, 1, 'vendor'), ($2, 0.80, 2, 'distro')",
        VENDOR,
        DISTRO,
    )
    rows = [
        (APP_AS_VENDOR_WROTE, "not_affected", 1, "pkg:oci/app"),
        (APP_AS_DISTRO_WROTE, "affected", 2, "pkg:oci/app"),
        (WEB_AS_VENDOR_WROTE, "fixed", 3, "pkg:oci/web"),
        (WEB_AS_DISTRO_WROTE, "affected", 4, "pkg:oci/web"),
        (NAMELESS, "affected", 5, "pkg:maven/"),
    ]
    await conn.executemany(
        "INSERT INTO vex.consensus (consensus_id, component_purl, vulnerability_id, "
        "resolved_status, contributing_vex_ids, confidence, digest, scope_base) "
        "VALUES ($1, $2, $3, $4, $5, 1, $6, $7)",
        [(uuid.uuid4(), p, VULN, st, [_raw_id(n)], f"{n:064x}", base) for p, st, n, base in rows],
    )
    # The pair the distro spelt was in the review queue when it disagreed earlier.
    await conn.execute(
        "INSERT INTO vex.consensus_conflicts (conflict_id, component_purl, vulnerability_id, "
        "reason, statuses, digest) VALUES ($1, $2, $3, 'status_disagreement', "
        "'{affected,not_affected}', $4)",
        uuid.uuid4(),
        APP_AS_DISTRO_WROTE,
        VULN,
        f"{2:064x}",
    )


async def test_stored_purls_collapse_into_canonical_pairs_recomputed_nothing_lost(
    fresh_database: str,
) -> None:
    migrations = load_migrations(schema_dir())
    before = [m for m in migrations if m.version < 7]
    conn = await asyncpg.connect(fresh_database)
    try:
        await migrate(conn, before, steps=migration_steps())
        await _store_rows_as_before(conn)
        plan = await migrate(conn, migrations, steps=migration_steps())
        assert [m.version for m in plan.pending] == [m.version for m in migrations[len(before) :]]

        statements = {
            r["raw_id"].int: (r["component_purl"], r["scope_base"])
            for r in await conn.fetch("SELECT * FROM vex.vex_raw")
        }
        assert statements == {  # every statement kept, under its own raw id
            1: (APP, "pkg:oci/app"),
            2: (APP, "pkg:oci/app"),
            3: (WEB_ARCH, "pkg:oci/web"),
            4: (WEB, "pkg:oci/web"),
            5: (NAMELESS, NAMELESS),
        }
        nullable = await conn.fetchval(
            "SELECT is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'vex' AND table_name = 'vex_raw' AND column_name = 'scope_base'"
        )
        assert nullable == "NO"

        consensus = {
            r["component_purl"]: (r["resolved_status"], [i.int for i in r["contributing_vex_ids"]])
            for r in await conn.fetch("SELECT * FROM vex.consensus")
        }
        # The two app spellings are one pair: the vendor (priority 1) decides, the distro
        # dissents. The vendor's arch=amd64 statement reaches the distro's exact product.
        assert consensus == {
            APP: ("not_affected", [1]),
            WEB_ARCH: ("fixed", [3]),
            WEB: ("fixed", [3]),
            NAMELESS: ("affected", [5]),  # kept as stored: not a purl, not matched
        }
        scope_bases = {
            r["component_purl"]: r["scope_base"]
            for r in await conn.fetch("SELECT component_purl, scope_base FROM vex.consensus")
        }
        assert scope_bases[APP] == "pkg:oci/app" and scope_bases[WEB] == "pkg:oci/web"

        # Every spelling that held a row is withdrawn; every canonical result announced.
        events = [
            msgspec.json.decode(r["payload"])
            for r in await conn.fetch(
                "SELECT payload::text AS payload FROM vex.consensus_outbox ORDER BY seq"
            )
        ]
        announced = {(e["componentPurl"], e.get("resolvedStatus")) for e in events}
        assert announced == {
            (APP_AS_VENDOR_WROTE, None),
            (APP_AS_DISTRO_WROTE, None),
            (WEB_AS_VENDOR_WROTE, None),
            (WEB_AS_DISTRO_WROTE, None),
            (APP, "not_affected"),
            (WEB_ARCH, "fixed"),
            (WEB, "fixed"),
        }
        assert {e["reason"] for e in events} == {"policy_knob"}

        (conflict,) = await conn.fetch("SELECT * FROM vex.consensus_conflicts")
        assert (conflict["component_purl"], conflict["resolution"]) == (APP, "superseded")

        again = await migrate(conn, migrations, steps=migration_steps())
        assert again.pending == []
    finally:
        await conn.close()
