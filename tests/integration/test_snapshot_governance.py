"""Seed 001 completed, against real PostgreSQL and S3 (docs/snapshots.md): manual expiry from
the CLI and over HTTP, per-tool freshness thresholds stored in PostgreSQL and used by the
SLA, reads, gauges and the API, and the one-year audit pruning that keeps the chain
verifiable from an anchor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest

from tests.helpers import fleet_cli, metric
from tests.integration import test_snapshots as shared
from workers.snapshot_retention import Snapshots
from workers.snapshot_retention.base import ReadDenied
from workers.snapshot_retention.changes import RollbackDenied
from workers.snapshot_retention.records import SnapshotState

DAY = timedelta(days=1)
TOKEN, dump, feed, states, text = shared.TOKEN, shared.dump, shared.feed, shared.states, shared.text
# The fixtures of test_snapshots.py: the same servers, settings and API (S3 itself is
# the conftest's s3_url).
settings, s3 = shared.settings, shared.s3
snapshots, cli_env, api = shared.snapshots, shared.cli_env, shared.api


def threshold(tool: str, name: str) -> float:
    return metric("fleet_snapshot_threshold_seconds", tool=tool, threshold=name)


def one_line(proc: Any) -> str:
    message = proc.stderr.decode().strip()
    assert "Traceback" not in message
    assert len(message.splitlines()) == 1, message
    return message


async def _two_imports(snapshots: Snapshots, tool: str = "syft") -> tuple[str, str]:
    t0 = datetime.now(UTC).replace(microsecond=0) - 2 * DAY
    a = await snapshots.import_snapshot(tool, "1", feed(2, "a"), actor="ci", now=t0)
    b = await snapshots.import_snapshot(tool, "1", feed(3, "b"), actor="ci", now=t0 + DAY)
    return a.snapshot.snapshot_id, b.snapshot.snapshot_id


# ------------------------------------------------------------------------------ expiry


async def test_cli_expiry_makes_the_data_unavailable_and_is_audited(
    snapshots: Snapshots, db: asyncpg.Pool, cli_env: dict[str, str]
) -> None:
    previous, active = await _two_imports(snapshots)
    expired = fleet_cli(
        cli_env,
        "snapshots",
        "expire",
        "--snapshot-id",
        active,
        "--reason",
        "vendor withdrew the feed",
        "--actor",
        "oncall",
    )
    assert expired.returncode == 0, text(expired)
    assert f"expired {active} (was active)" in expired.stdout.decode()
    assert await states(db, "syft") == {previous: "previous", active: "expired"}
    last = await db.fetchrow("SELECT * FROM ingest.snapshot_audit ORDER BY seq DESC LIMIT 1")
    assert (last["event"], last["snapshot_id"], last["actor"], last["reason"]) == (
        "snapshot_expired",
        active,
        "oncall",
        "vendor withdrew the feed",
    )

    # Reading the tool is refused with a clear line, and so is rolling back to the
    # expired snapshot; the chain still verifies.
    read = fleet_cli(cli_env, "snapshots", "read", "--tool", "syft")
    assert read.returncode == 1
    assert "is expired" in one_line(read) and "data unavailable" in one_line(read)
    with pytest.raises(ReadDenied, match="expired"):
        await snapshots.read_active("syft", actor="t")
    with pytest.raises(RollbackDenied, match="expired"):
        await snapshots.rollback("syft", active, reason="undo", actor="t")
    assert (await snapshots.verify_audit()).ok

    again = fleet_cli(cli_env, "snapshots", "expire", "--snapshot-id", active, "--reason", "x")
    assert again.returncode == 1 and "only active, previous or archived" in one_line(again)
    bad = fleet_cli(cli_env, "snapshots", "expire", "--snapshot-id", "nonsense", "--reason", "x")
    assert bad.returncode == 2 and "invalid snapshot id" in one_line(bad)


async def test_http_expiry_needs_the_bearer_token_and_refuses_reads_after(
    api: str, snapshots: Snapshots, db: asyncpg.Pool
) -> None:
    previous, active = await _two_imports(snapshots)
    url = f"{api}/api/v1/ingest/snapshots/{previous}/expire"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = await dump(db)
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"reason": "x"}) as r:
            assert r.status == 401
        wrong = {"Authorization": "Bearer wrong"}
        async with http.post(url, json={"reason": "x"}, headers=wrong) as r:
            assert r.status == 401
        async with http.post(url, json={"reason": ""}, headers=auth) as r:
            assert r.status == 400
        async with http.post(url, json={"reason": "x", "force": True}, headers=auth) as r:
            assert r.status == 400  # unknown fields are refused
        assert await dump(db) == before

        async with http.post(url, json={"reason": "corrupt upstream"}, headers=auth) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        assert body["expiry"]["snapshotId"] == previous
        assert body["expiry"]["fromState"] == "previous" and body["expiry"]["state"] == "expired"
        assert body["expiry"]["reason"] == "corrupt upstream"

        async with http.post(url, json={"reason": "again"}, headers=auth) as r:
            assert r.status == 409
        missing = f"{api}/api/v1/ingest/snapshots/syft-20200101T000000Z-001/expire"
        async with http.post(missing, json={"reason": "x"}, headers=auth) as r:
            assert r.status == 404

        # The previous snapshot's data is gone: rolling back to it is refused.
        rollback = f"{api}/api/v1/ingest/snapshots/{previous}/rollback"
        async with http.post(rollback, json={"reason": "undo"}, headers=auth) as r:
            assert r.status == 409 and "expired" in (await r.json())["error"]["message"]
        # Expiring the active one leaves the tool without readable data.
        url = f"{api}/api/v1/ingest/snapshots/{active}/expire"
        async with http.post(url, json={"reason": "all bad"}, headers=auth) as r:
            assert r.status == 200
        async with http.get(f"{api}/api/v1/ingest/sla", params={"tool": "syft"}) as r:
            sla = (await r.json())["sla"]
        assert (sla["state"], sla["readable"]) == ("expired", False)
    events = await db.fetch(
        "SELECT snapshot_id, actor FROM ingest.snapshot_audit WHERE event = 'snapshot_expired'"
    )
    assert [(e["snapshot_id"], e["actor"]) for e in events] == [(previous, "api"), (active, "api")]
    with pytest.raises(ReadDenied, match="data unavailable"):
        await snapshots.read_active("syft", actor="t")


# ------------------------------------------------------------------------------ thresholds


async def test_per_tool_thresholds_drive_sla_reads_gauges_and_the_api(
    api: str, snapshots: Snapshots, cli_env: dict[str, str]
) -> None:
    now = datetime.now(UTC)
    await snapshots.import_snapshot("syft", "1", feed(2, "s"), actor="ci", now=now - 4 * DAY)
    await snapshots.import_snapshot("inhouse", "1", feed(2, "i"), actor="ci", now=now - 4 * DAY)
    assert (await snapshots.freshness_report("syft")).state == "fresh"  # defaults: 7/14/30 d

    tight = fleet_cli(
        cli_env,
        "snapshots",
        "thresholds",
        "set",
        "syft",
        "--max-age",
        "P1D",
        "--stale",
        "P2D",
        "--critical",
        "P3D",
    )
    assert tight.returncode == 0, text(tight)
    assert "syft: max age P1D, stale P2D, critical P3D" in tight.stdout.decode()
    # A custom tool, one threshold at a time: the others keep their current value.
    custom = fleet_cli(cli_env, "snapshots", "thresholds", "set", "inhouse", "--max-age", "PT36H")
    assert custom.returncode == 0, text(custom)

    malformed = fleet_cli(cli_env, "snapshots", "thresholds", "set", "syft", "--stale", "14 days")
    assert malformed.returncode == 2
    assert "--stale: invalid duration '14 days'" in one_line(malformed)
    disordered = fleet_cli(cli_env, "snapshots", "thresholds", "set", "syft", "--critical", "PT1H")
    assert disordered.returncode == 1 and "max_age <= stale <= critical" in one_line(disordered)
    nothing = fleet_cli(cli_env, "snapshots", "thresholds", "set", "syft")
    assert nothing.returncode == 2 and "at least one of" in one_line(nothing)

    listed = fleet_cli(cli_env, "snapshots", "thresholds", "list", "--json")
    assert listed.returncode == 0, text(listed)
    assert msgspec.json.decode(listed.stdout)["thresholds"] == [
        {"tool": "inhouse", "maxAge": "P1DT12H", "stale": "P14D", "critical": "P30D",
         "source": "tool"},
        {"tool": "syft", "maxAge": "P1D", "stale": "P2D", "critical": "P3D", "source": "tool"},
        {"tool": "*", "maxAge": "P7D", "stale": "P14D", "critical": "P30D", "source": "default"},
    ]  # fmt: skip

    # The SLA (CLI and API), reads and the gauges the alert rules compare against.
    sla = fleet_cli(cli_env, "snapshots", "sla", "--tool", "syft", "--json")
    entry = msgspec.json.decode(sla.stdout)["sla"]
    assert entry["state"] == "critical" and entry["thresholds"]["critical"] == "P3D"
    with pytest.raises(ReadDenied, match="critical"):
        await snapshots.read_active("syft", actor="t")
    assert (await snapshots.read_active("syft", actor="t", override=True)).data
    assert (await snapshots.freshness_report("inhouse")).state == "stale"
    await snapshots.refresh_gauges()
    assert threshold("syft", "critical") == 3 * 86400
    assert threshold("inhouse", "max_age") == 36 * 3600
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{api}/api/v1/ingest/sla", params={"tool": "syft"}) as r:
            assert (await r.json())["sla"]["thresholds"] == {
                "maxAge": "P1D",
                "stale": "P2D",
                "critical": "P3D",
            }
        async with http.get(f"{api}/api/v1/ingest/thresholds") as r:
            assert [t["tool"] for t in (await r.json())["thresholds"]] == ["inhouse", "syft", "*"]

    unset = fleet_cli(cli_env, "snapshots", "thresholds", "unset", "syft")
    assert unset.returncode == 0 and "syft: back to the defaults" in unset.stdout.decode()
    assert (await snapshots.freshness_report("syft")).state == "fresh"
    await snapshots.refresh_gauges()
    assert threshold("syft", "critical") == 30 * 86400


# ------------------------------------------------------------------------------ audit prune


async def _history(snapshots: Snapshots, now: datetime) -> None:
    """Imports 500, 450, 400 and 10 days ago: 2 audit records each."""
    for i, days in enumerate((500, 450, 400, 10)):
        await snapshots.import_snapshot(
            "syft", "1", feed(2, str(i)), actor="ci", now=now - days * DAY
        )


async def _tamper(db: asyncpg.Pool, sql: str) -> None:
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL ingest.allow_audit_tamper = 'on'")
        await conn.execute(sql)


async def test_audit_prune_keeps_the_chain_verifiable_and_tampering_detectable(
    snapshots: Snapshots, db: asyncpg.Pool, cli_env: dict[str, str]
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    await _history(snapshots, now)
    assert await db.fetchval("SELECT count(*) FROM ingest.snapshot_audit") == 8
    cutoff = (now - 420 * DAY).date().isoformat()

    too_recent = fleet_cli(
        cli_env, "snapshots", "audit", "prune", "--before", (now - 30 * DAY).date().isoformat()
    )
    assert too_recent.returncode == 1
    assert "FLEET_SNAPSHOT_AUDIT_RETENTION_DAYS=365" in one_line(too_recent)
    before = await dump(db)
    dry = fleet_cli(cli_env, "snapshots", "audit", "prune", "--before", cutoff, "--dry-run")
    assert dry.returncode == 0, text(dry)
    assert "would prune 4 audit record(s)" in dry.stdout.decode()
    assert await dump(db) == before

    pruned = fleet_cli(cli_env, "snapshots", "audit", "prune", "--before", cutoff, "--json")
    assert pruned.returncode == 0, text(pruned)
    report = msgspec.json.decode(pruned.stdout)
    assert (report["status"], report["records"], report["last_seq"]) == ("pruned", 4, 4)
    assert await db.fetchval("SELECT min(seq) FROM ingest.snapshot_audit") == 5
    verified = fleet_cli(cli_env, "snapshots", "audit", "verify")
    assert verified.returncode == 0, text(verified)
    assert "4 record(s) verified from anchor 1 (after audit-4)" in verified.stdout.decode()
    # Records appended after the prune chain on; a second prune adds a second anchor.
    [active] = await snapshots.list_snapshots(state=SnapshotState.ACTIVE)
    await snapshots.expire(active.snapshot_id, reason="r", actor="t")
    second = await snapshots.prune_audit(now - 380 * DAY, actor="t")
    assert (second.status, second.records) == ("pruned", 2)
    assert second.anchor is not None and second.anchor.anchor_seq == 2
    result = await snapshots.verify_audit()
    assert result.ok and result.checked == 3

    # Tampering with a kept record is still caught, and named.
    await _tamper(db, "UPDATE ingest.snapshot_audit SET actor = 'mallory' WHERE seq = 8")
    broken = fleet_cli(cli_env, "snapshots", "audit", "verify")
    assert broken.returncode == 1
    assert "audit-8" in one_line(broken) and "hash does not match" in one_line(broken)
    await _tamper(db, "UPDATE ingest.snapshot_audit SET actor = 'ci' WHERE seq = 8")
    assert (await snapshots.verify_audit()).ok
    # Removing the first kept record breaks the link to the anchor.
    await _tamper(db, "DELETE FROM ingest.snapshot_audit WHERE seq = 7")
    gap = await snapshots.verify_audit()
    assert not gap.ok and gap.first_bad is not None and gap.first_bad.seq == 8
    assert gap.reason is not None and "anchor" in gap.reason


async def test_a_tampered_anchor_fails_verification(
    snapshots: Snapshots, db: asyncpg.Pool, cli_env: dict[str, str]
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    await _history(snapshots, now)
    await snapshots.prune_audit(now - 420 * DAY, actor="t")
    assert (await snapshots.verify_audit()).ok
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("UPDATE ingest.snapshot_audit_anchors SET actor = 'mallory'")

    await _tamper(db, "UPDATE ingest.snapshot_audit_anchors SET pruned_records = 3")
    broken = fleet_cli(cli_env, "snapshots", "audit", "verify")
    assert broken.returncode == 1
    assert "anchor 1: hash does not match" in one_line(broken)
    await _tamper(db, "UPDATE ingest.snapshot_audit_anchors SET pruned_records = 4")
    assert (await snapshots.verify_audit()).ok
    # Deleting the anchor: the kept chain no longer starts from the genesis value.
    await _tamper(db, "DELETE FROM ingest.snapshot_audit_anchors")
    orphan = await snapshots.verify_audit()
    assert not orphan.ok and orphan.first_bad is not None and orphan.first_bad.seq == 5
