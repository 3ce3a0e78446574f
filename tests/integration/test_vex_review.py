"""The review queue: a conflict queued by ingest is listed by ``fleet vex conflicts
list``, resolved with who and why by ``resolve``, and the decided status is an input
to the next recompute; bad arguments are one ``error:`` line and a usage exit code."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from devkit import workload
from tests.helpers import fleet_cli, fleet_in_process
from workers.errors import ExitCode
from workers.vex_consensus import service
from workers.vex_consensus.consensus import IssuerTrust
from workers.vex_consensus.documents import parse_document
from workers.vex_consensus.review import REVIEW_ISSUER

VENDOR = "https://vendor.example/psirt"
DISTRO = "https://distro.example/security"
CVE = "CVE-2025-4001"
LEFT = "pkg:npm/left-pad@1.3.0"
RIGHT = "pkg:npm/right-pad@2.0.0"


def openvex(author: str, purl: str, status: str, at: datetime) -> bytes:
    why = "vulnerable_code_not_in_execute_path" if status == "not_affected" else None
    return workload.openvex(
        author,
        [(purl, status, why)],
        vulnerability=CVE,
        at=at,
        doc_id=f"https://example.test/{author.split('/')[2]}/{purl}/{at:%Y%m%d}",
    )


async def ingest(db: asyncpg.Pool, *documents: bytes) -> None:
    async with db.acquire() as conn, conn.transaction():
        await service.import_documents(conn, [parse_document(d) for d in documents])


async def status_of(db: asyncpg.Pool, purl: str) -> str:
    status: str = await db.fetchval(
        "SELECT resolved_status FROM vex.consensus WHERE component_purl = $1 "
        "AND vulnerability_id = $2",
        purl,
        CVE,
    )
    return status


async def open_conflicts(db: asyncpg.Pool) -> list[str]:
    rows = await db.fetch(
        "SELECT component_purl FROM vex.consensus_conflicts WHERE resolved_at IS NULL "
        "ORDER BY component_purl"
    )
    return [r["component_purl"] for r in rows]


def one_line(text: str) -> str:
    assert len(text.splitlines()) == 1 and text.startswith("error:"), text
    return text


async def test_conflicts_are_listed_resolved_with_who_and_why_and_decide_the_next_recompute(
    db: asyncpg.Pool,
    database_url: str,
    valkey_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: Any,
) -> None:
    env = {"FLEET_DATABASE_URL": database_url, "FLEET_VALKEY_URL": valkey_url}
    t0 = datetime(2025, 5, 1, tzinfo=UTC)
    async with db.acquire() as conn, conn.transaction():
        await service.set_trust(
            conn,
            [
                IssuerTrust(
                    issuer_id=VENDOR, trust_score=Decimal("0.90"), priority=1, issuer_type="vendor"
                ),
                IssuerTrust(
                    issuer_id=DISTRO, trust_score=Decimal("0.50"), priority=1, issuer_type="distro"
                ),
            ],
        )
    # Both pairs: the vendor says not_affected, the distro affected, at one priority.
    await ingest(
        db,
        openvex(VENDOR, LEFT, "not_affected", t0),
        openvex(DISTRO, LEFT, "affected", t0),
        openvex(VENDOR, RIGHT, "not_affected", t0),
        openvex(DISTRO, RIGHT, "affected", t0),
    )
    assert await status_of(db, LEFT) == await status_of(db, RIGHT) == "not_affected"

    listed = fleet_cli(env, "vex", "conflicts", "list", "--json")
    assert listed.returncode == 0, listed.stderr.decode()
    queue = json.loads(listed.stdout)
    assert sorted((c["component_purl"], c["vulnerability_id"]) for c in queue) == [
        (LEFT, CVE),
        (RIGHT, CVE),
    ]
    for conflict in queue:
        assert conflict["reason"] == "status_disagreement"
        assert sorted(conflict["statuses"]) == ["affected", "not_affected"]
        assert conflict["resolved_at"] is None and conflict["resolved_by"] is None
    left_id = next(c["conflict_id"] for c in queue if c["component_purl"] == LEFT)
    right_id = next(c["conflict_id"] for c in queue if c["component_purl"] == RIGHT)

    # Decided: recorded with who and why, and the pair recomputed with the decision.
    decided = fleet_cli(
        env, "vex", "conflicts", "resolve", left_id, "--by", "alice@example.test",
        "--why", "the distro's backport analysis is right", "--status", "affected",
    )  # fmt: skip
    assert decided.returncode == 0, decided.stderr.decode()
    assert "resolved by alice@example.test" in decided.stdout.decode()
    assert "decided affected" in decided.stdout.decode()
    assert await status_of(db, LEFT) == "affected"
    # Closed without a decision: recorded, the consensus left as it is.
    closed = fleet_cli(
        env, "vex", "conflicts", "resolve", right_id, "--by", "bob@example.test",
        "--why", "waiting for the vendor's fix",
    )  # fmt: skip
    assert closed.returncode == 0, closed.stderr.decode()
    assert await status_of(db, RIGHT) == "not_affected"

    stored = {
        str(r["conflict_id"]): r
        for r in await db.fetch(
            "SELECT conflict_id, resolved_at, resolution, resolved_by, resolution_note, "
            "decided_status FROM vex.consensus_conflicts"
        )
    }
    assert stored[left_id]["resolved_by"] == "alice@example.test"
    assert stored[left_id]["resolution_note"] == "the distro's backport analysis is right"
    assert stored[left_id]["decided_status"] == "affected"
    assert stored[right_id]["resolved_by"] == "bob@example.test"
    assert stored[right_id]["resolution_note"] == "waiting for the vendor's fix"
    assert stored[right_id]["decided_status"] is None
    assert all(r["resolved_at"] is not None for r in stored.values())
    # The decision is a statement of the review issuer, with who and why.
    review_raw = await db.fetchval(
        "SELECT raw_statement::text FROM vex.vex_raw WHERE issuer_id = $1 AND component_purl = $2",
        REVIEW_ISSUER,
        LEFT,
    )
    assert json.loads(review_raw)["review"] == {
        "conflict_id": left_id,
        "by": "alice@example.test",
        "why": "the distro's backport analysis is right",
        "status": "affected",
    }

    listed_all = fleet_cli(env, "vex", "conflicts", "list", "--all", "--json")
    assert listed_all.returncode == 0, listed_all.stderr.decode()
    history = {c["conflict_id"]: c for c in json.loads(listed_all.stdout)}
    assert history[left_id]["resolved_by"] == "alice@example.test"
    assert history[left_id]["decided_status"] == "affected"
    assert history[right_id]["resolution_note"] == "waiting for the vendor's fix"

    # A closure holds while the pair's result is unchanged: the worker recomputing both
    # pairs for an advisory reopens nothing.
    async with db.acquire() as conn, conn.transaction():
        await service.recompute(conn, [(LEFT, CVE), (RIGHT, CVE)], reason="advisory_drift")
    assert await open_conflicts(db) == []

    # The next recompute: the vendor repeats not_affected about both pairs, later. The
    # statements about the two pairs are alike; only the decision tells them apart.
    later = datetime(2025, 6, 1, tzinfo=UTC)
    await ingest(
        db,
        openvex(VENDOR, LEFT, "not_affected", later),
        openvex(VENDOR, RIGHT, "not_affected", later),
    )
    assert await status_of(db, LEFT) == "affected"
    assert await status_of(db, RIGHT) == "not_affected"
    # The decided pair has no conflict left; the other's result changed (a new
    # contributing statement), so its disagreement is queued again for review.
    assert await open_conflicts(db) == [RIGHT]
    contributing = await db.fetchval(
        "SELECT array_agg(r.issuer_id) FROM vex.consensus c "
        "JOIN vex.vex_raw r ON r.raw_id = ANY(c.contributing_vex_ids) "
        "WHERE c.component_purl = $1",
        LEFT,
    )
    assert contributing == [REVIEW_ISSUER]

    # Refused by the server: an unknown conflict, one already closed.
    unknown = fleet_cli(
        env, "vex", "conflicts", "resolve", str(uuid.uuid4()), "--by", "a", "--why", "b"
    )
    assert unknown.returncode == ExitCode.FAILED
    assert "no conflict" in one_line(unknown.stderr.decode().strip())
    again = fleet_cli(env, "vex", "conflicts", "resolve", left_id, "--by", "c", "--why", "d")
    assert again.returncode == ExitCode.FAILED
    assert "already closed" in one_line(again.stderr.decode().strip())
    assert (
        await db.fetchval(
            "SELECT resolved_by FROM vex.consensus_conflicts WHERE conflict_id = $1",
            uuid.UUID(left_id),
        )
        == "alice@example.test"
    )

    # Bad arguments: one line, the usage exit code, nothing stored.
    for args, expected in (
        (("resolve", "not-a-uuid", "--by", "a", "--why", "b"), "is not a UUID"),
        (("resolve", right_id, "--why", "b"), "Missing option '--by'"),
        (("resolve", right_id, "--by", " ", "--why", "b"), "must not be blank"),
        (("resolve", right_id, "--by", "a", "--why", "b", "--status", "nope"), "--status"),
        (("list", "--limit", "0"), "--limit"),
    ):
        code, _, stderr = fleet_in_process(capsys, monkeypatch, "vex", "conflicts", *args)
        assert code == ExitCode.USAGE, (args, stderr)
        assert expected in one_line(stderr), (args, stderr)
