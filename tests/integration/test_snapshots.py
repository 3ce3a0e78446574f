"""Snapshot governance against real PostgreSQL and S3 over real HTTP (moto server mode):
import and activation, rollback and its verification, automatic rollback on failed imports,
retention run once across processes, the audit chain, the HTTP API, freshness."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aioboto3
import aiohttp
import asyncpg
import msgspec
import pytest
from aiobotocore.config import AioConfig

from devkit.embedded import free_port
from tests.helpers import fleet_cli, fleet_process, metric, poll, process_log
from workers import s3 as s3io
from workers.http import OpsServer
from workers.kernel.stopping import Stopping
from workers.kernel.worker import Resources
from workers.metrics import SNAPSHOT_FRESHNESS
from workers.s3 import open_s3
from workers.settings import Settings, load_settings
from workers.snapshot_retention import SnapshotRetentionService, Snapshots, store
from workers.snapshot_retention.audit import GENESIS_HASH
from workers.snapshot_retention.base import ReadDenied
from workers.snapshot_retention.changes import ImportFailed, RollbackDenied, RollbackFailed
from workers.snapshot_retention.freshness import FreshnessState
from workers.snapshot_retention.ids import b3_digest, make_snapshot_id, parse_snapshot_id
from workers.snapshot_retention.lifecycle import RollbackTrigger
from workers.snapshot_retention.payload import normalize_payload
from workers.snapshot_retention.records import SnapshotState
from workers.snapshot_retention.retention import RetentionHold
from workers.snapshot_retention.times import rfc3339

S = SnapshotState
TOKEN = "snapshot-test-token"  # a test credential
DAY = timedelta(days=1)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
def settings(database_url: str, s3_url: str) -> Settings:
    return load_settings(
        {},
        database_url=database_url,
        s3_endpoint_url=s3_url,
        s3_bucket=f"snapshots-{uuid.uuid4().hex[:12]}",
        api_token=TOKEN,
        http_port=0,
    )


@pytest.fixture
async def s3(settings: Settings) -> AsyncIterator[Any]:
    async with open_s3(settings) as client:
        yield client


@pytest.fixture
def snapshots(settings: Settings, db: asyncpg.Pool, s3: Any) -> Snapshots:
    return Snapshots(settings, db, s3)


@pytest.fixture
def cli_env(settings: Settings) -> dict[str, str]:
    assert settings.s3_endpoint_url is not None
    return {
        "FLEET_DATABASE_URL": settings.database_url,
        "FLEET_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "FLEET_S3_BUCKET": settings.s3_bucket,
        "FLEET_API_TOKEN": TOKEN,
        "AWS_ACCESS_KEY_ID": "streamfleet",
        "AWS_SECRET_ACCESS_KEY": "streamfleet-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


# ------------------------------------------------------------------------------ helpers


def feed(n: int, tag: str) -> bytes:
    """A feed payload of ``n`` records, keys deliberately unsorted."""
    records = [
        {"purl": f"pkg:npm/{tag}-{i}@1.0.{i}", "id": f"{tag}-{i}", "severity": "high"}
        for i in range(n)
    ]
    return msgspec.json.encode({"records": records})


def stamp(value: datetime) -> str:
    return rfc3339(value)


async def dump(pool: asyncpg.Pool) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the snapshot tables, for "nothing changed" comparisons."""
    tables = {
        "feed_snapshots": "snapshot_id",
        "retention_exceptions": "hold_id",
        "snapshot_audit": "seq",
    }
    result: dict[str, list[tuple[Any, ...]]] = {}
    async with pool.acquire() as conn:
        for table, key in tables.items():
            rows = await conn.fetch(f"SELECT * FROM ingest.{table} ORDER BY {key}")
            result[table] = [tuple(row.values()) for row in rows]
    return result


async def objects(client: Any, bucket: str) -> dict[str, bytes]:
    listing = await client.list_objects_v2(Bucket=bucket)
    found = {}
    for item in listing.get("Contents", []):
        found[item["Key"]] = await s3io.get_object(client, bucket, item["Key"])
    return found


async def states(pool: asyncpg.Pool, tool: str) -> dict[str, str]:
    rows = await pool.fetch(
        "SELECT snapshot_id, state FROM ingest.feed_snapshots WHERE tool = $1", tool
    )
    return {row["snapshot_id"]: row["state"] for row in rows}


async def audit_events(pool: asyncpg.Pool) -> list[tuple[str, str]]:
    rows = await pool.fetch("SELECT event, snapshot_id FROM ingest.snapshot_audit ORDER BY seq")
    return [(row["event"], row["snapshot_id"]) for row in rows]


