"""The pure parts of the vex-consensus shell: which pairs an advisory touches, what a
recompute writes and publishes, event identity, CLI argument checks and explanations."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from contracts.concelier import AdvisoryNew, AffectedPackage
from contracts.vex import VexStatus
from workers.kernel.worker import Resources
from workers.settings import load_settings
from workers.vex_consensus import service, store
from workers.vex_consensus.audit import Before
from workers.vex_consensus.cli import parse_trust, verdict_reason
from workers.vex_consensus.consensus import IssuerTrust, Statement, compute_consensus
from workers.vex_consensus.service import Trigger, consensus_event_id, plan_changes
from workers.vex_consensus.telemetry import TrustChange, recompute_reason, trust_changes
from workers.vex_consensus.worker import (
    MAX_PAIRS_PER_ADVISORY,
    VexConsensusWorker,
    advisory_pairs,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
VULN = "CVE-2025-0002"
TRUST = {
    "vendor": IssuerTrust(issuer_id="vendor", trust_score=Decimal("0.90"), priority=1),
    "distro": IssuerTrust(issuer_id="distro", trust_score=Decimal("0.60"), priority=1),
}


def stmt(n: int, issuer: str, purl: str, status: VexStatus) -> Statement:
    return Statement(
        raw_id=uuid.UUID(int=n),
        issuer_id=issuer,
        component_purl=purl,
        vulnerability_id=VULN,
        status=status,
        justification="component_not_present" if status == "not_affected" else None,
        published_at=T0,
    )


AGREE = "pkg:npm/agree@1.0.0"
SPLIT = "pkg:npm/split@1.0.0"
GONE = "pkg:npm/gone@1.0.0"
NONE = "pkg:npm/none@1.0.0"
# Statements are filed by (package, vulnerability), as the store loads them.
FILED = {
    ("pkg:npm/agree", VULN): [stmt(1, "vendor", AGREE, "fixed"), stmt(2, "distro", AGREE, "fixed")],
    ("pkg:npm/split", VULN): [
        stmt(3, "vendor", SPLIT, "affected"),
        stmt(4, "distro", SPLIT, "fixed"),
    ],
    # An issuer without trust: the pair has no consensus.
    ("pkg:npm/gone", VULN): [stmt(5, "stranger", GONE, "affected")],
}
PAIRS = [(AGREE, VULN), (GONE, VULN), (NONE, VULN), (SPLIT, VULN)]


def digest_of(pair: tuple[str, str]) -> str:
    result = compute_consensus(pair[0], pair[1], service.statements_for(pair, FILED), TRUST).result
    assert result is not None
    return result.digest


def test_only_changed_pairs_are_written_and_announced() -> None:
    stored = {(AGREE, VULN): digest_of((AGREE, VULN)), (GONE, VULN): "f" * 64}
    trigger = Trigger(tenant_id=uuid.uuid4(), causation_id="cause", correlation_id="corr")
    plan = plan_changes(
        PAIRS,
        FILED,
        TRUST,
        stored,
        reason="advisory_drift",
        computed_at=NOW,
        triggers={(SPLIT, VULN): trigger},
    )
    assert plan.unchanged == 2  # AGREE (same digest) and NONE (no row before or after)
    assert plan.changed == {(GONE, VULN): None, (SPLIT, VULN): digest_of((SPLIT, VULN))}
    assert [u.component_purl for u in plan.upserts] == [SPLIT]
    assert plan.deletes == ((GONE, VULN),)
    assert [(c.component_purl, c.statuses, c.reason) for c in plan.conflicts] == [
        (SPLIT, ("affected", "fixed"), "status_disagreement")
    ]
    # GONE's untrusted statement counts as missing provenance because GONE's result changed.
    assert plan.conflict_counts == {"missing_provenance": 1, "status_disagreement": 1}

    withdrawn, split = plan.events
    assert (withdrawn.component_purl, withdrawn.resolved_status, withdrawn.digest) == (
        GONE,
        None,
        None,
    )
    assert withdrawn.event_id == consensus_event_id((GONE, VULN), None, "f" * 64)
    assert withdrawn.tenant_id == service.SYSTEM_TENANT and withdrawn.causation_id is None
    assert split.event_id == consensus_event_id((SPLIT, VULN), split.digest, None)
    assert (split.tenant_id, split.causation_id, split.correlation_id) == (
        trigger.tenant_id,
        "cause",
        "corr",
    )
    assert (split.resolved_status, split.conflict_detected, split.confidence) == (
        "affected",
        True,
        "0.6000",
    )
    assert split.occurred_at == split.computed_at == NOW
    assert split.reason == "advisory_drift" and split.source == "vex-consensus"


def test_a_second_identical_recompute_plans_nothing() -> None:
    first = plan_changes(PAIRS, FILED, TRUST, {}, reason="ingestion_delta", computed_at=NOW)
    stored = {(u.component_purl, u.vulnerability_id): u.digest for u in first.upserts}
    again = plan_changes(PAIRS, FILED, TRUST, stored, reason="ingestion_delta", computed_at=NOW)
    assert (again.upserts, again.deletes, again.events, again.conflicts) == ((), (), (), ())
    assert again.changed == {} and again.conflict_counts == {}
    assert again.unchanged == len(PAIRS)


def test_every_statement_about_the_package_is_a_candidate_of_its_pairs() -> None:
    pair = ("pkg:npm/agree@1.0.0?os=linux", VULN)
    filed = {
        ("pkg:npm/agree", VULN): [
            stmt(1, "vendor", AGREE, "fixed"),
            stmt(2, "distro", "pkg:npm/agree", "affected"),
            stmt(3, "distro", "pkg:npm/agree@2.0.0", "affected"),
        ],
        ("pkg:npm/other", VULN): [stmt(4, "distro", "pkg:npm/other", "affected")],
    }
    # Candidates are the package's statements; the consensus decides which apply.
    found = service.statements_for(pair, filed)
    assert sorted(s.raw_id.int for s in found) == [1, 2, 3]
    outcome = compute_consensus(pair[0], VULN, found, TRUST)
    assert {v.raw_id.int: v.exclusion for v in outcome.verdicts} == {
        1: None,
        2: None,
        3: "out_of_scope",
    }
    assert store.lookups_for([pair, (AGREE, VULN), ("pkg:npm/other", VULN)]) == [
        ("pkg:npm/agree", VULN),
        ("pkg:npm/other", VULN),
    ]


def test_event_ids_follow_pair_and_digest() -> None:
    pair = (AGREE, VULN)
    assert consensus_event_id(pair, "a" * 64, None) == consensus_event_id(pair, "a" * 64, "x")
    assert consensus_event_id(pair, "a" * 64, None) != consensus_event_id(pair, "b" * 64, None)
    assert consensus_event_id(pair, "a" * 64, None) != consensus_event_id(
        (AGREE, "CVE-2025-0003"), "a" * 64, None
    )
    # Withdrawals of different results are different events.
    assert consensus_event_id(pair, None, "a" * 64) != consensus_event_id(pair, None, "b" * 64)
    # Pinned: a changed namespace or name layout would re-publish every result.
    assert str(consensus_event_id(("pkg:npm/a@1", "CVE-1"), "0" * 64, None)) == (
        "b012e3c1-58e5-506d-8b7f-848e4ee666b1"
    )
    assert str(consensus_event_id(("pkg:npm/a@1", "CVE-1"), None, "0" * 64)) == (
        "e03d8bff-04f8-507f-afa6-51d54ea7a0cd"
    )
    assert consensus_event_id(pair, "a" * 64, None).version == 5


def test_lock_buckets_are_stable_and_bounded() -> None:
    assert store.lock_bucket("CVE-2021-44228") == store.lock_bucket("CVE-2021-44228")
    assert store.lock_bucket("CVE-2021-44228") == 1497928457 % store.LOCK_BUCKETS
    assert {store.lock_bucket(f"CVE-2025-{i}") for i in range(10_000)} == set(
        range(store.LOCK_BUCKETS)
    )


def advisory(
    purls: list[str], advisory_id: str = VULN, aliases: list[str] | None = None
) -> AdvisoryNew:
    return AdvisoryNew(
        event_id=uuid.uuid4(),
        version=1,
        tenant_id=uuid.uuid4(),
        occurred_at=NOW,
        source="NVD",
        advisory_id=advisory_id,
        aliases=aliases or [],
        affected=[AffectedPackage(purl=p) for p in purls],
        document_sha256="cd" * 32,
        modified_at=NOW,
    )


def test_advisory_pairs_are_purls_times_names_first_event_wins() -> None:
    first = advisory(["pkg:npm/a@1", "pkg:npm/b@2", "pkg:npm/a@1"], aliases=["GHSA-x", " ", VULN])
    second = advisory(["pkg:npm/a@1", "pkg:npm/c@3"])
    pairs = advisory_pairs([first, second])
    assert sorted(pairs) == sorted(
        [
            ("pkg:npm/a@1", VULN),
            ("pkg:npm/b@2", VULN),
            ("pkg:npm/a@1", "GHSA-x"),
            ("pkg:npm/b@2", "GHSA-x"),
            ("pkg:npm/c@3", VULN),
        ]
    )
    assert pairs[("pkg:npm/a@1", VULN)].causation_id == str(first.event_id)
    assert pairs[("pkg:npm/c@3", VULN)] == Trigger(
        tenant_id=second.tenant_id, causation_id=str(second.event_id)
    )


def test_validate_refuses_advisories_without_names_or_too_many_pairs() -> None:
    settings = load_settings({})
    worker = VexConsensusWorker(Resources(settings=settings, redis=None))  # type: ignore[arg-type]  # validate never touches Valkey
    assert worker.validate(advisory(["pkg:npm/a@1"])) is None
    blank = advisory(["pkg:npm/a@1"], advisory_id=" ", aliases=[" "])
    assert worker.validate(blank) == "advisory has neither an advisoryId nor aliases"
    names = [f"ALIAS-{i}" for i in range(MAX_PAIRS_PER_ADVISORY // 1000)]
    huge = advisory([f"pkg:npm/p{i}@1" for i in range(1001)], aliases=names)
    problem = worker.validate(huge)
    assert problem is not None and "the limit is" in problem


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", "0.5", "1", "vendor"), "ISSUER must not be blank"),
        (("x" * 256, "0.5", "1", "vendor"), "longer than 255"),
        (("acme", "NaN", "1", "vendor"), "between 0 and 1"),
        (("acme", "-0.1", "1", "vendor"), "between 0 and 1"),
        (("acme", "0.125", "1", "vendor"), "two decimal places"),
        (("acme", "0.5", "1.5", "vendor"), "not a whole number"),
        (("acme", "0.5", "-1", "vendor"), "between 0 and"),
        (("acme", "0.5", "1", "Vendor"), "is not one of"),
    ],
)
def test_trust_arguments_are_checked(args: tuple[str, str, str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_trust(*args)


def test_trust_arguments_are_normalised() -> None:
    row = parse_trust("  acme  ", "0.5", " 2 ", "distro")
    assert row == IssuerTrust(
        issuer_id="acme", trust_score=Decimal("0.50"), priority=2, issuer_type="distro"
    )


def test_every_verdict_has_a_reason() -> None:
    base = "pkg:npm/x"
    pair_purl = "pkg:npm/x@1.0.0"
    trust = {
        **TRUST,
        "research": IssuerTrust(issuer_id="research", trust_score=Decimal("0.5"), priority=2),
        "community": IssuerTrust(issuer_id="community", trust_score=Decimal("0.3"), priority=1),
    }
    statements = [
        stmt(1, "vendor", pair_purl, "affected"),
        stmt(2, "distro", pair_purl, "fixed"),
        stmt(3, "research", pair_purl, "fixed"),
        stmt(4, "stranger", pair_purl, "fixed"),
        stmt(5, "community", base, "fixed"),
        stmt(8, "community", pair_purl, "fixed"),
        stmt(9, "vendor", "pkg:npm/x@2.0.0", "fixed"),
        Statement(
            raw_id=uuid.UUID(int=6),
            issuer_id="distro",
            component_purl=pair_purl,
            vulnerability_id=VULN,
            status="not_affected",
            published_at=datetime(2024, 1, 1, tzinfo=UTC),
        ),
        Statement(
            raw_id=uuid.UUID(int=7),
            issuer_id="distro",
            component_purl=base,
            vulnerability_id=VULN,
            status="fixed",
        ),
    ]
    outcome = compute_consensus(pair_purl, VULN, statements, trust)
    reasons = {v.raw_id.int: verdict_reason(v, outcome) for v in outcome.verdicts}
    assert reasons[1].startswith("counted: affected won at priority 1")
    assert reasons[2].startswith("counted, outvoted: fixed lost at priority 1")
    assert reasons[3] == "not deciding: priority 2 is below the deciding level 1"
    assert "no trust row" in reasons[4]
    assert "more specific scope" in reasons[5] and reasons[5].startswith("excluded (scope)")
    assert reasons[9] == "excluded (scope): the statement does not apply to this pair"
    assert "superseded" in reasons[6]
    assert "no timestamp" in reasons[7]


def test_advisory_purls_are_taken_in_canonical_form() -> None:
    event = advisory(
        [
            "pkg:oci/app@sha256%3Aaa11?os=linux&arch=amd64",
            "pkg:oci/app@sha256:aa11?arch=amd64&os=linux",
        ]
    )
    assert list(advisory_pairs([event])) == [("pkg:oci/app@sha256:aa11?arch=amd64&os=linux", VULN)]


def test_an_advisory_with_an_invalid_purl_is_refused_with_the_reason() -> None:
    worker = VexConsensusWorker(Resources(settings=load_settings({}), redis=None))  # type: ignore[arg-type]  # validate never touches Valkey
    problem = worker.validate(advisory(["pkg:npm/a@1", "pkg:maven/@1.3.4"]))
    assert problem == (
        "invalid purl 'pkg:maven/@1.3.4': purl is missing the required name component"
    )


def test_each_changed_pair_gets_an_audit_decision_with_the_seed_fields() -> None:
    before = {(SPLIT, VULN): Before(status="fixed", confidence=Decimal("0.4000"))}
    trigger = Trigger(tenant_id=uuid.uuid4(), correlation_id="corr-9")
    plan = plan_changes(
        PAIRS,
        FILED,
        TRUST,
        {(SPLIT, VULN): "0" * 64},
        reason="policy_knob",
        computed_at=NOW,
        triggers={(SPLIT, VULN): trigger},
        before=before,
    )
    decisions = {d.artifact_key: d for d in plan.decisions}
    split = decisions[SPLIT]
    # The vendor (0.90) outweighs the distro (0.60): it decides, affected at 0.6 of the level.
    assert (split.correlation_id, split.advisory_key, split.issuer) == ("corr-9", VULN, "vendor")
    assert (split.status_before, split.weight_before) == ("fixed", "0.4000")
    assert split.status_after == "affected" and split.weight_after == "0.6000"
    assert split.fields()["weightAfter"] == "0.6000" and split.fields()["trustTier"] == "other"
    agree = decisions[AGREE]
    assert agree.status_before is None and agree.weight_before is None
    assert set(decisions) == {AGREE, SPLIT}  # unchanged and empty pairs decide nothing


def test_a_trust_change_is_a_policy_knob_only_when_weight_or_level_moves() -> None:
    old = IssuerTrust(issuer_id="distro", trust_score=Decimal("0.60"), priority=1)
    heavier = IssuerTrust(issuer_id="distro", trust_score=Decimal("0.80"), priority=1)
    retyped = IssuerTrust(
        issuer_id="distro", trust_score=Decimal("0.60"), priority=1, issuer_type="distro"
    )
    new = IssuerTrust(issuer_id="new", trust_score=Decimal("0.50"), priority=2)
    assert TrustChange(before=old, after=heavier).reason == "policy_knob"
    assert TrustChange(before=old, after=retyped).reason == "issuer_update"
    assert TrustChange(before=None, after=new).reason == "issuer_update"
    changes = trust_changes({"distro": old}, [heavier, new], ["distro", "new"])
    assert recompute_reason(changes) == "policy_knob"
    assert recompute_reason(changes[1:]) == "issuer_update"
