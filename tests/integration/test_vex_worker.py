"""vex-consensus end to end: statements and trust in PostgreSQL, advisories in, changed
results out on ``vex:consensus``. Worker tests run on fakeredis and on real Valkey;
CLI tests run ``fleet vex`` as a subprocess against real servers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.exceptions as redis_exc
import structlog
import structlog.testing

from contracts.concelier import AdvisoryUpdated, AffectedPackage
from contracts.vex import ConsensusUpdated
from contracts.wire import decode_data, decode_event, encode_event
from devkit import workload
from devkit.workload import Statement
from tests.helpers import OpenTx, fleet_cli, metric, poll, resources, running
from workers.partitions import key_for, stream_keys
from workers.publishing import publish
from workers.vex_consensus import VexConsensusWorker, issuers, outbox, service, store, telemetry
from workers.vex_consensus.consensus import IssuerTrust
from workers.vex_consensus.documents import parse_document
from workers.vex_consensus.purls import canonical_purl
from workers.vex_consensus.worker import advisory_pairs

DRIFT = "concelier:drift"
GROUP = "vex-consensus"
OUT = "vex:consensus"
VEX_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "vex"
SAMPLES = sorted(VEX_DIR.glob("*.json"))
needs_samples = pytest.mark.skipif(
    not SAMPLES, reason=f"sample VEX documents not found at {VEX_DIR}"
)

VULN = "CVE-2025-1001"
ALIAS = "GHSA-aaaa-bbbb-cccc"
A = "pkg:npm/left-pad@1.3.0"
A_BASE = "pkg:npm/left-pad"
B = "pkg:npm/right-pad@2.0.0"
C = "pkg:npm/mid-pad@0.1.0"
D = "pkg:npm/no-vex@1.0.0"
TENANT = uuid.UUID("0b5e7f2a-1c3d-4e5f-8a9b-0c1d2e3f4a5b")
T0 = datetime(2025, 3, 1, tzinfo=UTC)

VENDOR, DISTRO, RESEARCH, ANON = (
    "https://vendor.example/psirt",
    "https://distro.example/security",
    "researcher@example.org",
    "anonymous",
)


def trust(issuer_id: str, score: str, priority: int, kind: str = "other") -> IssuerTrust:
    return IssuerTrust(
        issuer_id=issuer_id,
        trust_score=Decimal(score),
        priority=priority,
        issuer_type=kind,  # type: ignore[arg-type]  # test literals are valid issuer types
    )


TRUST = [
    trust(VENDOR, "0.90", 1, "vendor"),
    trust(DISTRO, "0.50", 1, "distro"),
    trust(RESEARCH, "0.70", 2, "researcher"),
]


def openvex(author: str, statements: Sequence[Statement], at: datetime) -> bytes:
    """An OpenVEX document of (purl, status, justification) statements about VULN."""
    return workload.openvex(author, statements, vulnerability=VULN, at=at)


DOCS = [
    openvex(
        VENDOR,
        [(A, "not_affected", "component_not_present"), (B, "affected", None)],
        T0,
    ),
    openvex(
        DISTRO,
        [(B, "not_affected", "vulnerable_code_not_present"), (A_BASE, "fixed", None)],
        T0,
    ),
    openvex(RESEARCH, [(A, "affected", None)], T0),
    openvex(ANON, [(C, "affected", None)], T0),
]


def advisory(purls: Sequence[str], *, aliases: Sequence[str] = (ALIAS,)) -> AdvisoryUpdated:
    return AdvisoryUpdated(
        event_id=uuid.uuid4(),
        version=1,
        tenant_id=TENANT,
        occurred_at=datetime.now(UTC) - timedelta(milliseconds=5),
        source="OSV",
        correlation_id="corr-1",
        advisory_id=VULN,
        aliases=list(aliases),
        affected=[AffectedPackage(purl=p) for p in purls],
        revision=2,
        document_sha256="ab" * 32,
        modified_at=T0,
    )


async def seed(
    db: asyncpg.Pool, docs: Sequence[bytes] = DOCS, rows: Sequence[IssuerTrust] = TRUST
) -> None:
    """Statements and trust stored directly, with no recompute (as before a deploy)."""
    async with db.acquire() as conn, conn.transaction():
        await store.insert_statements(conn, [parse_document(d) for d in docs])
        await issuers.upsert_trust(conn, rows)


async def published(redis: Any) -> list[ConsensusUpdated]:
    return [decode_data(ConsensusUpdated, fields[b"data"]) for _, fields in await redis.xrange(OUT)]


async def consensus(db: asyncpg.Pool) -> dict[tuple[str, str], asyncpg.Record]:
    rows = await db.fetch("SELECT * FROM vex.consensus")
    return {(r["component_purl"], r["vulnerability_id"]): r for r in rows}


async def handled(redis: Any, db: asyncpg.Pool, count: int) -> bool:
    """``count`` advisories committed and acknowledged (acks follow after_commit's publish)."""
    inbox = await db.fetchval("SELECT count(*) FROM fleet.inbox WHERE group_name = $1", GROUP)
    if inbox != count:
        return False
    return int((await redis.xpending(DRIFT, GROUP))["pending"]) == 0


async def publish_advisory(redis: Any, event: AdvisoryUpdated) -> None:
    await publish(redis, DRIFT, [event])


async def outbox_rows(db: asyncpg.Pool) -> int:
    return int(await db.fetchval("SELECT count(*) FROM vex.consensus_outbox"))


async def test_advisory_publishes_exactly_the_pairs_whose_result_changed(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    await seed(db)
    # A's consensus exists already and will not change; B has none yet.
    async with db.acquire() as conn, conn.transaction():
        await service.recompute(conn, [(A, VULN)], reason="ingestion_delta")
    assert await outbox.publish(db, redis) == 1
    before = await consensus(db)
    assert set(before) == {(A, VULN)}
    # The vendor (0.90) against the distro's versionless "fixed" (0.50), both at level 1.
    assert before[(A, VULN)]["resolved_status"] == "not_affected"
    assert before[(A, VULN)]["conflict_detected"] is True

    disagreements = metric("fleet_vex_consensus_conflicts_total", reason="status_disagreement")
    recomputes = metric("fleet_vex_recompute_duration_seconds_count", reason="advisory_drift")
    latencies = metric("fleet_vex_consensus_latency_seconds_count")
    event = advisory([A, B, C, D])
    worker = VexConsensusWorker(resources(settings_for(), redis, db))
    async with running(worker):
        await publish_advisory(redis, event)
        await poll(lambda: handled(redis, db, 1), what="the advisory handled")

        after = await consensus(db)
        assert set(after) == {(A, VULN), (B, VULN)}  # C: untrusted issuer only; D: no VEX
        assert after[(A, VULN)]["computed_at"] == before[(A, VULN)]["computed_at"]
        b = after[(B, VULN)]
        assert (b["resolved_status"], b["conflict_detected"], str(b["confidence"])) == (
            "affected",
            True,
            "0.6429",
        )
        events = await published(redis)
        assert len(events) == 2  # A's from the seed step, then exactly B's
        new = events[1]
        assert (new.component_purl, new.vulnerability_id) == (B, VULN)
        assert new.resolved_status == "affected" and new.conflict_detected
        assert new.digest == b["digest"]
        assert new.event_id == service.consensus_event_id((B, VULN), b["digest"], None)
        assert new.reason == "advisory_drift"
        assert (new.tenant_id, new.causation_id, new.correlation_id) == (
            TENANT,
            str(event.event_id),
            "corr-1",
        )
        assert new.contributing_vex_ids == list(b["contributing_vex_ids"])
        assert await outbox_rows(db) == 0
        queued = await db.fetch("SELECT * FROM vex.consensus_conflicts")
        assert {(q["component_purl"], tuple(q["statuses"]), q["resolved_at"]) for q in queued} == {
            (A, ("fixed", "not_affected"), None),  # queued by the seed step
            (B, ("affected", "not_affected"), None),
        }
        assert (
            metric("fleet_vex_consensus_conflicts_total", reason="status_disagreement")
            == disagreements + 1
        )
        assert (
            metric("fleet_vex_recompute_duration_seconds_count", reason="advisory_drift")
            == recomputes + 1
        )
        assert metric("fleet_vex_consensus_latency_seconds_count") == latencies + 1

        # The same advisory again, under a new event id: nothing changes, nothing is published.
        await publish_advisory(redis, advisory([A, B, C, D]))
        await poll(lambda: handled(redis, db, 2), what="the repeated advisory handled")
        assert await consensus(db) == after
        assert len(await published(redis)) == 2
        assert await db.fetchval("SELECT count(*) FROM vex.consensus_conflicts") == 2
        assert await outbox_rows(db) == 0
    assert await redis.xlen(f"{DRIFT}:dlq") == 0


async def test_trust_change_flips_a_result_and_publishes_it(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    await seed(db)
    worker = VexConsensusWorker(resources(settings_for(), redis, db))
    async with running(worker):
        await publish_advisory(redis, advisory([A, B]))
        await poll(lambda: handled(redis, db, 1), what="the advisory handled")
    first = await published(redis)
    assert {(e.component_purl, e.resolved_status) for e in first} == {
        (A, "not_affected"),
        (B, "affected"),
    }
    old = await consensus(db)
    old_b = old[(B, VULN)]

    async with db.acquire() as conn, conn.transaction():
        report = await service.set_trust(conn, [trust(DISTRO, "0.95", 1, "distro")])
    assert report.changed_issuers == (DISTRO,)
    assert await outbox.publish(db, redis) == report.recompute.events

    rows = await consensus(db)
    b = rows[(B, VULN)]
    assert (b["resolved_status"], b["conflict_detected"]) == ("not_affected", True)
    new = (await published(redis))[len(first) :]
    # B flipped; the distro's versionless statement is a pair of its own and appears; it
    # also speaks for A, where the distro (0.95) now outweighs the vendor (0.90). The
    # distro had a trust row: a knob moved, so the reason is policy_knob.
    assert {(e.component_purl, e.resolved_status, e.reason) for e in new} == {
        (B, "not_affected", "policy_knob"),
        (A_BASE, "fixed", "policy_knob"),
        (A, "fixed", "policy_knob"),
    }
    assert rows[(A, VULN)]["digest"] != old[(A, VULN)]["digest"]
    conflicts = {r["digest"]: r for r in await db.fetch("SELECT * FROM vex.consensus_conflicts")}
    assert conflicts[old_b["digest"]]["resolution"] == "superseded"
    assert conflicts[b["digest"]]["resolved_at"] is None

    # Setting the same trust again changes nothing and publishes nothing.
    async with db.acquire() as conn, conn.transaction():
        again = await service.set_trust(conn, [trust(DISTRO, "0.95", 1, "distro")])
    assert again.changed_issuers == () and again.recompute.pairs == 0
    assert await outbox.publish(db, redis) == 0


async def test_pair_left_without_eligible_statements_is_withdrawn_and_announced(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    await seed(db, rows=[*TRUST, trust(ANON, "0.40", 3)])
    worker = VexConsensusWorker(resources(settings_for(), redis, db))
    async with running(worker):
        await publish_advisory(redis, advisory([C]))
        await poll(lambda: handled(redis, db, 1), what="the advisory handled")
        row = (await consensus(db))[(C, VULN)]
        assert row["resolved_status"] == "affected"

        await db.execute("DELETE FROM vex.issuer_trust WHERE issuer_id = $1", ANON)
        await publish_advisory(redis, advisory([C]))
        await poll(lambda: handled(redis, db, 2), what="the second advisory handled")
    assert await consensus(db) == {}
    withdrawn = (await published(redis))[-1]
    assert (withdrawn.component_purl, withdrawn.resolved_status, withdrawn.digest) == (
        C,
        None,
        None,
    )
    assert withdrawn.event_id == service.consensus_event_id((C, VULN), None, row["digest"])


async def test_outbox_left_by_a_crash_is_published_by_the_background_task(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    await seed(db)
    # Committed, never published: what a crash between commit and XADD leaves behind.
    async with db.acquire() as conn, conn.transaction():
        report = await service.recompute(
            conn, [(A, VULN), (B, VULN), (A_BASE, VULN)], reason="ingestion_delta"
        )
    assert report.events == 3 and await outbox_rows(db) == 3
    worker = VexConsensusWorker(resources(settings_for(), redis, db))
    async with running(worker):
        await poll(lambda: _outbox_empty(db), what="the outbox flushed")
    events = await published(redis)
    assert sorted(e.component_purl for e in events) == sorted([A, B, A_BASE])
    assert len({e.event_id for e in events}) == 3


async def _outbox_empty(db: asyncpg.Pool) -> bool:
    return await outbox_rows(db) == 0


async def test_conflict_queue_depth_gauge_equals_open_conflicts(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    purls = [f"pkg:npm/split-{i}@1.0.0" for i in range(7)]
    docs = [
        openvex(VENDOR, [(p, "affected", None) for p in purls], T0),
        openvex(DISTRO, [(p, "fixed", None) for p in purls[:5]], T0),
    ]
    await seed(db, docs)
    worker = VexConsensusWorker(resources(settings_for(), redis, db))
    async with running(worker):
        await publish_advisory(redis, advisory(purls))
        await poll(lambda: handled(redis, db, 1), what="the advisory handled")
        assert await _open(db) == 5
        await poll(lambda: _gauge_is(5), what="gauge at 5")
        # The conflicts belong to the advisory's tenant, the deepest one.
        tenants = await db.fetch("SELECT DISTINCT tenant_id FROM vex.consensus_conflicts")
        assert [r["tenant_id"] for r in tenants] == [TENANT]
        assert metric("fleet_vex_conflict_queue_tenant_max_depth") == 5
        # A reviewer closes two; the background refresh follows.
        await db.execute(
            "UPDATE vex.consensus_conflicts SET resolved_at = now(), resolution = 'reviewed' "
            "WHERE component_purl = ANY($1::text[])",
            purls[:2],
        )
        await poll(lambda: _gauge_is(3), what="gauge at 3")
        # Two conflicts of another tenant: the total grows, the deepest tenant stays at 3.
        other = uuid.uuid4()
        await db.execute(
            "UPDATE vex.consensus_conflicts SET tenant_id = $2 WHERE component_purl = ANY($1)",
            purls[2:4],
            other,
        )
        await service.refresh_conflict_gauge(db)
        assert metric("fleet_vex_conflict_queue_depth") == 3
        assert metric("fleet_vex_conflict_queue_tenant_max_depth") == 2
    assert await _open(db) == metric("fleet_vex_conflict_queue_depth") == 3


async def test_trust_changes_are_recorded_and_exported_once_with_their_reason(
    db: asyncpg.Pool,
) -> None:
    await seed(db)
    knob_before = metric("fleet_vex_recompute_duration_seconds_count", reason="policy_knob")
    update_before = metric("fleet_vex_recompute_duration_seconds_count", reason="issuer_update")
    distro_before = metric("fleet_vex_issuer_trust_changes_total", issuer=DISTRO, tier="distro")
    with structlog.testing.capture_logs() as logs:
        async with db.acquire() as conn, conn.transaction():
            # The distro had a row: its weight moved, a policy knob.
            knob = await service.set_trust(conn, [trust(DISTRO, "0.95", 1, "distro")])
    assert knob.recompute.reason == "policy_knob" and knob.recompute.changed
    async with db.acquire() as conn, conn.transaction():
        added = await service.set_trust(conn, [trust(ANON, "0.40", 3, "community")])
    assert added.recompute.reason == "issuer_update"
    recorded = await db.fetch(
        "SELECT issuer_id, issuer_type, reason, score_before, score_after, observed_at "
        "FROM vex.trust_changes ORDER BY change_id"
    )
    assert [
        (r["issuer_id"], r["issuer_type"], r["reason"], str(r["score_before"]), r["observed_at"])
        for r in recorded
    ] == [
        (DISTRO, "distro", "policy_knob", "0.50", None),
        (ANON, "community", "issuer_update", "None", None),
    ]
    assert await telemetry.observe_trust_changes(db) == 2
    assert await telemetry.observe_trust_changes(db) == 0  # each change is counted once
    assert metric("fleet_vex_issuer_trust_changes_total", issuer=DISTRO, tier="distro") == (
        distro_before + 1
    )
    assert metric("fleet_vex_issuer_trust_changes_total", issuer=ANON, tier="community") >= 1
    assert (
        metric("fleet_vex_recompute_duration_seconds_count", reason="policy_knob")
        == knob_before + 1
    )
    assert (
        metric("fleet_vex_recompute_duration_seconds_count", reason="issuer_update")
        == update_before + 1
    )
    # Each changed pair's decision is logged with the fields seed 004 names.
    decisions = [e for e in logs if e["event"] == "vex.decision"]
    assert len(decisions) == knob.recompute.changed
    fields = {"correlationId", "artifactKey", "advisoryKey", "issuer", "trustTier"}
    fields |= {"weightBefore", "weightAfter", "justification"}
    assert all(fields <= d.keys() and d["reason"] == "policy_knob" for d in decisions)
    flipped = {d["artifactKey"]: d for d in decisions}[A_BASE]
    assert (flipped["advisoryKey"], flipped["issuer"], flipped["trustTier"]) == (
        VULN,
        DISTRO,
        "distro",
    )
    assert flipped["weightAfter"] is not None and flipped["statusAfter"] == "fixed"


async def _open(db: asyncpg.Pool) -> int:
    return int(
        await db.fetchval("SELECT count(*) FROM vex.consensus_conflicts WHERE resolved_at IS NULL")
    )


async def _gauge_is(value: float) -> bool:
    return metric("fleet_vex_conflict_queue_depth") == value


async def test_ten_thousand_purls_recompute_in_a_bounded_number_of_round_trips(
    db: asyncpg.Pool, settings_for: Any
) -> None:
    import fakeredis

    purls = [f"pkg:pypi/pkg-{i:05d}@1.{i % 7}.0" for i in range(10_000)]
    docs = [
        openvex(VENDOR, [(p, "not_affected", "component_not_present") for p in purls], T0),
        openvex(DISTRO, [(p, "affected", None) for p in purls[::2]], T0),
        openvex(RESEARCH, [(p, "fixed", None) for p in purls[::3]], T0),
    ]
    await seed(db, docs)
    redis = fakeredis.FakeAsyncRedis()
    worker = VexConsensusWorker(resources(settings_for(), redis, db))
    event = advisory(purls, aliases=())

    async def apply_counting() -> list[str]:
        queries: list[str] = []

        def log(record: Any) -> None:
            queries.append(record.query)

        async with db.acquire() as conn:
            conn.add_query_logger(log)
            try:
                async with conn.transaction():
                    await worker.apply(OpenTx(conn), [event])
            finally:
                conn.remove_query_logger(log)
        # asyncpg introspects a type once per connection (typeinfo_tree, wrapped in two
        # set_config('jit') calls), whatever the number of pairs: not the worker's queries.
        return [
            q
            for q in queries
            if "typeinfo_tree" not in q and "set_config('jit'" not in " ".join(q.split())
        ]

    first = await apply_counting()
    assert await db.fetchval("SELECT count(*) FROM vex.consensus") == 10_000
    assert await outbox_rows(db) == 10_000
    # BEGIN, one lock, then per 5,000 pairs two reads and at most five writes, COMMIT.
    assert len(first) <= 2 + 1 + 2 * 7, [" ".join(q.split())[:70] for q in first]
    second = await apply_counting()
    assert len(second) <= 2 + 1 + 2 * 2, second  # nothing changed: reads only
    assert await outbox_rows(db) == 10_000
    print(f"round trips for 10,000 pairs: {len(first)} (all new), {len(second)} (unchanged)")
    await redis.aclose()


# ------------------------------------------------------------------ purl identity and scope

# The vendor (priority 1) and the distro (priority 2), as a security team sets them up.
SCOPE_TRUST = [trust(VENDOR, "0.90", 1, "vendor"), trust(DISTRO, "0.80", 2, "distro")]
APP_VENDOR = "pkg:oci/app@sha256%3Aaa11?os=linux&arch=amd64"
APP_DISTRO = "pkg:oci/app@sha256%3Aaa11?arch=amd64&os=linux"
WEB_ARCH = "pkg:oci/web@sha256%3Abb22?arch=amd64"
WEB_ARM = "pkg:oci/web@sha256%3Abb22?arch=arm64"
WEB_DISTRO = "pkg:oci/web@sha256%3Abb22?arch=amd64&os=linux"
TOOL = "pkg:golang/github.com/acme/tool@v1.2.0"
TOOL_CLI = "pkg:golang/github.com/acme/tool@v1.2.0#cmd/cli"

# (vendor's purl, distro's purl = the pair, vendor status, distro status, expected status
#  of the pair, whose statement decides it), worked by hand: a vendor statement whose
#  scope covers the pair decides it at priority 1; one that does not leaves the distro.
SCOPE_CASES = {
    "qualifiers-in-another-order/vendor-not-affected": (
        APP_VENDOR, APP_DISTRO, "not_affected", "affected", "not_affected", VENDOR),
    "qualifiers-in-another-order/vendor-affected": (
        APP_VENDOR, APP_DISTRO, "affected", "not_affected", "affected", VENDOR),
    "qualifier-subset/vendor-fixed": (
        WEB_ARCH, WEB_DISTRO, "fixed", "affected", "fixed", VENDOR),
    "qualifier-subset/vendor-affected": (
        WEB_ARCH, WEB_DISTRO, "affected", "fixed", "affected", VENDOR),
    "versionless/vendor-not-affected": (
        A_BASE, A, "not_affected", "affected", "not_affected", VENDOR),
    "versionless/vendor-affected": (
        A_BASE, A, "affected", "not_affected", "affected", VENDOR),
    "subpath/vendor-fixed": (TOOL, TOOL_CLI, "fixed", "affected", "fixed", VENDOR),
    "subpath/vendor-affected": (TOOL, TOOL_CLI, "affected", "fixed", "affected", VENDOR),
    "qualifier-with-another-value/vendor-not-affected": (
        WEB_ARM, WEB_DISTRO, "not_affected", "affected", "affected", DISTRO),
    "qualifier-with-another-value/vendor-affected": (
        WEB_ARM, WEB_DISTRO, "affected", "not_affected", "not_affected", DISTRO),
}  # fmt: skip


@pytest.mark.parametrize("vendor_first", [True, False], ids=["vendor-first", "distro-first"])
@pytest.mark.parametrize(
    ("vendor_purl", "pair_purl", "vendor", "distro", "expected", "decider"),
    list(SCOPE_CASES.values()),
    ids=list(SCOPE_CASES),
)
async def test_a_vendor_statement_reaches_every_product_its_scope_covers(
    db: asyncpg.Pool,
    vendor_first: bool,
    vendor_purl: str,
    pair_purl: str,
    vendor: str,
    distro: str,
    expected: str,
    decider: str,
) -> None:
    justified = "vulnerable_code_not_present"
    docs = {
        VENDOR: parse_document(
            openvex(
                VENDOR, [(vendor_purl, vendor, justified if vendor == "not_affected" else None)], T0
            )
        ),
        DISTRO: parse_document(
            openvex(
                DISTRO, [(pair_purl, distro, justified if distro == "not_affected" else None)], T0
            )
        ),
    }
    async with db.acquire() as conn, conn.transaction():
        await issuers.upsert_trust(conn, SCOPE_TRUST)
    for issuer in [VENDOR, DISTRO] if vendor_first else [DISTRO, VENDOR]:
        async with db.acquire() as conn, conn.transaction():
            await service.import_documents(conn, [docs[issuer]])

    pair = (canonical_purl(pair_purl), VULN)
    rows = await consensus(db)
    row = rows[pair]
    (deciding,) = docs[decider].records
    assert (row["resolved_status"], list(row["contributing_vex_ids"])) == (
        expected,
        [deciding.statement.raw_id],
    )
    assert row["conflict_detected"] is False  # the other issuer is a lower level: dissent
    # Statements make pairs of their own, and only in canonical form.
    assert set(rows) <= {pair, (canonical_purl(vendor_purl), VULN)}

    # An advisory naming the product in another spelling meets the same pair: no change.
    triggers = advisory_pairs([advisory([pair_purl.replace("pkg:", "PKG:", 1)], aliases=())])
    assert list(triggers) == [pair]
    async with db.acquire() as conn, conn.transaction():
        report = await service.recompute(conn, triggers, reason="advisory_drift")
    assert report.changed == 0
    assert await consensus(db) == rows


async def test_an_advisory_with_an_invalid_purl_is_dead_lettered_with_the_reason(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    await seed(db)
    worker = VexConsensusWorker(resources(settings_for(), redis, db))
    async with running(worker):
        await publish_advisory(redis, advisory([A, "pkg:npm/"]))
        await poll(lambda: _dead_letters(redis, 1), what="the advisory dead-lettered")
    ((_, fields),) = await redis.xrange(f"{DRIFT}:dlq")
    assert "invalid purl 'pkg:npm/'" in json.dumps(
        {k.decode(): v.decode() for k, v in fields.items()}
    )
    assert await consensus(db) == {}


async def _dead_letters(redis: Any, count: int) -> bool:
    return int(await redis.xlen(f"{DRIFT}:dlq")) == count


# ------------------------------------------------------------------ fleet vex (CLI)


def _env(database_url: str, valkey_url: str) -> dict[str, str]:
    return {"FLEET_DATABASE_URL": database_url, "FLEET_VALKEY_URL": valkey_url}


async def _counts(db: asyncpg.Pool) -> tuple[int, int, int]:
    return (
        int(await db.fetchval("SELECT count(*) FROM vex.vex_raw")),
        int(await db.fetchval("SELECT count(*) FROM vex.consensus")),
        int(await db.fetchval("SELECT count(*) FROM vex.issuer_trust")),
    )


def _one_line_error(result: Any) -> str:
    stderr: str = result.stderr.decode().strip()
    assert result.returncode != 0
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("error:"), stderr
    assert "Traceback" not in stderr
    return stderr


@needs_samples
async def test_cli_imports_every_sample_document_once(
    real_redis: Any, db: asyncpg.Pool, database_url: str, valkey_url: str
) -> None:
    env = _env(database_url, valkey_url)
    files = SAMPLES
    assert len(files) == 8
    expected = {r.statement.raw_id for f in files for r in parse_document(f.read_bytes()).records}
    result = fleet_cli(env, "vex", "import", *map(str, files), timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    stdout = result.stdout.decode()
    for f in files:
        assert str(f) in stdout
    # No issuer has a trust row yet: every statement is stored, none decides anything.
    assert await _counts(db) == (len(expected), 0, 0)
    assert await real_redis.xlen(OUT) == 0

    again = fleet_cli(env, "vex", "import", str(VEX_DIR / "csaf-rhsa-2020_1358.json"))
    assert again.returncode == 0, again.stderr.decode()
    assert "1468 statement(s), 0 new" in again.stdout.decode()
    assert "recomputed 0 pair(s)" in again.stdout.decode()
    assert await _counts(db) == (len(expected), 0, 0)

    # A trust row makes the author's statements count: the later bash statement wins.
    trusted = fleet_cli(
        env, "vex", "trust", "set", "John Doe", "--score", "0.8", "--priority", "1",
        "--type", "vendor",
    )  # fmt: skip
    assert trusted.returncode == 0, trusted.stderr.decode()
    assert "published 1 event(s)" in trusted.stdout.decode()
    rows = await consensus(db)
    assert {k: r["resolved_status"] for k, r in rows.items()} == {
        ("pkg:apk/wolfi/bash@1.0.0", "CVE-1234-5678"): "fixed"
    }
    (entry,) = await real_redis.xrange(OUT)
    event = decode_data(ConsensusUpdated, entry[1][b"data"])
    assert (event.resolved_status, event.reason) == ("fixed", "issuer_update")

    listed = fleet_cli(env, "vex", "trust", "list", "--json")
    assert listed.returncode == 0, listed.stderr.decode()
    issuers = {row["issuer_id"]: row for row in json.loads(listed.stdout)}
    assert issuers["John Doe"]["priority"] == 1 and issuers["John Doe"]["statements"] == 2
    assert issuers["https://www.redhat.com"]["priority"] is None  # statements, no trust row
    assert issuers["https://www.redhat.com"]["statements"] == 1468


async def test_cli_show_explains_every_statement(
    real_redis: Any, db: asyncpg.Pool, database_url: str, valkey_url: str
) -> None:
    env = _env(database_url, valkey_url)
    other_version = "pkg:npm/left-pad@9.9.9"
    await seed(db, [*DOCS, openvex(RESEARCH, [(other_version, "affected", None)], T0)])
    async with db.acquire() as conn, conn.transaction():
        await service.recompute(conn, [(A, VULN)], reason="ingestion_delta")
    # Any spelling of the purl names the pair; it is shown in canonical form.
    shown = fleet_cli(env, "vex", "show", " PKG:NPM/left-pad@1.3.0?unset= ", VULN, "--json")
    assert shown.returncode == 0, shown.stderr.decode()
    body = json.loads(shown.stdout)
    assert body["component_purl"] == A
    assert body["consensus"]["resolved_status"] == "not_affected"
    assert body["current"] is True
    assert body["deciding_priority"] == 1
    # not_affected 0.90 (vendor) against fixed 0.50 (the distro's versionless statement).
    assert body["level_weights"] == [
        {"status": "fixed", "weight": "0.50", "statements": 1},
        {"status": "not_affected", "weight": "0.90", "statements": 1},
    ]
    assert body["conflicts"] == ["status_disagreement"]
    why = {(s["issuer_id"], s["component_purl"]): s for s in body["statements"]}
    assert len(why) == 4  # every statement about the package for this vulnerability
    assert why[(VENDOR, A)]["disposition"] == "contributing" and why[(VENDOR, A)]["counted"]
    assert why[(VENDOR, A)]["scope"] == "names this exact purl"
    assert why[(RESEARCH, A)]["disposition"] == "lower_priority"
    assert "below the deciding level 1" in why[(RESEARCH, A)]["reason"]
    assert why[(DISTRO, A_BASE)]["disposition"] == "outvoted"
    assert why[(DISTRO, A_BASE)]["scope"] == "covers the pair: every version"
    assert why[(DISTRO, A_BASE)]["trust_score"] == "0.50"
    assert why[(RESEARCH, other_version)]["exclusion"] == "out_of_scope"
    assert why[(RESEARCH, other_version)]["scope"] == "names version 9.9.9, not 1.3.0"
    assert why[(VENDOR, A)]["source_document"].startswith("https://example.test/vex/")

    text = fleet_cli(env, "vex", "show", A, VULN)
    assert text.returncode == 0, text.stderr.decode()
    out = " ".join(text.stdout.decode().split())
    assert "not_affected" in out and "4 statement(s)" in out
    assert "scope: names version 9.9.9, not 1.3.0" in out
    assert "excluded (scope): the statement does not apply to this pair" in out
    assert "deciding priority 1: fixed 0.50 (1), not_affected 0.90 (1)" in out

    # Trust removed behind the worker's back: show says the stored row is stale.
    await db.execute("DELETE FROM vex.issuer_trust WHERE issuer_id = $1", VENDOR)
    stale = json.loads(fleet_cli(env, "vex", "show", A, VULN, "--json").stdout)
    assert stale["current"] is False
    assert {s["exclusion"] for s in stale["statements"] if s["issuer_id"] == VENDOR} == {
        "no_trust_row"
    }


async def test_cli_show_refuses_an_invalid_purl_with_one_line(
    database_url: str, valkey_url: str
) -> None:
    result = fleet_cli(_env(database_url, valkey_url), "vex", "show", "pkg:npm/", VULN)
    assert result.returncode == 2
    assert "PURL: invalid purl 'pkg:npm/'" in _one_line_error(result)


@needs_samples
@pytest.mark.parametrize(
    ("name", "mangle"),
    [
        ("csaf-rhsa-2020_1358.json", lambda b: b[: len(b) // 2]),
        ("openvex-bash-fixed.json", lambda b: b.replace(b'"fixed"', b'"mostly_fine"')),
        ("openvex-nginx-not-affected.json", lambda b: b""),
    ],
)
async def test_cli_invalid_document_writes_nothing(
    real_redis: Any,
    db: asyncpg.Pool,
    database_url: str,
    valkey_url: str,
    tmp_path: Path,
    name: str,
    mangle: Any,
) -> None:
    env = _env(database_url, valkey_url)
    await seed(db)
    before = await _counts(db)
    bad = tmp_path / f"broken-{name}"
    bad.write_bytes(mangle((VEX_DIR / name).read_bytes()))
    good = VEX_DIR / "openvex-git-multi-product.json"
    result = fleet_cli(env, "vex", "import", str(good), str(bad))
    stderr = _one_line_error(result)
    assert str(bad) in stderr and "nothing was imported" in stderr
    assert await _counts(db) == before  # not even the valid file before it
    assert await real_redis.xlen(OUT) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--score", "1.5", "--priority", "1"], "between 0 and 1"),
        (["--score", "0.555", "--priority", "1"], "two decimal places"),
        (["--score", "high", "--priority", "1"], "not a number"),
        (["--score", "0.5", "--priority", "first"], "not a whole number"),
        (["--score", "0.5", "--priority", "1", "--type", "oracle"], "is not one of"),
    ],
)
async def test_cli_trust_set_rejects_bad_input_with_one_line(
    db: asyncpg.Pool, database_url: str, valkey_url: str, args: list[str], message: str
) -> None:
    result = fleet_cli(_env(database_url, valkey_url), "vex", "trust", "set", VENDOR, *args)
    assert result.returncode == 2
    assert message in _one_line_error(result)
    assert await _counts(db) == (0, 0, 0)


async def test_cli_missing_file_is_one_line(database_url: str, valkey_url: str) -> None:
    result = fleet_cli(_env(database_url, valkey_url), "vex", "import", "/nonexistent/vex.json")
    assert "/nonexistent/vex.json: no such file" in _one_line_error(result)


async def test_outbox_deletes_only_what_a_partition_took_and_publishes_the_rest_later(
    redis: Any, db: asyncpg.Pool
) -> None:
    # The outbox's events go to two partitions; the second refuses (as a primary failing
    # over would). The first partition's rows leave the outbox at once, the rest on a
    # later flush, and no event reaches vex:consensus twice.
    now = datetime.now(UTC)
    events = [
        ConsensusUpdated(
            event_id=uuid.uuid4(),
            version=1,
            tenant_id=uuid.uuid4(),
            occurred_at=now,
            source="test",
            component_purl=f"pkg:npm/left-pad@1.{n}.0",
            vulnerability_id=VULN,
            computed_at=now,
            reason="ingestion_delta",
        )
        for n in range(30)
    ]
    async with db.acquire() as conn:
        await outbox.write(conn, [(e.event_id, encode_event(e)) for e in events])
    stream = "vex:consensus"
    taking = key_for(stream, str(events[0].tenant_id), 2)
    (refusing,) = set(stream_keys(stream, 2)) - {taking}
    await redis.set(refusing, b"not a stream")  # XADD to it fails with WRONGTYPE

    with pytest.raises(redis_exc.ResponseError):
        await outbox.publish(db, redis, partitions=2)
    on_taking = int(await redis.xlen(taking))
    assert 0 < on_taking < len(events)
    assert await outbox_rows(db) == len(events) - on_taking

    await redis.delete(refusing)
    assert await outbox.publish(db, redis, partitions=2) == len(events) - on_taking
    seen = [
        decode_event(fields).event_id
        for key in (taking, refusing)
        for _, fields in await redis.xrange(key)
    ]
    assert sorted(seen) == sorted(e.event_id for e in events)
    assert await outbox_rows(db) == 0
