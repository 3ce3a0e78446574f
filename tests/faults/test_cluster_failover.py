"""Failover on a real Valkey Cluster: three primaries, three replicas, every stream in
three partitions, every stream worker as real processes, while a primary is SIGKILLed
and its replica takes over (no ``CLUSTER FAILOVER``: the cluster notices the dead node
after ``cluster-node-timeout`` and promotes the replica itself).

Producers publish with the one publish function and ``replicas=1`` (``WAIT 1``): a
chunk not confirmed by a replica is published again, so a duplicate is possible and a
loss is not. At the end the chaos checks of tests/faults/test_chaos.py hold: every
valid event's effect exists exactly once, nothing is pending on any partition, and the
dead-letter streams of all partitions hold exactly the poison that was injected.

The export worker runs too, with S3: every request has one job and one signed bundle,
and its outcome is on ``export:events`` exactly once; every ``vex:consensus`` change is
announced exactly once. Both publish with ``FLEET_PUBLISH_REPLICAS=1``.
snapshot-retention runs as well; it uses Valkey only at start-up and for readiness (its
schedule is a PostgreSQL advisory lock), so it must be ready before the kills and again
after them, and stop cleanly.

``make test`` runs a short version (one kill); ``make chaos`` the long one
(``FLEET_CLUSTER_CHAOS_EVENTS``, a kill of some primary every few seconds, each killed
node restarted as a replica). The figures are printed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.exceptions as redis_exc
import structlog.testing

from contracts import Event
from contracts.exports import ExportCompleted, ExportFailed, ExportProfile
from contracts.wire import decode_event
from devkit import workload
from devkit.cluster import EmbeddedCluster, embedded_cluster
from devkit.demo_exports import export_key
from devkit.embedded import free_port, start_postgres, start_s3
from tests.faults.test_chaos import Part, _notify_part, _scan_part, _vex_part
from tests.helpers import fleet_process, migrated_database, process_log, server_dir
from workers import cluster, streams
from workers.db import _init_connection
from workers.kernel.lease import lease_key
from workers.partitions import partition_key, stream_keys
from workers.publishing import NotReplicated, publish
from workers.settings import load_settings
from workers.vex_consensus import service as vex
from workers.vex_consensus.documents import parse_document

EVENTS = int(os.environ.get("FLEET_CLUSTER_CHAOS_EVENTS", "1200"))
KILLS = int(os.environ.get("FLEET_CLUSTER_CHAOS_KILLS", "1"))
SECONDS = float(os.environ.get("FLEET_CLUSTER_CHAOS_SECONDS", "4"))
EXPORTS = min(200, max(12, EVENTS // 50))
PARTITIONS = 3
SNAPSHOTS = "snapshot-retention"
POISON_PER_STREAM = 3

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    with server_dir("streamfleet-cluster-") as folder:
        yield folder


def _export_part(count: int) -> Part:
    """Export requests over every profile, one in six invalid (``export.failed``), each
    from a tenant of its own so the outcomes spread over every partition."""
    kinds: list[tuple[ExportProfile, dict[str, str]]] = [
        ("scan-metrics", {}),
        ("snapshots", {}),
        ("vex", {"format": "openvex"}),
    ]
    profiles = itertools.cycle([*kinds, *kinds, ("vex", {"format": "yaml"})])
    requests = [
        workload.export_request(profile, source="failover-test", **options)
        for profile, options in itertools.islice(profiles, count)
    ]

    async def check(conn: asyncpg.Connection) -> None:
        jobs = await conn.fetch("SELECT status, published_at FROM export.jobs")
        assert len(jobs) == len(requests)
        assert all(j["published_at"] is not None for j in jobs)
        failed = sum(1 for r in requests if r.options.get("format") == "yaml")
        assert sum(j["status"] == "failed" for j in jobs) == failed

    return Part("export", "export:requests", "export-workers", list[Event](requests), check)


def _event_key(event: Event) -> str:
    # Spread over every partition (the demo's five tenants hash to two of three), so
    # the killed primary certainly serves some of each stream.
    return str(event.event_id)


async def _publish_confirmed(client: Any, stream: str, events: list[Event], pause: float) -> int:
    """Publish with WAIT 1 until every chunk is confirmed, ``pause`` seconds apart (so the
    kills land mid-workload); returns the chunks published again."""
    retried = 0
    for start in range(0, len(events), 100):
        await asyncio.sleep(pause)  # spreads the workload over the kill window
        chunk = events[start : start + 100]
        while True:
            try:
                await publish(
                    client,
                    stream,
                    chunk,
                    partitions=PARTITIONS,
                    partition_key=_event_key,
                    replicas=1,
                    wait_timeout_ms=2000,
                )
                break
            except (NotReplicated, redis_exc.RedisError, redis_exc.RedisClusterException, OSError):
                # A failover in progress: the chunk goes again whole (duplicates are
                # absorbed by the inbox; an unconfirmed chunk may be lost with its primary).
                retried += 1
                await asyncio.sleep(0.3)  # backoff while the replica takes over
    return retried


async def _inject_poison(client: Any, part: Part) -> None:
    """Each poison entry on its own partition, confirmed by a replica before going on."""
    for index, data in enumerate(part.poison):
        key = partition_key(part.stream, index % PARTITIONS)
        node = cluster.node_client(client, key)
        try:
            async with node.pipeline(transaction=False) as pipe:
                pipe.xadd(key, {"type": part.events[0].event_type().encode(), "data": data})
                pipe.execute_command("WAIT", 1, 5000)
                replies = await pipe.execute()
            assert int(replies[-1]) >= 1
        finally:
            await node.aclose()


async def _consumed(client: Any, parts: list[Part]) -> bool:
    for p in parts:
        for key in stream_keys(p.stream, PARTITIONS):
            try:
                found = await streams.group_statuses(client, key)
            except (redis_exc.RedisError, redis_exc.RedisClusterException, OSError):
                return False
            st = {s.group: s for s in found}.get(p.group)
            if st is None or st.pending or (st.lag or 0):
                return False
    return True


def _kill_a_primary(nodes: EmbeddedCluster, rng: random.Random, stream: str) -> Any:
    """SIGKILL the primary of a random partition of ``stream``; its replica is the one
    the cluster will promote."""
    key = partition_key(stream, rng.randrange(PARTITIONS))
    primary = nodes.primary_for(key)
    replica = nodes.replica_of(primary)
    primary.kill()
    return primary, replica


async def _wait_promoted(replica: Any, timeout: float = 30.0) -> float:
    started = time.monotonic()
    while replica.role() != "master":
        assert time.monotonic() - started < timeout, "the replica was not promoted"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_workers_ride_through_a_primary_failover_without_loss(cluster_dir: Path) -> None:
    rng = random.Random(int(os.environ.get("FLEET_CHAOS_SEED", "11")))
    found = (_notify_part(EVENTS), _scan_part(EVENTS), _vex_part(EVENTS), _export_part(EXPORTS))
    parts = [p for p in found if p]
    for p in parts:
        p.poison = [b"{not json %d" % i for i in range(POISON_PER_STREAM - 1)] + [
            b'{"type":"poison"}'
        ]
    pg, pg_url = start_postgres(cluster_dir / "pg")
    s3, s3_url = start_s3()
    key_file = export_key(cluster_dir)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    figures: dict[str, Any] = {"events": sum(len(p.events) for p in parts), "kills": 0}
    try:
        db_url = await migrated_database(pg_url, "cluster_chaos")
        await _seed_vex(db_url)
        with embedded_cluster(cluster_dir / "valkey", node_timeout_ms=1000) as nodes:
            env = {
                "FLEET_VALKEY_URL": nodes.url,
                "FLEET_STREAM_PARTITIONS": str(PARTITIONS),
                "FLEET_DATABASE_URL": db_url,
                "FLEET_HTTP_PORT": "0",
                "FLEET_RECLAIM_IDLE_SECONDS": "2",
                "FLEET_RECLAIM_INTERVAL_SECONDS": "0.5",
                "FLEET_BLOCK_MS": "200",
                "FLEET_BATCH_SIZE": "200",
                "FLEET_LOG_LEVEL": "warning",
                "FLEET_SHUTDOWN_GRACE_SECONDS": "10",
                "FLEET_MAINTENANCE_INTERVAL_SECONDS": "1",
                "FLEET_PUBLISH_REPLICAS": "1",
                "FLEET_S3_ENDPOINT_URL": s3_url,
                "FLEET_EXPORT_KEY_FILE": str(key_file),
            }
            settings = load_settings(env)
            client: Any = await cluster.open_client(settings)
            try:
                assert cluster.is_cluster(client)
                for p in parts:
                    procs[p.worker] = fleet_process(env, "run", p.worker)
                ready_port = free_port()
                procs[SNAPSHOTS] = fleet_process(
                    {**env, "FLEET_HTTP_PORT": str(ready_port)}, "run", SNAPSHOTS
                )
                for name, proc in procs.items():
                    # Started before the first kill: a worker starting while a primary is
                    # down exits (code 4), as it should, which is not what this tests.
                    await _wait_running(client, proc, parts, name, ready_port)
                for p in parts:
                    await _inject_poison(client, p)

                chunks = sum(len(p.events) // 100 + 1 for p in parts)

                async def produce() -> int:
                    retried = 0
                    for p in parts:
                        pause = SECONDS / chunks
                        retried += await _publish_confirmed(client, p.stream, p.events, pause)
                    return retried

                producing = asyncio.create_task(produce())
                takeovers: list[float] = []
                for _ in range(KILLS):
                    # Mid-workload: the kills spread over the publishing window.
                    await asyncio.sleep(rng.uniform(0.3, 0.6) * SECONDS / KILLS)
                    victim_stream = rng.choice(parts).stream
                    primary, replica = _kill_a_primary(nodes, rng, victim_stream)
                    figures["kills"] += 1
                    takeovers.append(await _wait_promoted(replica))
                    # The killed node comes back as a replica of the promoted one.
                    await asyncio.to_thread(primary.start)
                    await asyncio.to_thread(nodes.wait_healthy)
                figures["retried_chunks"] = await producing
                figures["takeover_seconds"] = [round(t, 1) for t in takeovers]

                deadline = time.monotonic() + 120
                while not await _consumed(client, parts):
                    assert time.monotonic() < deadline, "the fleet did not drain within 120 s"
                    for name, proc in procs.items():
                        assert proc.poll() is None, f"{name} exited: {process_log(proc)[-2000:]}"
                    await asyncio.sleep(0.5)
                await _wait_announced(db_url, deadline)

                for name, proc in procs.items():
                    await _wait_running(client, proc, parts, name, ready_port)
                    proc.send_signal(signal.SIGTERM)
                for name, proc in procs.items():
                    code = proc.wait(timeout=30)
                    assert code == 0, f"{name} exit {code}: {process_log(proc)[-2000:]}"

                await _check(client, db_url, parts, figures)
            finally:
                await client.aclose()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        s3.stop()
        pg.cleanup()


async def _seed_vex(db_url: str) -> None:
    """VEX statements and trust for the advisories' components (as ``fleet vex import``
    and ``fleet vex trust set`` would), so advisories change consensus results and the
    vex worker publishes them; the results of the import itself wait in the outbox for
    the worker too."""
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1, init=_init_connection)
    try:
        documents = [parse_document(data) for _, data in workload.vex_documents()]
        # capture_logs: the import's thousands of decision lines stay out of the output.
        with structlog.testing.capture_logs():
            async with pool.acquire() as conn, conn.transaction():
                await vex.set_trust(conn, workload.vex_trust())
                await vex.import_documents(conn, documents)
    finally:
        await pool.close()


async def _wait_announced(db_url: str, deadline: float) -> None:
    """Until every export outcome and vex:consensus change is published: the workers'
    background tasks publish what a failover deferred."""
    conn = await asyncpg.connect(db_url)
    try:
        while True:
            left = await conn.fetchval(
                "SELECT (SELECT count(*) FROM export.jobs WHERE published_at IS NULL)"
                " + (SELECT count(*) FROM vex.consensus_outbox)"
            )
            if left == 0:
                return
            assert time.monotonic() < deadline, f"{left} derived event(s) never published"
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def _wait_running(
    client: Any, proc: subprocess.Popen[bytes], parts: list[Part], name: str, ready_port: int
) -> None:
    """SIGTERM is graceful once the worker runs, which a stream worker's consumer-name
    lease proves, and snapshot-retention's readiness endpoint."""
    deadline = time.monotonic() + 60
    if name == SNAPSHOTS:
        url = f"http://127.0.0.1:{ready_port}/health/readiness"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            while True:
                assert proc.poll() is None, f"{name} exited: {process_log(proc)[-2000:]}"
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(url) as response:
                        if response.status == 200:
                            return
                assert time.monotonic() < deadline, f"{name} never ready"
                await asyncio.sleep(0.2)
    stream, group = next((p.stream, p.group) for p in parts if p.worker == name)
    while True:
        tokens = [await client.get(lease_key(stream, f"{group}-{n}")) for n in range(3)]
        if any(t and int(t.split(b"/")[1]) == proc.pid for t in tokens):
            return
        assert time.monotonic() < deadline, f"{name} never started"
        await asyncio.sleep(0.1)