def text(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode() + proc.stderr.decode()


# ------------------------------------------------------------------------------ import/rollback


async def test_import_activate_then_rollback_to_previous_and_to_a_named_snapshot(
    snapshots: Snapshots, db: asyncpg.Pool, s3: Any, settings: Settings
) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    first = await snapshots.import_snapshot(
        "syft", "1.0.0", feed(3, "a"), {"importReason": "scheduled_sync"}, actor="ci", now=t0
    )
    a = first.snapshot
    assert a.snapshot_id == make_snapshot_id("syft", t0, 1)
    assert first.previous is None
    assert await states(db, "syft") == {a.snapshot_id: "active"}
    stored = await s3io.get_object(s3, settings.s3_bucket, a.object_key)
    assert b3_digest(stored) == a.normalized_hash == normalize_payload(feed(3, "a")).normalized_hash
    assert a.source_hash == b3_digest(feed(3, "a"))
    assert a.record_count == 3
    assert a.metadata == {"importUser": "ci", "importReason": "scheduled_sync"}

    b = (
        await snapshots.import_snapshot(
            "syft", "1.1.0", feed(5, "b"), actor="ci", now=t0 + timedelta(hours=1)
        )
    ).snapshot
    c_result = await snapshots.import_snapshot(
        "syft", "1.2.0", feed(8, "c"), actor="ci", now=t0 + timedelta(hours=2)
    )
    c = c_result.snapshot
    assert c_result.previous == b.snapshot_id
    assert c.previous_snapshot == b.snapshot_id and b.previous_snapshot == a.snapshot_id
    assert await states(db, "syft") == {
        a.snapshot_id: "previous",
        b.snapshot_id: "previous",
        c.snapshot_id: "active",
    }

    before = metric("fleet_snapshot_rollbacks_total", trigger="user_request")
    response = await snapshots.rollback("syft", reason="bad feed", actor="oncall")
    body = msgspec.to_builtins(response)["rollback"]
    assert body["status"] == "completed"
    assert body["from"] == {"snapshotId": c.snapshot_id, "recordCount": 8}
    assert body["to"] == {"snapshotId": b.snapshot_id, "recordCount": 5}
    assert body["executedBy"] == "oncall" and body["reason"] == "bad feed"
    assert await states(db, "syft") == {
        a.snapshot_id: "previous",
        b.snapshot_id: "active",
        c.snapshot_id: "previous",
    }

    named = await snapshots.rollback(
        "syft",
        a.snapshot_id,
        reason="compliance",
        actor="oncall",
        trigger=RollbackTrigger.COMPLIANCE,
    )
    assert named.rollback.to.snapshot_id == a.snapshot_id
    assert named.rollback.from_ is not None and named.rollback.from_.snapshot_id == b.snapshot_id
    assert await states(db, "syft") == {
        a.snapshot_id: "active",
        b.snapshot_id: "previous",
        c.snapshot_id: "previous",
    }
    assert metric("fleet_snapshot_rollbacks_total", trigger="user_request") == before + 1
    assert await audit_events(db) == [
        ("snapshot_imported", a.snapshot_id),
        ("snapshot_activated", a.snapshot_id),
        ("snapshot_imported", b.snapshot_id),
        ("snapshot_activated", b.snapshot_id),
        ("snapshot_imported", c.snapshot_id),
        ("snapshot_activated", c.snapshot_id),
        ("snapshot_rolled_back", b.snapshot_id),
        ("snapshot_rolled_back", a.snapshot_id),
    ]
    rolled = await db.fetchrow(
        "SELECT actor, reason, details FROM ingest.snapshot_audit "
        "WHERE event = 'snapshot_rolled_back' ORDER BY seq LIMIT 1"
    )
    assert rolled is not None
    assert rolled["actor"] == "oncall" and rolled["reason"] == "bad feed"
    assert rolled["details"]["fromSnapshot"] == c.snapshot_id
    assert rolled["details"]["toSnapshot"] == b.snapshot_id
    assert rolled["details"]["recordsAffected"] == 3
    assert (await snapshots.verify_audit()).ok


async def test_identical_content_shares_one_object_and_imports_in_one_second_get_sequences(
    snapshots: Snapshots, db: asyncpg.Pool, s3: Any, settings: Settings
) -> None:
    at = datetime(2025, 12, 4, tzinfo=UTC)
    one = (await snapshots.import_snapshot("trivy", "1", feed(2, "x"), actor="ci", now=at)).snapshot
    two = (await snapshots.import_snapshot("trivy", "1", feed(2, "x"), actor="ci", now=at)).snapshot
    assert one.snapshot_id == "trivy-20251204T000000Z-001"
    assert two.snapshot_id == "trivy-20251204T000000Z-002"
    assert one.object_key == two.object_key
    assert list(await objects(s3, settings.s3_bucket)) == [one.object_key]


async def test_a_dry_run_changes_nothing(
    snapshots: Snapshots, db: asyncpg.Pool, s3: Any, settings: Settings, cli_env: dict[str, str]
) -> None:
    t0 = datetime.now(UTC) - timedelta(hours=2)
    a = (await snapshots.import_snapshot("clair", "4", feed(4, "a"), actor="ci", now=t0)).snapshot
    b = (
        await snapshots.import_snapshot(
            "clair", "4", feed(6, "b"), actor="ci", now=t0 + timedelta(hours=1)
        )
    ).snapshot
    before, stored = await dump(db), await objects(s3, settings.s3_bucket)
    rollbacks = metric("fleet_snapshot_rollbacks_total", trigger="user_request")

    planned = await snapshots.rollback("clair", reason="check", actor="ci", dry_run=True)
    assert planned.rollback.status == "dry_run"
    assert planned.rollback.to.snapshot_id == a.snapshot_id
    assert (
        planned.rollback.from_ is not None and planned.rollback.from_.snapshot_id == b.snapshot_id
    )

    proc = fleet_cli(
        cli_env, "snapshots", "rollback", "--tool", "clair", "--reason", "check", "--dry-run"
    )
    assert proc.returncode == 0, text(proc)
    assert f"would roll back clair from {b.snapshot_id} to {a.snapshot_id}" in proc.stdout.decode()

    assert await dump(db) == before
    assert await objects(s3, settings.s3_bucket) == stored
    assert metric("fleet_snapshot_rollbacks_total", trigger="user_request") == rollbacks


async def test_an_object_altered_in_s3_aborts_the_rollback_with_the_database_unchanged(
    snapshots: Snapshots, db: asyncpg.Pool, s3: Any, settings: Settings, cli_env: dict[str, str]
) -> None:
    t0 = datetime.now(UTC) - timedelta(hours=2)
    a = (await snapshots.import_snapshot("syft", "1", feed(4, "a"), actor="ci", now=t0)).snapshot
    await snapshots.import_snapshot(
        "syft", "1", feed(4, "b"), actor="ci", now=t0 + timedelta(hours=1)
    )
    # Same length, different bytes: only the hash can tell.
    original = await s3io.get_object(s3, settings.s3_bucket, a.object_key)
    altered = original.replace(b"a-0", b"a-X")
    assert altered != original and len(altered) == len(original)
    await s3io.put_object(s3, settings.s3_bucket, a.object_key, altered)
    before = await dump(db)

    with pytest.raises(RollbackDenied, match="failed verification") as refused:
        await snapshots.rollback("syft", reason="restore", actor="ci")
    assert a.normalized_hash in str(refused.value)
    # force skips the freshness check only, never the hash check
    with pytest.raises(RollbackDenied, match="failed verification"):
        await snapshots.rollback("syft", a.snapshot_id, reason="restore", actor="ci", force=True)
    proc = fleet_cli(cli_env, "snapshots", "rollback", "--tool", "syft", "--reason", "r", "--force")
    assert proc.returncode == 1
    assert "failed verification" in proc.stderr.decode()
    assert "Traceback" not in text(proc)
    assert await dump(db) == before

    await s3io.delete_object(s3, settings.s3_bucket, a.object_key)
    with pytest.raises(RollbackDenied, match="does not exist"):
        await snapshots.rollback("syft", reason="restore", actor="ci")
    assert await dump(db) == before


async def test_a_failure_after_the_restore_returns_to_the_savepoint(
    snapshots: Snapshots, db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    t0 = datetime.now(UTC) - timedelta(hours=2)
    await snapshots.import_snapshot("grype", "1", feed(2, "a"), actor="ci", now=t0)
    await snapshots.import_snapshot(
        "grype", "1", feed(3, "b"), actor="ci", now=t0 + timedelta(hours=1)
    )
    before = await dump(db)
    seen: list[dict[str, str]] = []

    async def failing_verify(conn: Any, plan: Any, size: int) -> None:
        # The restore has been applied inside the savepoint when verification runs.
        rows = await conn.fetch(
            "SELECT snapshot_id, state FROM ingest.feed_snapshots WHERE tool = 'grype'"
        )
        seen.append({row["snapshot_id"]: row["state"] for row in rows})
        raise s3io.S3Error("object vanished during the restore")

    monkeypatch.setattr(snapshots, "_verify_restore", failing_verify)
    with pytest.raises(RollbackFailed, match="failed and was undone"):
        await snapshots.rollback("grype", reason="r", actor="ci")
    assert sorted(seen[0].values()) == ["active", "previous"]
    assert seen[0] != {r[0]: r[7] for r in before["feed_snapshots"]}
    assert await dump(db) == before


async def test_a_target_that_is_critical_needs_force(
    snapshots: Snapshots, db: asyncpg.Pool
) -> None:
    now = datetime.now(UTC)
    old = (
        await snapshots.import_snapshot("osv", "1", feed(2, "a"), actor="ci", now=now - 40 * DAY)
    ).snapshot
    await snapshots.import_snapshot("osv", "1", feed(2, "b"), actor="ci", now=now - DAY)
    before = await dump(db)
    with pytest.raises(RollbackDenied, match="critical"):
        await snapshots.rollback("osv", reason="r", actor="ci", now=now)
    assert await dump(db) == before
    forced = await snapshots.rollback("osv", reason="r", actor="ci", now=now, force=True)
    assert forced.rollback.to.snapshot_id == old.snapshot_id


async def test_rollback_refuses_bad_targets(snapshots: Snapshots, db: asyncpg.Pool) -> None:
    t0 = datetime.now(UTC) - timedelta(hours=1)
    a = (await snapshots.import_snapshot("syft", "1", feed(1, "a"), actor="ci", now=t0)).snapshot
    before = await dump(db)
    with pytest.raises(RollbackDenied, match="no previous snapshot"):
        await snapshots.rollback("syft", reason="r", actor="ci")
    with pytest.raises(RollbackDenied, match="already active"):
        await snapshots.rollback("syft", a.snapshot_id, reason="r", actor="ci")
    with pytest.raises(RollbackDenied, match="does not exist"):
        await snapshots.rollback("syft", "syft-20200101T000000Z-001", reason="r", actor="ci")
    with pytest.raises(RollbackDenied, match="needs a reason"):
        await snapshots.rollback("syft", reason=" ", actor="ci")
    assert await dump(db) == before


# ------------------------------------------------------------------------------ failed imports


async def test_a_failed_import_leaves_the_previous_snapshot_active(
    snapshots: Snapshots,
    db: asyncpg.Pool,
    settings: Settings,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    a = (await snapshots.import_snapshot("syft", "1", feed(2, "a"), actor="ci")).snapshot
    before = await dump(db)

    validation = metric("fleet_snapshot_rollbacks_total", trigger="validation_failure")
    with pytest.raises(ImportFailed, match="validation failed: payload is not valid JSON") as bad:
        await snapshots.import_snapshot("syft", "2", b"{not json", actor="ci")
    assert bad.value.trigger is RollbackTrigger.VALIDATION_FAILURE
    assert f"{a.snapshot_id} stays active" in str(bad.value)
    with pytest.raises(ImportFailed, match="no records"):
        await snapshots.import_snapshot("syft", "2", b"[]", actor="ci")
    assert metric("fleet_snapshot_rollbacks_total", trigger="validation_failure") == validation + 2

    bad_file = tmp_path / "bad.json"
    bad_file.write_bytes(b'{"records": [1, 2]}')
    proc = fleet_cli(cli_env, "snapshots", "import", "--tool", "syft", str(bad_file))
    assert proc.returncode == 1
    err_lines = proc.stderr.decode().strip().splitlines()
    assert len(err_lines) == 1, proc.stderr.decode()
    assert (
        "record 0 is a number" in err_lines[0] and f"{a.snapshot_id} stays active" in err_lines[0]
    )

    # S3 unreachable: nothing listens on this port.
    session = aioboto3.Session()
    dead = f"http://127.0.0.1:{free_port()}"
    config = AioConfig(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=1)
    async with session.client(
        "s3", endpoint_url=dead, region_name="us-east-1", config=config
    ) as down:
        broken = Snapshots(settings, db, down)
        with pytest.raises(ImportFailed, match="upload failed") as unreachable:
            await broken.import_snapshot("syft", "2", feed(3, "b"), actor="ci")
    assert unreachable.value.trigger is RollbackTrigger.IMPORT_FAILURE
    assert f"{a.snapshot_id} stays active" in str(unreachable.value)

    assert await dump(db) == before
    assert await states(db, "syft") == {a.snapshot_id: "active"}


async def test_cli_import_list_show_and_sla(
    db: asyncpg.Pool, cli_env: dict[str, str], tmp_path: Path
) -> None:
    payload = tmp_path / "feed.json"
    payload.write_bytes(feed(7, "cli"))
    proc = fleet_cli(
        cli_env,
        "snapshots",
        "import",
        "--tool",
        "my-custom-tool",
        "--tool-version",
        "2.0",
        str(payload),
    )
    assert proc.returncode == 0, text(proc)
    lines = proc.stdout.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imported my-custom-tool-")
    assert "7 records" in lines[0]

    listed = fleet_cli(cli_env, "snapshots", "list", "--tool", "my-custom-tool", "--json")
    assert listed.returncode == 0, text(listed)
    records = msgspec.json.decode(listed.stdout)["snapshots"]
    assert [r["state"] for r in records] == ["active"]
    record = records[0]
    assert record["toolVersion"] == "2.0" and record["recordCount"] == 7
    assert parse_snapshot_id(record["id"]).tool == "my-custom-tool"

    shown = fleet_cli(cli_env, "snapshots", "show", record["id"])
    assert shown.returncode == 0, text(shown)
    detail = msgspec.json.decode(shown.stdout)
    assert detail["id"] == record["id"]
    assert [a["audit"]["event"] for a in detail["audit"]] == [
        "snapshot_imported",
        "snapshot_activated",
    ]

    sla = fleet_cli(cli_env, "snapshots", "sla", "--tool", "my-custom-tool", "--json")
    assert sla.returncode == 0, text(sla)
    assert msgspec.json.decode(sla.stdout)["sla"]["state"] == "fresh"

    missing = fleet_cli(cli_env, "snapshots", "show", "my-custom-tool-20200101T000000Z-001")
    assert missing.returncode == 1 and "does not exist" in missing.stderr.decode()
    malformed = fleet_cli(cli_env, "snapshots", "show", "nonsense")
    assert malformed.returncode == 2 and "invalid snapshot id" in malformed.stderr.decode()
    assert "Traceback" not in text(missing) + text(malformed)


# ------------------------------------------------------------------------------ retention


async def _aged_history(snapshots: Snapshots, tools: list[str], t0: datetime) -> None:
    """Three imports per tool an hour apart: one active and two previous per tool."""
    for tool in tools:
        for i in range(3):
            await snapshots.import_snapshot(
                tool, "1", feed(2, f"{tool}-{i}"), actor="ci", now=t0 + i * timedelta(hours=1)
            )


async def test_retention_archives_then_deletes_keeping_records_and_honouring_holds(
    snapshots: Snapshots, db: asyncpg.Pool, s3: Any, settings: Settings
) -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    await _aged_history(snapshots, ["syft", "trivy"], t0)
    held_id = make_snapshot_id("trivy", t0, 1)
    await snapshots.add_hold(
        RetentionHold(snapshot_id=held_id, reason="Audit hold", expires_at=t0 + 200 * DAY),
        actor="auditor",
        now=t0,
    )
    await snapshots.add_hold(
        RetentionHold(tool="syft", reason="Expired hold", expires_at=t0 + 10 * DAY),
        actor="auditor",
        now=t0,
    )
    archives = metric("fleet_snapshot_retention_actions_total", action="archive")
    deletes = metric("fleet_snapshot_retention_actions_total", action="delete")

    report = await snapshots.run_retention(t0 + 31 * DAY, actor="test")
    assert report.status == "applied"
    assert sorted(a.snapshot_id for a in report.actions if a.status == "applied") == sorted(
        [
            make_snapshot_id("syft", t0, 1),
            make_snapshot_id("syft", t0 + timedelta(hours=1), 1),
            make_snapshot_id("trivy", t0 + timedelta(hours=1), 1),
        ]
    )
    assert [h.snapshot_id for h in report.held] == [held_id]
    assert "Audit hold" in report.held[0].reason
    assert metric("fleet_snapshot_retention_actions_total", action="archive") == archives + 3

    keys_before = set(await objects(s3, settings.s3_bucket))
    later = await snapshots.run_retention(t0 + 122 * DAY, actor="test")
    applied = [a for a in later.actions if a.status == "applied"]
    assert {a.action for a in applied} == {"delete"} and len(applied) == 3
    assert all(a.object_removed for a in applied)
    assert metric("fleet_snapshot_retention_actions_total", action="delete") == deletes + 3
    # records kept, objects gone, active and held snapshots untouched
    syft = await states(db, "syft")
    assert sorted(syft.values()) == ["active", "deleted", "deleted"]
    trivy = await states(db, "trivy")
    assert trivy[held_id] == "previous"
    assert sorted(trivy.values()) == ["active", "deleted", "previous"]
    remaining = set(await objects(s3, settings.s3_bucket))
    removed = {a.object_key for a in applied}
    assert remaining == keys_before - removed and len(removed) == 3
    events = [e for e, _ in await audit_events(db)]
    assert events.count("snapshot_archived") == 3 and events.count("snapshot_deleted") == 3
    assert (await snapshots.verify_audit()).ok


async def test_retention_dry_run_prints_the_plan_with_held_actions_and_changes_nothing(
    snapshots: Snapshots, db: asyncpg.Pool, cli_env: dict[str, str]
) -> None:
    t0 = datetime(2025, 3, 1, tzinfo=UTC)
    await _aged_history(snapshots, ["syft"], t0)
    held_id = make_snapshot_id("syft", t0, 1)
    added = fleet_cli(
        cli_env, "snapshots", "hold", "add", "--snapshot-id", held_id, "--reason", "Legal review"
    )
    assert added.returncode == 0, text(added)
    assert f"on {held_id} (Legal review) indefinitely" in added.stdout.decode()
    listed = fleet_cli(cli_env, "snapshots", "hold", "list")
    assert "Legal review" in listed.stdout.decode() and "[in force]" in listed.stdout.decode()
    before = await dump(db)
    proc = fleet_cli(cli_env, "snapshots", "retention", "--dry-run", "--now", stamp(t0 + 45 * DAY))
    assert proc.returncode == 0, text(proc)
    output = proc.stdout.decode()
    free_id = make_snapshot_id("syft", t0 + timedelta(hours=1), 1)
    assert "retention plan at 2025-04-15T00:00:00Z: 1 action(s), 1 held" in output
    assert f"planned  archive  {free_id}" in output
    assert "held" in output and held_id in output and "Legal review" in output
    assert "scan metrics" not in output  # scan-metrics expires its own rows
    assert await dump(db) == before


async def test_three_retention_processes_started_together_apply_the_plan_once(
    snapshots: Snapshots, db: asyncpg.Pool, s3: Any, settings: Settings, cli_env: dict[str, str]
) -> None:
    t0 = datetime(2024, 6, 1, tzinfo=UTC)
    # Enough work that the three runs overlap in time: 2 x 16 deletions, each a transaction
    # and an S3 call.
    tools = [f"feed-{i}" for i in range(16)]
    await _aged_history(snapshots, tools, t0)
    first = await snapshots.run_retention(t0 + 31 * DAY, actor="setup")
    assert len([a for a in first.actions if a.status == "applied"]) == 32
    objects_before = await objects(s3, settings.s3_bucket)
    due = t0 + 200 * DAY

    procs = [
        fleet_process(cli_env, "snapshots", "retention", "--now", stamp(due), "--json")
        for _ in range(3)
    ]
    try:
        await poll(
            lambda: _all_exited(procs), timeout=120, what="three retention processes to finish"
        )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    outputs = [process_log(proc) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
    reports = [msgspec.json.decode(o[o.index("{") :]) for o in outputs]
    applied_counts = [sum(a["status"] == "applied" for a in r["actions"]) for r in reports]
    # Exactly one process applied the 32 deletions; the others skipped on the lock or, if
    # they came after it was released, found nothing left to do.
    assert sorted(applied_counts) == [0, 0, 32], outputs
    winner = procs[applied_counts.index(32)]
    for report, count in zip(reports, applied_counts, strict=True):
        if count == 0:
            assert report["status"] == "skipped" or report["actions"] == []
    deleted = await db.fetch(
        "SELECT actor FROM ingest.snapshot_audit WHERE event = 'snapshot_deleted'"
    )
    assert len(deleted) == 32
    assert {row["actor"] for row in deleted} == {f"retention:{socket.gethostname()}-{winner.pid}"}
    remaining = await objects(s3, settings.s3_bucket)
    assert len(objects_before) - len(remaining) == 32
    assert (await snapshots.verify_audit()).ok


async def _all_exited(procs: list[subprocess.Popen[bytes]]) -> bool:
    return all(proc.poll() is not None for proc in procs)


async def test_retention_skips_while_another_process_holds_the_lock(
    snapshots: Snapshots, db: asyncpg.Pool, cli_env: dict[str, str]
) -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    await _aged_history(snapshots, ["syft"], t0)
    before = await dump(db)
    async with db.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", store.RETENTION_LOCK_KEY)
        try:
            skipped = await snapshots.run_retention(t0 + 40 * DAY)
            proc = fleet_cli(cli_env, "snapshots", "retention", "--now", stamp(t0 + 40 * DAY))
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1)", store.RETENTION_LOCK_KEY)
    assert skipped.status == "skipped"
    assert skipped.detail == "skipped: another process holds the lock"
    assert proc.returncode == 0, text(proc)
    assert "skipped: another process holds the lock" in proc.stdout.decode()
    assert await dump(db) == before
    # once the lock is free, the same plan runs
    assert (await snapshots.run_retention(t0 + 40 * DAY)).status == "applied"


# ------------------------------------------------------------------------------ audit


async def test_concurrent_writers_extend_one_unforked_chain(
    snapshots: Snapshots, db: asyncpg.Pool
) -> None:
    await asyncio.gather(
        *(
            snapshots.import_snapshot(f"tool-{i}", "1", feed(1, str(i)), actor="ci")
            for i in range(8)
        )
    )
    result = await snapshots.verify_audit()
    assert result.ok and result.checked == 16
    rows = await db.fetch("SELECT prev_hash, hash FROM ingest.snapshot_audit ORDER BY seq")
    assert rows[0]["prev_hash"] == GENESIS_HASH
    assert all(rows[i]["prev_hash"] == rows[i - 1]["hash"] for i in range(1, len(rows)))


async def test_editing_one_audit_row_makes_verify_fail_and_name_it(
    snapshots: Snapshots, db: asyncpg.Pool, cli_env: dict[str, str]
) -> None:
    t0 = datetime.now(UTC) - timedelta(hours=3)
    for i in range(3):
        await snapshots.import_snapshot(
            "syft", "1", feed(2, str(i)), actor="ci", now=t0 + i * timedelta(hours=1)
        )
    await snapshots.rollback("syft", reason="bad feed", actor="oncall")
    intact = fleet_cli(cli_env, "snapshots", "audit", "verify")
    assert intact.returncode == 0, text(intact)
    assert "audit chain intact: 7 record(s) verified" in intact.stdout.decode()

    # The table refuses edits unless the tamper switch of the migration is set.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("UPDATE ingest.snapshot_audit SET actor = 'mallory' WHERE seq = 4")
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL ingest.allow_audit_tamper = 'on'")
        await conn.execute("UPDATE ingest.snapshot_audit SET actor = 'mallory' WHERE seq = 4")

    broken = fleet_cli(cli_env, "snapshots", "audit", "verify")
    assert broken.returncode == 1
    message = broken.stderr.decode().strip()
    assert len(message.splitlines()) == 1
    assert "audit-4" in message and "hash does not match" in message
    assert "3 record(s) before it verified" in message
    result = await snapshots.verify_audit()
    assert not result.ok and result.first_bad is not None and result.first_bad.seq == 4

    listed = fleet_cli(cli_env, "snapshots", "audit", "list", "--json")
    assert listed.returncode == 0, text(listed)
    shaped = msgspec.json.decode(listed.stdout)
    assert [r["audit"]["id"] for r in shaped] == [f"audit-{i}" for i in range(1, 8)]
    assert set(shaped[-1]["audit"]) >= {"id", "event", "timestamp", "user", "details", "hash"}


# ------------------------------------------------------------------------------ HTTP API


@pytest.fixture
async def api(settings: Settings, db: asyncpg.Pool, s3: Any) -> AsyncIterator[str]:
    resources = Resources(settings=settings, redis=None, pool=db, s3=s3)  # type: ignore[arg-type]
    service = SnapshotRetentionService(resources)
    server = OpsServer(resources, status=dict, checks={}, extra_routes=service.routes())
    port = await server.start("127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}"
    await server.stop()


async def test_http_api_has_the_seed_shapes_and_guards_rollback(
    api: str, snapshots: Snapshots, db: asyncpg.Pool
) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0) - 2 * DAY
    a = (
        await snapshots.import_snapshot("syft", "1.0.0", feed(3, "a"), actor="ci", now=t0)
    ).snapshot
    b = (
        await snapshots.import_snapshot("syft", "1.1.0", feed(5, "b"), actor="ci", now=t0 + DAY)
    ).snapshot
    base = f"{api}/api/v1/ingest"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/snapshots", params={"tool": "syft", "state": "active"}) as r:
            assert r.status == 200
            listed = await r.json()
        assert [s["id"] for s in listed["snapshots"]] == [b.snapshot_id]
        record = listed["snapshots"][0]
        assert set(record) >= {
            "id",
            "tool",
            "toolVersion",
            "importedAt",
            "sourceHash",
            "normalizedHash",
            "recordCount",
            "state",
            "previousSnapshot",
            "metadata",
        }
        assert record["previousSnapshot"] == a.snapshot_id
        assert record["importedAt"] == stamp(t0 + DAY)
        async with http.get(f"{base}/snapshots", params={"state": "bogus"}) as r:
            assert r.status == 400

        async with http.get(f"{base}/snapshots/{a.snapshot_id}") as r:
            assert r.status == 200
            assert (await r.json())["state"] == "previous"
        async with http.get(f"{base}/snapshots/syft-20200101T000000Z-001") as r:
            assert r.status == 404
        async with http.get(f"{base}/snapshots/not-an-id") as r:
            assert r.status == 400

        rollback = f"{base}/snapshots/{a.snapshot_id}/rollback"
        before = await dump(db)
        async with http.post(rollback, json={"reason": "x"}) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.post(
            rollback, json={"reason": "x"}, headers={"Authorization": "Bearer nope"}
        ) as r:
            assert r.status == 401
        for body in (
            b"{not json",
            b'{"dryRun": true}',
            b'{"reason": "x", "dry_run": true}',
            b'{"reason": ""}',
            b"[]",
        ):
            async with http.post(rollback, data=body, headers=auth) as r:
                assert r.status == 400, body
                assert "error" in await r.json()
        async with http.post(
            f"{base}/snapshots/syft-20200101T000000Z-001/rollback",
            json={"reason": "x"},
            headers=auth,
        ) as r:
            assert r.status == 404
        async with http.post(
            f"{base}/snapshots/not-an-id/rollback", json={"reason": "x"}, headers=auth
        ) as r:
            assert r.status == 400
        async with http.post(
            f"{base}/snapshots/{b.snapshot_id}/rollback", json={"reason": "x"}, headers=auth
        ) as r:
            assert r.status == 409
            assert "already active" in (await r.json())["error"]["message"]
        async with http.post(rollback, json={"reason": "check", "dryRun": True}, headers=auth) as r:
            assert r.status == 200
            assert (await r.json())["rollback"]["status"] == "dry_run"
        assert await dump(db) == before

        async with http.post(
            rollback, json={"reason": "Data corruption detected"}, headers=auth
        ) as r:
            assert r.status == 200
            done = (await r.json())["rollback"]
        assert done["status"] == "completed" and done["tool"] == "syft"
        assert done["from"] == {"snapshotId": b.snapshot_id, "recordCount": 5}
        assert done["to"] == {"snapshotId": a.snapshot_id, "recordCount": 3}
        assert done["reason"] == "Data corruption detected" and done["executedBy"] == "api"
        assert datetime.fromisoformat(done["executedAt"]) <= datetime.now(UTC)
        assert (await states(db, "syft"))[a.snapshot_id] == "active"

        async with http.get(f"{base}/sla", params={"tool": "syft"}) as r:
            assert r.status == 200
            entry = (await r.json())["sla"]
        assert entry["tool"] == "syft" and entry["snapshotId"] == a.snapshot_id
        assert entry["importedAt"] == stamp(t0)
        assert entry["age"].startswith("P2D") and entry["state"] == "fresh"
        assert entry["thresholds"] == {"maxAge": "P7D", "stale": "P14D", "critical": "P30D"}
        assert entry["nextCheck"] == stamp(t0 + 7 * DAY)
        async with http.get(f"{base}/sla") as r:
            assert [e["tool"] for e in (await r.json())["sla"]] == ["syft"]
        async with http.get(f"{base}/sla", params={"tool": "Bad Tool"}) as r:
            assert r.status == 400


async def test_http_rollback_is_disabled_without_a_configured_token(
    settings: Settings, db: asyncpg.Pool, s3: Any, snapshots: Snapshots
) -> None:
    a = (await snapshots.import_snapshot("syft", "1", feed(1, "a"), actor="ci")).snapshot
    unset = msgspec.structs.replace(settings, api_token=None)
    resources = Resources(settings=unset, redis=None, pool=db, s3=s3)  # type: ignore[arg-type]
    server = OpsServer(
        resources, status=dict, checks={}, extra_routes=SnapshotRetentionService(resources).routes()
    )
    port = await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/api/v1/ingest/snapshots/{a.snapshot_id}/rollback"
            async with http.post(
                url, json={"reason": "x"}, headers={"Authorization": "Bearer "}
            ) as r:
                assert r.status == 401
                assert "no API token is configured" in (await r.json())["error"]["message"]
    finally:
        await server.stop()


# ------------------------------------------------------------------------------ freshness


async def test_reading_a_critical_tool_is_refused_without_override(
    snapshots: Snapshots, cli_env: dict[str, str], s3: Any, settings: Settings
) -> None:
    imported = datetime.now(UTC).replace(microsecond=0) - 31 * DAY
    await snapshots.import_snapshot("stale-feed", "1", feed(2, "old"), actor="ci", now=imported)
    expected = normalize_payload(feed(2, "old")).normalized

    with pytest.raises(ReadDenied, match="critical"):
        await snapshots.read_active("stale-feed", actor="ci")
    read = await snapshots.read_active("stale-feed", actor="ci", override=True)
    assert read.data == expected and read.freshness.state is FreshnessState.CRITICAL

    refused = fleet_cli(cli_env, "snapshots", "read", "--tool", "stale-feed")
    assert refused.returncode == 1
    assert refused.stdout == b""
    lines = refused.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "reading refused" in lines[0] and "critical" in lines[0]
    overridden = fleet_cli(cli_env, "snapshots", "read", "--tool", "stale-feed", "--override")
    assert overridden.returncode == 0, text(overridden)
    assert overridden.stdout == expected
    assert "under --override" in overridden.stderr.decode()
    # evaluated at another instant, the same snapshot is fresh and readable
    earlier = fleet_cli(
        cli_env, "snapshots", "read", "--tool", "stale-feed", "--now", stamp(imported + DAY)
    )
    assert earlier.returncode == 0, text(earlier)
    assert earlier.stdout == expected

    with pytest.raises(ReadDenied, match="expired"):
        await snapshots.read_active("never-imported", actor="ci", override=True)

    # a payload altered in the store is never served
    await s3io.put_object(s3, settings.s3_bucket, read.snapshot.object_key, expected + b" ")
    corrupt = fleet_cli(cli_env, "snapshots", "read", "--tool", "stale-feed", "--override")
    assert corrupt.returncode == 1 and corrupt.stdout == b""
    assert "failed verification" in corrupt.stderr.decode()
    assert "Traceback" not in corrupt.stderr.decode()


async def test_freshness_gauges_are_set_at_start_and_the_service_stops_promptly(
    settings: Settings, db: asyncpg.Pool, s3: Any, snapshots: Snapshots
) -> None:
    now = datetime.now(UTC)
    await snapshots.import_snapshot("gauge-fresh", "1", feed(1, "f"), actor="ci", now=now - DAY)
    await snapshots.import_snapshot(
        "gauge-stale", "1", feed(1, "s"), actor="ci", now=now - 10 * DAY
    )
    await snapshots.import_snapshot(
        "gauge-critical", "1", feed(1, "c"), actor="ci", now=now - 45 * DAY
    )
    for tool in ("gauge-fresh", "gauge-stale", "gauge-critical"):
        for state in ("fresh", "stale", "critical", "expired"):
            SNAPSHOT_FRESHNESS.labels(tool=tool, state=state).set(-1)

    resources = Resources(settings=settings, redis=None, pool=db, s3=s3)  # type: ignore[arg-type]
    service = SnapshotRetentionService(resources)
    stopping = Stopping()
    task = asyncio.create_task(service.run(stopping))
    try:
        await poll(
            lambda: _gauge_is("gauge-critical", "critical", 1.0),
            timeout=30,
            what="freshness gauges",
        )
        expected = {"gauge-fresh": "fresh", "gauge-stale": "stale", "gauge-critical": "critical"}
        for tool, current in expected.items():
            for state in ("fresh", "stale", "critical", "expired"):
                want = 1.0 if state == current else 0.0
                assert metric("fleet_snapshot_freshness", tool=tool, state=state) == want
        age = metric("fleet_snapshot_age_seconds", tool="gauge-stale")
        assert 10 * 86_400 <= age < 10 * 86_400 + 120
    finally:
        stopping.set()
        started = time.monotonic()
        await asyncio.wait_for(task, timeout=10)
    assert time.monotonic() - started < 5


async def _gauge_is(tool: str, state: str, value: float) -> bool:
    return metric("fleet_snapshot_freshness", tool=tool, state=state) == value
