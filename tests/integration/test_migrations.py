"""Migrations: ordered, once under concurrency, refusing edited files."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.helpers import drop_database, empty_database, fleet_cli
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
        await migrate(conn, load_migrations(folder))
        first = sorted(folder.glob("*.sql"))[0]
        first.write_text(first.read_text() + "\n-- edited after the fact\n")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, load_migrations(folder))
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
