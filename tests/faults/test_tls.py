"""Workers over TLS: ``rediss://`` to Valkey and ``sslmode=verify-full`` to PostgreSQL.

Real servers that accept TLS only (``tests/tls_servers.py``), certificates made by
the test, password users on both. A worker process records every event through
them; a client that trusts the wrong CA, reaches a name the certificate does not
cover, or does not use TLS at all is refused with one ``error:`` line naming the
server, never a traceback.

redis-py reads ``ssl_ca_certs`` and ``ssl_cert_reqs`` from the URL query (and checks
the hostname by default); asyncpg reads libpq's ``sslmode`` and ``sslrootcert``.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from contracts import encode_entry
from devkit import workload
from devkit.cluster import ClusterTls, EmbeddedCluster, embedded_cluster
from tests.helpers import fleet_cli, fleet_process, poll, process_log, server_dir
from tests.tls_servers import MISMATCHED_HOST, REDIS_SERVER, TlsStack, tls_stack
from workers import streams
from workers.partitions import stream_keys
from workers.publishing import publish

STREAM = "notify:delivery"
GROUP = "notify-workers"
EVENTS = 2_000


@pytest.fixture(scope="module")
def stack() -> Iterator[TlsStack]:
    with tls_stack() as servers:
        yield servers


@pytest.fixture(scope="module")
def migrated(stack: TlsStack) -> TlsStack:
    """``fleet migrate`` itself runs over ``sslmode=verify-full``."""
    result = fleet_cli({"FLEET_DATABASE_URL": stack.database_url()}, "migrate", timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    assert b"up to date" in result.stdout
    return stack


@pytest.fixture
async def valkey(stack: TlsStack) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(stack.valkey_url(), decode_responses=False)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def pg(migrated: TlsStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(migrated.database_url())
    await conn.execute("TRUNCATE notify.delivery_log, fleet.inbox")
    yield conn
    await conn.close()


def _env(stack: TlsStack, **overrides: str) -> dict[str, str]:
    return {
        "FLEET_VALKEY_URL": stack.valkey_url(),
        "FLEET_DATABASE_URL": stack.database_url(),
        "FLEET_HTTP_PORT": "0",
        "FLEET_BLOCK_MS": "100",
        "FLEET_LOG_LEVEL": "warning",
        **overrides,
    }


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise


async def test_worker_over_tls_records_every_event(
    stack: TlsStack, valkey: aioredis.Redis, pg: asyncpg.Connection
) -> None:
    events = list(workload.notification_events(EVENTS, seed=71))
    await streams.ensure_group(valkey, STREAM, GROUP)
    await publish(valkey, STREAM, events)
    proc = fleet_process(_env(stack, FLEET_CONSUMER_NAME="tls-worker"), "run", "notify-delivery")
    try:

        async def finished() -> bool:
            assert proc.poll() is None, process_log(proc)
            [status] = await streams.group_statuses(valkey, STREAM)
            rows = await pg.fetchval("SELECT count(*) FROM notify.delivery_log")
            return status.pending == 0 and (status.lag or 0) == 0 and rows == len(events)

        await poll(finished, timeout=90, what="the worker to record every event over TLS")
        # Every connection the worker holds to PostgreSQL is encrypted (pg_stat_ssl) ...
        connections = await pg.fetch(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
            "WHERE a.usename = $1 AND a.pid <> pg_backend_pid()",
            stack.postgres.user,
        )
        assert connections and all(r["ssl"] for r in connections), connections
        # ... and it talks to Valkey as the ACL user, not as ``default``.
        clients: list[dict[str, Any]] = await valkey.client_list()
        workers = [c for c in clients if c.get("name") == "streamfleet"]
        assert workers and {c["user"] for c in workers} == {stack.valkey.user}, clients
    finally:
        code = _stop(proc)
    assert code == 0, process_log(proc)
    assert await pg.fetchval("SELECT count(*) FROM notify.delivery_log") == len(events)
    assert await pg.fetchval("SELECT count(*) FROM fleet.inbox") == len(events)
    assert int(await valkey.xlen(streams.dlq_name(STREAM))) == 0


def _one_error_line(result: subprocess.CompletedProcess[bytes]) -> str:
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode != 0, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def _valkey_case(stack: TlsStack, problem: str) -> tuple[dict[str, str], str, str]:
    if problem == "wrong-ca":
        url, host = stack.valkey_url(ca=stack.certs.other_ca), "localhost"
    elif problem == "hostname":
        url, host = stack.valkey_url(host=MISMATCHED_HOST), MISMATCHED_HOST
    else:  # the machine's trust store does not know the test CA
        url, host = stack.valkey_url(ca=None), "localhost"
    return {"FLEET_VALKEY_URL": url}, f"{host}:{stack.valkey.port}", "certificate verify failed"


def _postgres_case(stack: TlsStack, problem: str) -> tuple[dict[str, str], str, str]:
    if problem == "wrong-ca":
        url, host = stack.database_url(ca=stack.certs.other_ca), "localhost"
    elif problem == "hostname":
        url, host = stack.database_url(host=MISMATCHED_HOST), MISMATCHED_HOST
    else:
        raise AssertionError(problem)
    return {"FLEET_DATABASE_URL": url}, f"{host}:{stack.postgres.port}", "certificate verify failed"


@pytest.mark.parametrize(
    ("server", "problem", "command"),
    [
        ("valkey", "wrong-ca", ("run", "notify-delivery")),
        ("valkey", "hostname", ("run", "notify-delivery")),
        ("valkey", "system-trust-store", ("status",)),
        ("postgres", "wrong-ca", ("run", "notify-delivery")),
        ("postgres", "hostname", ("run", "notify-delivery")),
        ("postgres", "wrong-ca", ("migrate",)),
    ],
)
def test_an_unverifiable_server_is_one_clear_error_naming_it(
    stack: TlsStack, server: str, problem: str, command: tuple[str, ...]
) -> None:
    case = _valkey_case if server == "valkey" else _postgres_case
    env, address, why = case(stack, problem)
    result = fleet_cli(_env(stack, **env), *command, timeout=60)
    line = _one_error_line(result)
    assert address in line, line
    assert why in line.lower(), line
    assert stack.valkey.password not in line and stack.postgres.password not in line


@pytest.mark.parametrize(
    ("server", "command"),
    [("valkey", ("run", "notify-delivery")), ("valkey", ("status",)), ("postgres", ("migrate",))],
)
def test_a_client_without_tls_is_refused(
    stack: TlsStack, server: str, command: tuple[str, ...]
) -> None:
    if server == "valkey":
        env = {"FLEET_VALKEY_URL": stack.valkey_url(ca=None, scheme="redis")}
        address, server_name = f"localhost:{stack.valkey.port}", "Valkey"
    else:
        env = {"FLEET_DATABASE_URL": stack.database_url(sslmode="disable", ca=None)}
        address, server_name = f"localhost:{stack.postgres.port}", "PostgreSQL"
    result = fleet_cli(_env(stack, **env), *command, timeout=60)
    line = _one_error_line(result)
    assert address in line and server_name in line, line
    if server == "postgres":
        assert "no encryption" in line, line  # refused by pg_hba.conf: hostssl only


@pytest.fixture(scope="module")
def tls_cluster(stack: TlsStack) -> Iterator[EmbeddedCluster]:
    """Three primaries and three replicas speaking TLS only (clients, cluster bus and
    replication), with the stack's certificates; Debian's redis-server, built with TLS."""
    tls = ClusterTls(cert=stack.certs.server_cert, key=stack.certs.server_key, ca=stack.certs.ca)
    with (
        server_dir("streamfleet-tls-cluster-") as folder,
        embedded_cluster(folder, tls=tls, binary=REDIS_SERVER) as nodes,
    ):
        yield nodes


async def test_a_tls_cluster_takes_replicated_publishes_and_feeds_a_worker(
    migrated: TlsStack, tls_cluster: EmbeddedCluster, pg: asyncpg.Connection
) -> None:
    """``rediss://`` to a cluster: ``fleet publish --replicas 1`` (its WAIT goes through a
    connection of its own to each key's primary, TLS as well), ``fleet status`` over every
    partition, and a worker recording every event."""
    env = _env(
        migrated,
        FLEET_VALKEY_URL=tls_cluster.url,
        FLEET_STREAM_PARTITIONS="3",
        FLEET_CONSUMER_NAME="tls-cluster-worker",
    )
    events = list(workload.notification_events(300, seed=73))
    lines = b"".join(encode_entry(e)["data"] + b"\n" for e in events)
    published = fleet_cli(
        env, "publish", STREAM, "-", "--replicas", "1", "--partition-key", "eventId", stdin=lines
    )
    assert published.returncode == 0, published.stderr.decode()
    proc = fleet_process(env, "run", "notify-delivery")
    try:

        async def finished() -> bool:
            assert proc.poll() is None, process_log(proc)
            rows = await pg.fetchval("SELECT count(*) FROM notify.delivery_log")
            return int(rows) == len(events)

        await poll(finished, timeout=90, what="the worker to record every event from the cluster")
        status = fleet_cli(env, "status", "--json")
        assert status.returncode == 0, status.stderr.decode()
        rows = {r["stream"]: r for r in json.loads(status.stdout) if r["group"] == GROUP}
        # One row per partition and their sum under the stream's name.
        assert set(rows) == {*stream_keys(STREAM, 3), STREAM}, rows
        assert sum(rows[k]["length"] for k in stream_keys(STREAM, 3)) == len(events), rows
        assert rows[STREAM]["length"] == len(events), rows
    finally:
        code = _stop(proc)
    assert code == 0, process_log(proc)
    assert await pg.fetchval("SELECT count(*) FROM fleet.inbox") == len(events)
