"""Every ``fleet`` command that talks to Valkey, against a real Valkey Cluster with
``FLEET_STREAM_PARTITIONS=3`` (docs/scaling.md): no command may be cross-slot.

One embedded cluster (three primaries, three replicas, devkit/cluster.py) serves the
whole module; the commands run in this process through typer's runner (each opens its
own cluster client, as from a shell), ``fleet run`` as a real process. Commands that
touch only PostgreSQL or S3 (``migrate``, ``tte``, ``snapshots``, ``export``,
``contracts``, ``vex show|export|verify``, ``vex trust list``, ``vex conflicts list``)
have no Valkey side; ``fleet demo`` starts a stack of its own. ``vex import``,
``vex trust set`` and ``vex conflicts resolve`` publish their outbox here.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster
from typer.testing import CliRunner

from contracts import encode_entry
from devkit import workload
from devkit.cluster import EmbeddedCluster, embedded_cluster
from tests.helpers import fleet_process, process_log, server_dir
from workers import streams
from workers.cli import app
from workers.partitions import partition_key, stream_keys

STREAM = "notify:delivery"
GROUP = "notify-workers"
P = 3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nodes() -> Iterator[EmbeddedCluster]:
    with server_dir("streamfleet-cluster-cli-") as folder, embedded_cluster(folder) as started:
        yield started


@pytest.fixture
def valkey(nodes: EmbeddedCluster) -> Iterator[RedisCluster]:
    client = RedisCluster(host="127.0.0.1", port=nodes.nodes[0].port)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield client
    client.close()


def env_for(nodes: EmbeddedCluster, **extra: str) -> dict[str, str]:
    return {
        "FLEET_VALKEY_URL": nodes.url,
        "FLEET_STREAM_PARTITIONS": str(P),
        "FLEET_LOG_LEVEL": "warning",
        "COLUMNS": "220",
        **extra,
    }


def fleet(env: dict[str, str], *args: str, stdin: bytes | None = None) -> Any:
    """``fleet ARGS`` in this process; asserts exit 0 and no cross-slot refusal."""
    result = CliRunner().invoke(app, list(args), env=env, input=stdin)
    text = result.output
    assert "CROSSSLOT" not in text, text
    assert result.exit_code == 0, f"fleet {' '.join(args)} exit {result.exit_code}: {text}"
    return result


def _lines(count: int, seed: int) -> bytes:
    events = workload.notification_events(count, seed=seed)
    return b"".join(encode_entry(e)["data"] + b"\n" for e in events)


def test_publish_status_top_consumers_and_trim(nodes: EmbeddedCluster, valkey: Any) -> None:
    env = env_for(nodes)
    # Spread by event id: the workload's five tenants hash to two of three partitions.
    spread = ("--partition-key", "eventId")
    published = fleet(env, "publish", STREAM, "-", *spread, stdin=_lines(30, seed=3))
    assert "published 30 event(s)" in published.output
    # With WAIT: each chunk confirmed by the primary's replica.
    fleet(env, "publish", STREAM, "-", "--replicas", "1", *spread, stdin=_lines(6, seed=4))
    lengths = [int(valkey.xlen(k)) for k in stream_keys(STREAM, P)]
    assert sum(lengths) == 36 and min(lengths) >= 3 and int(valkey.exists(STREAM)) == 0

    for key in stream_keys(STREAM, P):
        valkey.xgroup_create(key, GROUP, id="0")
        valkey.xreadgroup(GROUP, "gone", {key: ">"}, count=2)
        valkey.xreadgroup(GROUP, "alive", {key: ">"}, count=1)
    rows = json.loads(fleet(env, "status", "--json").output)
    summed = next(r for r in rows if r["stream"] == STREAM and r["group"] == GROUP)
    assert (summed["length"], summed["pending"], summed["lag"]) == (36, 3 * P, 36 - 3 * P)
    assert {r["stream"] for r in rows} >= set(stream_keys(STREAM, P))
    assert GROUP in fleet(env, "status").output

    frame = fleet(env, "top", "--once", "--interval", "0.2", "--stream", STREAM).output
    assert "fleet top" in frame and "{notify:delivery:2}" in frame

    pruned = fleet(env, "consumers", "prune", "--stream", STREAM, "--idle", "0").output
    assert pruned.count("deleted 1 consumer(s), moved 2") == P, pruned
    for key in stream_keys(STREAM, P):
        pending = valkey.xpending_range(key, GROUP, min="-", max="+", count=10)
        valkey.xack(key, GROUP, *[p["message_id"] for p in pending])
    planned = fleet(env, "trim", "--stream", STREAM, "--retention-days", "0", "--dry-run")
    assert planned.output.count("would remove 3 of") == P, planned.output
    fleet(env, "trim", "--stream", STREAM, "--retention-days", "0")
    assert sum(int(valkey.xlen(k)) for k in stream_keys(STREAM, P)) == 36 - 3 * P


def test_dead_letters_are_listed_replayed_and_purged_within_their_partition(
    nodes: EmbeddedCluster, valkey: Any
) -> None:
    env = env_for(nodes)
    ids: dict[int, list[str]] = {}
    for k in range(P):
        dlq = streams.dlq_name(partition_key(STREAM, k))
        ids[k] = [
            valkey.xadd(dlq, {"type": "notification.sent", "data": f'{{"n":{k}{i}}}',
                              "dlq.reason": reason}).decode()
            for i, reason in enumerate(["invalid_event", "max_deliveries"])
        ]  # fmt: skip
    listed = fleet(env, "dlq", "list", STREAM).output
    assert listed.count("invalid_event") == P and listed.count("max_deliveries") == P
    assert "invalid_event" in fleet(env, "dlq", "list", STREAM, "--partition", "1").output

    replayed = fleet(env, "dlq", "replay", STREAM, "--reason", "max_deliveries").output
    assert f"replayed {P} entr" in replayed
    one = fleet(env, "dlq", "replay", STREAM, ids[2][0], "--partition", "2").output
    assert "replayed 1 entr" in one
    assert [int(valkey.xlen(k)) for k in stream_keys(STREAM, P)] == [1, 1, 2]
    purged = fleet(env, "dlq", "purge", STREAM, "--yes").output
    assert f"purged {P - 1} dead letter(s)" in purged
    assert all(int(valkey.xlen(streams.dlq_name(k))) == 0 for k in stream_keys(STREAM, P))


def test_partitions_status_and_retire_a_drained_key(nodes: EmbeddedCluster, valkey: Any) -> None:
    # Lowering P from 4 to 3: {S:3} drains; one entry on it, read and acknowledged.
    env = env_for(nodes, FLEET_STREAM_PARTITIONS_PREVIOUS="4")
    old = partition_key(STREAM, 3)
    valkey.xadd(old, {"type": "x", "data": "{}"})
    valkey.xgroup_create(old, GROUP, id="0")
    (_, entries), *_ = valkey.xreadgroup(GROUP, "c", {old: ">"})
    result = CliRunner().invoke(app, ["partitions", "status", "--stream", STREAM], env=env)
    assert result.exit_code == 1, result.output  # pending on the draining key
    assert old in result.output and "draining" in result.output
    valkey.xack(old, GROUP, entries[0][0])
    rows = json.loads(fleet(env, "partitions", "status", "--stream", STREAM, "--json").output)
    assert [r["key"] for r in rows if r["role"] == "draining"] == [old]
    # Each key's row names the primary serving it (spreading partitions, docs/scaling.md).
    ports = {str(n.port) for n in nodes.nodes}
    assert all(r["node"].split(":")[1] in ports for r in rows), rows
    assert "retired" in fleet(env, "partitions", "retire", "--stream", STREAM).output
    assert int(valkey.exists(old)) == 0


def test_vex_import_trust_and_review_publish_their_outbox_onto_the_partitions(
    nodes: EmbeddedCluster, valkey: Any, db: Any, database_url: str, tmp_path: Path
) -> None:
    env = env_for(nodes, FLEET_DATABASE_URL=database_url)
    files = []
    for name, body in workload.vex_documents(components=4, seed=17):
        path = tmp_path / name
        path.write_bytes(body)
        files.append(str(path))
    imported = fleet(env, "vex", "import", *files).output
    assert "to vex:consensus" in imported and "warning" not in imported, imported
    # Trusting an issuer recomputes its pairs; the changed results are published. With
    # every issuer trusted, vendor and distro share a priority, so where they disagree
    # the pair is a conflict.
    for trust in workload.vex_trust():
        trusted = fleet(
            env, "vex", "trust", "set", trust.issuer_id, "--score", str(trust.trust_score),
            "--priority", str(trust.priority), "--type", trust.issuer_type,
        ).output  # fmt: skip
        assert "warning" not in trusted, trusted
    published = sum(int(valkey.xlen(k)) for k in stream_keys("vex:consensus", P))
    assert published > 0 and int(valkey.exists("vex:consensus")) == 0, trusted
    # Deciding a conflict recomputes its pair and publishes the new result.
    queue = json.loads(fleet(env, "vex", "conflicts", "list", "--json").output)
    assert queue, "no conflict to decide"
    decided = fleet(
        env, "vex", "conflicts", "resolve", str(queue[0]["conflict_id"]),
        "--by", "ops@example.test", "--why", "checked upstream",
        "--status", "under_investigation",
    ).output  # fmt: skip
    assert "warning" not in decided, decided
    assert sum(int(valkey.xlen(k)) for k in stream_keys("vex:consensus", P)) > published


def test_fleet_run_consumes_every_partition(
    nodes: EmbeddedCluster, valkey: Any, database_url: str
) -> None:
    env = env_for(
        nodes,
        FLEET_DATABASE_URL=database_url,
        FLEET_HTTP_PORT="0",
        FLEET_BLOCK_MS="100",
        FLEET_SHUTDOWN_GRACE_SECONDS="5",
    )
    fleet(env, "publish", STREAM, "-", stdin=_lines(20, seed=8))
    proc = fleet_process(env, "run", "notify-delivery")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                found = [streams_status(valkey, k) for k in stream_keys(STREAM, P)]
            except redis.ResponseError:
                found = []  # a group not created yet
            if found and sum(read for read, _ in found) == 20 and not any(p for _, p in found):
                break
            assert proc.poll() is None, process_log(proc)[-2000:]
            assert time.monotonic() < deadline, f"not consumed: {found}"
            time.sleep(0.1)  # polling the groups' progress
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, process_log(proc)[-2000:]
    assert "CROSSSLOT" not in process_log(proc)


def streams_status(client: Any, key: str) -> tuple[int, int]:
    """(entries read, pending) of the notify group on ``key``."""
    (info,) = [g for g in client.xinfo_groups(key) if g["name"] == GROUP.encode()]
    return int(info["entries-read"] or 0), int(info["pending"])