async def _check(client: Any, db_url: str, parts: list[Part], figures: dict[str, Any]) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        lost = duplicated = 0
        for p in parts:
            expected = {e.event_id for e in p.events}
            rows = await conn.fetch(
                "SELECT event_id FROM fleet.inbox WHERE group_name = $1", p.group
            )
            got = [r["event_id"] for r in rows]
            lost += len(expected - set(got))
            duplicated += len(got) - len(set(got)) + len(set(got) - expected)
            if p.table_check is not None:
                await p.table_check(conn)
    finally:
        await conn.close()
    pending = 0
    dead_letters: dict[str, list[bytes]] = {}
    for p in parts:
        dead_letters[p.stream] = []
        for key in stream_keys(p.stream, PARTITIONS):
            pending += int((await client.xpending(key, p.group))["pending"])
            rows = await client.xrange(streams.dlq_name(key))
            dead_letters[p.stream] += [f.get(b"data", b"") for _, f in rows]
    outcomes = await _announced(client, "export:events")
    changes = await _announced(client, "vex:consensus")
    figures["export_outcomes"] = len(outcomes)
    figures["consensus_changes"] = len(changes)
    figures["announced_twice"] = (
        len(outcomes) - len(set(outcomes)) + len(changes) - len(set(changes))
    )
    figures.update(lost=lost, duplicated=duplicated, pending=pending)
    figures["dead_lettered"] = sum(len(v) for v in dead_letters.values())
    print("\ncluster failover figures:", figures)
    assert lost == 0
    assert duplicated == 0
    assert pending == 0
    for p in parts:
        assert sorted(dead_letters[p.stream]) == sorted(p.poison), p.stream
    requested = next(p.events for p in parts if p.stream == "export:requests")
    assert sorted(outcomes) == sorted(r.event_id for r in requested)
    assert len(changes) == len(set(changes)) > 0


async def _announced(client: Any, stream: str) -> list[uuid.UUID]:
    """The ids announced on every partition of ``stream``: export ids on export:events,
    event ids on vex:consensus."""
    found: list[uuid.UUID] = []
    for key in stream_keys(stream, PARTITIONS):
        for _, fields in await client.xrange(key):
            event = decode_event(fields)
            if isinstance(event, ExportCompleted | ExportFailed):
                found.append(event.export_id)
            else:
                found.append(event.event_id)
    return found
