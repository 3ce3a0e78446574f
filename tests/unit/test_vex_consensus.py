"""The consensus rules of docs/workers.md, rule by rule, plus its order-independence.

Every table row is worked by hand: raw ids are small integers (``UUID(int=n)``),
weights come from ``TRUST`` below, and the expected confidence is the winning
weight over the level weight, rounded half-even to four places.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.vex import VexStatus
from workers.vex_consensus.consensus import (
    ConflictReason,
    Disposition,
    ExclusionReason,
    IssuerTrust,
    Statement,
    compute_consensus,
    conflict_id_for,
    consensus_id_for,
    effective_status,
)

PAIR = "pkg:apk/wolfi/bash@1.0.0"
VULN = "CVE-2024-0001"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
JUSTIFIED = "component_not_present"


def trust_row(issuer_id: str, score: str, priority: int) -> IssuerTrust:
    return IssuerTrust(
        issuer_id=issuer_id, trust_score=Decimal(score), priority=priority, issuer_type="other"
    )


TRUST: dict[str, IssuerTrust] = {
    t.issuer_id: t
    for t in (
        trust_row("vendor", "0.90", 1),
        trust_row("distro", "0.80", 1),
        trust_row("distro2", "0.50", 1),
        trust_row("peer", "0.50", 1),
        trust_row("researcher", "0.70", 2),
        trust_row("researcher2", "0.70", 2),
        trust_row("community", "0.30", 3),
        trust_row("zero_a", "0.00", 5),
        trust_row("zero_b", "0.00", 5),
    )
}


def rid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


_DEFAULT = object()


def stmt(
    n: int,
    issuer: str,
    status: VexStatus,
    *,
    minutes: int | None = 0,
    purl: str = PAIR,
    vuln: str = VULN,
    justification: object = _DEFAULT,
    impact: str | None = None,
) -> Statement:
    """Statement ``n``; a ``not_affected`` is justified unless ``justification`` says otherwise."""
    if justification is _DEFAULT:
        justification = JUSTIFIED if status == "not_affected" else None
    assert justification is None or isinstance(justification, str)
    return Statement(
        raw_id=rid(n),
        issuer_id=issuer,
        component_purl=purl,
        vulnerability_id=vuln,
        status=status,
        justification=justification,
        impact_statement=impact,
        published_at=None if minutes is None else T0 + timedelta(minutes=minutes),
    )


@dataclass(frozen=True)
class Case:
    statements: list[Statement]
    status: VexStatus | None
    conflict: bool = False
    confidence: str = "1.0000"
    contributing: tuple[int, ...] = ()
    conflicts: tuple[ConflictReason, ...] = ()
    verdicts: dict[int, tuple[Disposition, ExclusionReason | None]] = field(default_factory=dict)
    pair: str = PAIR


def check(case: Case) -> None:
    outcome = compute_consensus(case.pair, VULN, case.statements, TRUST)
    assert outcome.conflicts == case.conflicts
    by_id = {v.raw_id: v for v in outcome.verdicts}
    for n, (disposition, exclusion) in case.verdicts.items():
        assert (by_id[rid(n)].disposition, by_id[rid(n)].exclusion) == (disposition, exclusion)
    if case.status is None:
        assert outcome.result is None
        return
    result = outcome.result
    assert result is not None
    assert result.resolved_status == case.status
    assert result.conflict_detected is case.conflict
    assert str(result.confidence) == case.confidence
    assert result.contributing_vex_ids == tuple(rid(n) for n in case.contributing)


RULE_1 = {
    "issuer-without-trust-row-is-excluded": Case(
        [stmt(1, "vendor", "fixed"), stmt(2, "stranger", "affected")],
        status="fixed",
        contributing=(1,),
        conflicts=("missing_provenance",),
        verdicts={1: ("contributing", None), 2: ("excluded", "no_trust_row")},
    ),
    "statement-without-timestamp-is-excluded": Case(
        [stmt(1, "vendor", "affected", minutes=None), stmt(2, "distro", "fixed")],
        status="fixed",
        contributing=(2,),
        conflicts=("missing_provenance",),
        verdicts={1: ("excluded", "no_timestamp")},
    ),
    "each-excluded-statement-is-counted": Case(
        [stmt(1, "stranger", "affected"), stmt(2, "vendor", "fixed", minutes=None)],
        status=None,
        conflicts=("missing_provenance", "missing_provenance"),
    ),
}

RULE_2 = {
    # 0.90 under_investigation against 0.80 fixed: the downgraded status still wins.
    "unjustified-not-affected-counts-as-under-investigation": Case(
        [stmt(1, "vendor", "not_affected", justification=None), stmt(2, "distro", "fixed")],
        status="under_investigation",
        conflict=True,
        confidence="0.5294",
        contributing=(1,),
        conflicts=("status_disagreement",),
    ),
    "justified-not-affected-stands": Case(
        [stmt(1, "vendor", "not_affected"), stmt(2, "distro", "fixed")],
        status="not_affected",
        conflict=True,
        confidence="0.5294",
        contributing=(1,),
        conflicts=("status_disagreement",),
    ),
    "impact-statement-alone-is-enough": Case(
        [stmt(1, "vendor", "not_affected", justification=None, impact="code removed")],
        status="not_affected",
        contributing=(1,),
    ),
    "blank-justification-is-missing": Case(
        [stmt(1, "vendor", "not_affected", justification="  ", impact=" ")],
        status="under_investigation",
        contributing=(1,),
    ),
}

RULE_3 = {
    "latest-statement-of-an-issuer-wins": Case(
        [stmt(1, "vendor", "affected", minutes=0), stmt(2, "vendor", "fixed", minutes=5)],
        status="fixed",
        contributing=(2,),
        verdicts={1: ("excluded", "superseded"), 2: ("contributing", None)},
    ),
    "equal-timestamps-take-the-less-safe-status-before-the-greater-id": Case(
        [stmt(2, "vendor", "fixed"), stmt(1, "vendor", "affected")],
        status="affected",
        contributing=(1,),
        verdicts={2: ("excluded", "superseded")},
    ),
    "equal-timestamps-and-status-take-the-greater-id": Case(
        [stmt(1, "vendor", "fixed"), stmt(2, "vendor", "fixed")],
        status="fixed",
        contributing=(2,),
        verdicts={1: ("excluded", "superseded")},
    ),
    "tie-uses-the-status-after-rule-2": Case(
        [stmt(1, "vendor", "not_affected", justification=None), stmt(2, "vendor", "fixed")],
        status="under_investigation",
        contributing=(1,),
    ),
    "a-superseded-statement-causes-no-conflict": Case(
        [
            stmt(1, "vendor", "affected", minutes=0),
            stmt(2, "vendor", "fixed", minutes=1),
            stmt(3, "distro", "fixed", minutes=0),
        ],
        status="fixed",
        contributing=(2, 3),
    ),
}

RULE_4 = {
    # Rule 4 works within an issuer: its most specific statement about the pair counts.
    "an-issuers-versioned-statement-beats-its-own-later-versionless-one": Case(
        [
            stmt(1, "vendor", "fixed", minutes=0),
            stmt(2, "vendor", "affected", minutes=9, purl="pkg:apk/wolfi/bash"),
        ],
        status="fixed",
        contributing=(1,),
        conflicts=("scope_mismatch",),
        verdicts={1: ("contributing", None), 2: ("excluded", "less_specific_scope")},
    ),
    # affected 0.90 against fixed 0.80 at level 1: 0.90 / 1.70 = 0.5294.
    "another-issuers-versionless-statement-still-counts": Case(
        [
            stmt(1, "vendor", "affected", purl="pkg:apk/wolfi/bash"),
            stmt(2, "distro", "fixed"),
        ],
        status="affected",
        conflict=True,
        confidence="0.5294",
        contributing=(1,),
        conflicts=("status_disagreement",),
        verdicts={1: ("contributing", None), 2: ("outvoted", None)},
    ),
    "a-less-specific-statement-at-a-better-priority-decides": Case(
        [
            stmt(1, "vendor", "affected", purl="pkg:apk/distro/git@2.39.0-r1"),
            stmt(2, "community", "fixed", purl="pkg:apk/distro/git@2.39.0-r1?arch=x86_64"),
        ],
        pair="pkg:apk/distro/git@2.39.0-r1?arch=x86_64",
        status="affected",
        contributing=(1,),
        verdicts={1: ("contributing", None), 2: ("lower_priority", None)},
    ),
    "agreeing-scopes-of-one-issuer-are-no-mismatch": Case(
        [stmt(1, "vendor", "fixed", purl="pkg:apk/wolfi/bash"), stmt(2, "vendor", "fixed")],
        status="fixed",
        contributing=(2,),
        verdicts={1: ("excluded", "less_specific_scope")},
    ),
    "statements-about-another-version-or-vulnerability-do-not-apply": Case(
        [
            stmt(1, "vendor", "affected", purl="pkg:apk/wolfi/bash@2.0.0"),
            stmt(2, "vendor", "affected", vuln="CVE-2024-9999"),
            stmt(3, "distro", "fixed"),
        ],
        status="fixed",
        contributing=(3,),
        verdicts={1: ("excluded", "out_of_scope"), 2: ("excluded", "out_of_scope")},
    ),
    "scope-comes-before-recency-then-the-latest-of-the-most-specific-wins": Case(
        [
            stmt(1, "vendor", "affected", minutes=0),
            stmt(2, "vendor", "fixed", minutes=9, purl="pkg:apk/wolfi/bash"),
            stmt(3, "vendor", "under_investigation", minutes=5),
            stmt(4, "community", "not_affected", minutes=0),
        ],
        status="under_investigation",
        contributing=(3,),
        conflicts=("scope_mismatch",),
        verdicts={
            1: ("excluded", "superseded"),
            2: ("excluded", "less_specific_scope"),
            4: ("lower_priority", None),
        },
    ),
}

RULE_5 = {
    # affected: 0.80 + 0.50 = 1.30 against not_affected 0.90; 1.30 / 2.20 = 0.5909.
    "summed-trust-decides-within-the-level": Case(
        [
            stmt(1, "vendor", "not_affected"),
            stmt(2, "distro", "affected"),
            stmt(3, "distro2", "affected"),
        ],
        status="affected",
        conflict=True,
        confidence="0.5909",
        contributing=(2, 3),
        conflicts=("status_disagreement",),
        verdicts={1: ("outvoted", None), 2: ("contributing", None)},
    ),
    "equal-weight-affected-beats-fixed": Case(
        [stmt(1, "distro2", "fixed"), stmt(2, "peer", "affected")],
        status="affected",
        conflict=True,
        confidence="0.5000",
        contributing=(2,),
        conflicts=("status_disagreement",),
    ),
    "equal-weight-under-investigation-beats-fixed": Case(
        [stmt(1, "distro2", "under_investigation"), stmt(2, "peer", "fixed")],
        status="under_investigation",
        conflict=True,
        confidence="0.5000",
        contributing=(1,),
        conflicts=("status_disagreement",),
    ),
    "equal-weight-fixed-beats-not-affected": Case(
        [stmt(1, "distro2", "not_affected"), stmt(2, "peer", "fixed")],
        status="fixed",
        conflict=True,
        confidence="0.5000",
        contributing=(2,),
        conflicts=("status_disagreement",),
    ),
    # 0.70 + 0.70 at priority 2 outweighs 0.90 at priority 1, and still does not decide.
    "the-best-level-decides-whatever-lower-levels-weigh": Case(
        [
            stmt(1, "vendor", "fixed"),
            stmt(2, "researcher", "affected"),
            stmt(3, "researcher2", "affected"),
        ],
        status="fixed",
        contributing=(1,),
        verdicts={2: ("lower_priority", None), 3: ("lower_priority", None)},
    ),
    "the-best-level-present-decides-when-the-top-level-is-absent": Case(
        [stmt(1, "researcher", "fixed"), stmt(2, "community", "affected")],
        status="fixed",
        contributing=(1,),
        verdicts={2: ("lower_priority", None)},
    ),
}

RULE_6 = {
    "two-statuses-in-the-deciding-level-are-a-conflict": Case(
        [stmt(1, "vendor", "fixed"), stmt(2, "distro", "affected")],
        status="fixed",
        conflict=True,
        confidence="0.5294",
        contributing=(1,),
        conflicts=("status_disagreement",),
    ),
    "agreement-in-the-deciding-level-is-no-conflict": Case(
        [stmt(1, "vendor", "fixed"), stmt(2, "distro", "fixed"), stmt(3, "community", "affected")],
        status="fixed",
        contributing=(1, 2),
    ),
}

RULE_7 = {
    "contributing-ids-are-sorted": Case(
        [stmt(30, "vendor", "fixed"), stmt(10, "distro", "fixed"), stmt(20, "peer", "fixed")],
        status="fixed",
        contributing=(10, 20, 30),
    ),
    # 0.90 / (0.90 + 0.80 + 0.50) = 0.40909…
    "confidence-is-winner-weight-over-level-weight": Case(
        [
            stmt(1, "vendor", "fixed"),
            stmt(2, "distro", "affected"),
            stmt(3, "peer", "not_affected"),
        ],
        status="fixed",
        conflict=True,
        confidence="0.4091",
        contributing=(1,),
        conflicts=("status_disagreement",),
    ),
    "a-level-without-trust-has-zero-confidence": Case(
        [stmt(1, "zero_a", "fixed"), stmt(2, "zero_b", "affected")],
        status="affected",
        conflict=True,
        confidence="0.0000",
        contributing=(2,),
        conflicts=("status_disagreement",),
    ),
}

RULE_8 = {
    "no-statements-no-consensus": Case([], status=None),
    "only-inapplicable-statements-no-consensus": Case(
        [stmt(1, "vendor", "fixed", purl="pkg:apk/wolfi/zsh@1.0.0")], status=None
    ),
}


def _cases(table: dict[str, Case]) -> list[object]:
    return [pytest.param(case, id=name) for name, case in table.items()]


@pytest.mark.parametrize("case", _cases(RULE_1))
def test_rule_1_missing_provenance_is_excluded(case: Case) -> None:
    check(case)


@pytest.mark.parametrize("case", _cases(RULE_2))
def test_rule_2_not_affected_needs_a_reason(case: Case) -> None:
    check(case)


@pytest.mark.parametrize("case", _cases(RULE_3))
def test_rule_3_each_issuer_counts_its_latest_statement(case: Case) -> None:
    check(case)


@pytest.mark.parametrize("case", _cases(RULE_4))
def test_rule_4_more_specific_scope_wins(case: Case) -> None:
    check(case)


@pytest.mark.parametrize("case", _cases(RULE_5))
def test_rule_5_best_level_and_weights_decide(case: Case) -> None:
    check(case)


@pytest.mark.parametrize("case", _cases(RULE_6))
def test_rule_6_conflicts_are_within_the_deciding_level(case: Case) -> None:
    check(case)


@pytest.mark.parametrize("case", _cases(RULE_7))
def test_rule_7_contributing_ids_and_confidence(case: Case) -> None:
    check(case)


@pytest.mark.parametrize("case", _cases(RULE_8))
def test_rule_8_no_eligible_statement_means_no_row(case: Case) -> None:
    check(case)


def test_dissent_and_level_weights_explain_the_decision() -> None:
    outcome = compute_consensus(
        PAIR,
        VULN,
        [
            stmt(1, "vendor", "fixed"),
            stmt(2, "distro", "affected"),
            stmt(3, "researcher", "not_affected"),
            stmt(4, "community", "fixed"),
        ],
        TRUST,
    )
    assert outcome.deciding_priority == 1
    assert [(w.status, str(w.weight), w.statements) for w in outcome.level_weights] == [
        ("affected", "0.80", 1),
        ("fixed", "0.90", 1),
    ]
    assert outcome.conflict_statuses == ("affected", "fixed")
    # The researcher disagrees from a lower level; the community agrees, so it is no dissent.
    assert [v.raw_id for v in outcome.dissent] == [rid(3)]
    assert [v.raw_id for v in outcome.verdicts] == [rid(1), rid(2), rid(3), rid(4)]
    assert outcome.exclusions == ()


def test_digest_is_sha256_of_the_canonical_row() -> None:
    outcome = compute_consensus(PAIR, VULN, [stmt(1, "vendor", "fixed")], TRUST)
    assert outcome.result is not None
    expected = (
        b'{"component_purl":"pkg:apk/wolfi/bash@1.0.0","confidence":"1.0000",'
        b'"conflict_detected":false,'
        b'"contributing_vex_ids":["00000000-0000-0000-0000-000000000001"],'
        b'"resolved_status":"fixed","vulnerability_id":"CVE-2024-0001"}'
    )
    assert outcome.result.canonical_json() == expected
    assert outcome.result.digest == hashlib.sha256(expected).hexdigest()


def test_digest_changes_with_the_decision() -> None:
    fixed = compute_consensus(PAIR, VULN, [stmt(1, "vendor", "fixed")], TRUST).result
    affected = compute_consensus(PAIR, VULN, [stmt(1, "vendor", "affected")], TRUST).result
    assert fixed is not None
    assert affected is not None
    assert fixed.digest != affected.digest


def test_scale_of_trust_scores_does_not_change_the_digest() -> None:
    # 0.9 and 0.90 are the same trust; the rendered confidence must not differ.
    short = {"vendor": trust_row("vendor", "0.9", 1), "distro": trust_row("distro", "0.8", 1)}
    statements = [stmt(1, "vendor", "fixed"), stmt(2, "distro", "affected")]
    a = compute_consensus(PAIR, VULN, statements, TRUST).result
    b = compute_consensus(PAIR, VULN, statements, short).result
    assert a is not None
    assert b is not None
    assert a.digest == b.digest


def test_duplicate_statements_count_once() -> None:
    once = compute_consensus(PAIR, VULN, [stmt(1, "vendor", "fixed")], TRUST)
    twice = compute_consensus(PAIR, VULN, [stmt(1, "vendor", "fixed")] * 2, TRUST)
    assert msgspec.json.encode(once) == msgspec.json.encode(twice)


def test_different_statements_with_one_raw_id_are_refused() -> None:
    with pytest.raises(ValueError, match="share raw id"):
        compute_consensus(
            PAIR, VULN, [stmt(1, "vendor", "fixed"), stmt(1, "vendor", "affected")], TRUST
        )


def test_effective_status_only_touches_unjustified_not_affected() -> None:
    assert effective_status(stmt(1, "vendor", "not_affected", justification=None)) == (
        "under_investigation"
    )
    assert effective_status(stmt(1, "vendor", "not_affected")) == "not_affected"
    assert effective_status(stmt(1, "vendor", "affected")) == "affected"


def test_issuer_trust_is_validated() -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        trust_row("x", "1.01", 1)
    with pytest.raises(TypeError, match="finite Decimal"):
        IssuerTrust(issuer_id="x", trust_score=0.5, priority=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="issuer_type"):
        IssuerTrust(
            issuer_id="x",
            trust_score=Decimal("0.5"),
            priority=1,
            issuer_type="oracle",  # type: ignore[arg-type]
        )


def test_statements_are_validated() -> None:
    with pytest.raises(ValueError, match="no UTC offset"):
        Statement(
            raw_id=rid(1),
            issuer_id="vendor",
            component_purl=PAIR,
            vulnerability_id=VULN,
            status="fixed",
            published_at=datetime(2024, 1, 1),  # noqa: DTZ001 - the naive value under test
        )
    with pytest.raises(ValueError, match="unknown VEX status"):
        stmt(1, "vendor", "exploitable")  # type: ignore[arg-type]


def test_consensus_and_conflict_ids_are_stable_and_distinct() -> None:
    assert consensus_id_for(PAIR, VULN) == consensus_id_for(PAIR, VULN)
    assert consensus_id_for(PAIR, VULN) != consensus_id_for(PAIR, "CVE-2024-0002")
    assert conflict_id_for(PAIR, VULN, "a" * 64) != conflict_id_for(PAIR, VULN, "b" * 64)
    assert consensus_id_for(PAIR, VULN).version == 5


# --- properties -------------------------------------------------------------------------

TRUSTED = sorted(TRUST)
UNTRUSTED = ["stranger", "ghost"]
IN_SCOPE_PURLS = [PAIR, "pkg:apk/wolfi/bash"]
OTHER_PURLS = ["pkg:apk/wolfi/bash@2.0.0", "pkg:apk/wolfi/zsh@1.0.0"]
STATUSES: list[VexStatus] = ["not_affected", "affected", "fixed", "under_investigation"]
PROPERTY_SETTINGS = settings(max_examples=200, database=None, deadline=None)


@st.composite
def statement_lists(
    draw: st.DrawFn,
    *,
    issuers: list[str],
    ids: tuple[int, int],
    min_size: int = 0,
    max_size: int = 8,
) -> list[Statement]:
    raw_ids = draw(st.lists(st.integers(*ids), min_size=min_size, max_size=max_size, unique=True))
    return [
        Statement(
            raw_id=rid(n),
            issuer_id=draw(st.sampled_from(issuers)),
            component_purl=draw(st.sampled_from(IN_SCOPE_PURLS + OTHER_PURLS)),
            vulnerability_id=draw(st.sampled_from([VULN, VULN, "CVE-2024-0002"])),
            status=draw(st.sampled_from(STATUSES)),
            justification=draw(st.sampled_from([None, JUSTIFIED])),
            impact_statement=draw(st.sampled_from([None, "not reachable"])),
            # Few distinct times, so ties of rule 3 are common.
            published_at=draw(st.sampled_from([None, T0, T0 + timedelta(minutes=1)])),
        )
        for n in raw_ids
    ]


@PROPERTY_SETTINGS
@given(data=st.data())
def test_any_order_gives_byte_identical_output(data: st.DataObject) -> None:
    statements = data.draw(
        statement_lists(issuers=TRUSTED + UNTRUSTED, ids=(1, 10_000), max_size=12)
    )
    shuffled = data.draw(st.permutations(statements))
    reversed_trust = dict(reversed(TRUST.items()))
    first = compute_consensus(PAIR, VULN, statements, TRUST)
    second = compute_consensus(PAIR, VULN, [*shuffled, *shuffled[:2]], reversed_trust)
    assert msgspec.json.encode(first) == msgspec.json.encode(second)
    if first.result is not None:
        assert second.result is not None
        assert first.result.digest == second.result.digest
        assert first.result.digest == hashlib.sha256(first.result.canonical_json()).hexdigest()


@PROPERTY_SETTINGS
@given(data=st.data())
def test_statements_from_untrusted_issuers_never_change_the_result(data: st.DataObject) -> None:
    statements = data.draw(statement_lists(issuers=TRUSTED, ids=(1, 5_000)))
    extra = data.draw(statement_lists(issuers=UNTRUSTED, ids=(5_001, 10_000), min_size=1))
    mixed = data.draw(st.permutations(statements + extra))
    before = compute_consensus(PAIR, VULN, statements, TRUST)
    after = compute_consensus(PAIR, VULN, mixed, TRUST)
    assert after.result == before.result
    assert after.level_weights == before.level_weights
    extra_ids = {s.raw_id for s in extra}
    assert {v.disposition for v in after.verdicts if v.raw_id in extra_ids} == {"excluded"}


@PROPERTY_SETTINGS
@given(
    data=st.data(),
    status=st.sampled_from(STATUSES),
    score=st.integers(1, 100).map(lambda n: Decimal(n).scaleb(-2)),
)
def test_a_better_priority_level_always_decides(
    data: st.DataObject, status: VexStatus, score: Decimal
) -> None:
    statements = data.draw(statement_lists(issuers=TRUSTED + UNTRUSTED, ids=(1, 10_000)))
    # Priority 0 is better than every level in TRUST; the lowest trust still decides.
    trust = {**TRUST, "sovereign": trust_row("sovereign", str(score), 0)}
    decisive = Statement(
        raw_id=rid(20_000),
        issuer_id="sovereign",
        component_purl=PAIR,
        vulnerability_id=VULN,
        status=status,
        justification=JUSTIFIED,
        published_at=T0,
    )
    outcome = compute_consensus(PAIR, VULN, [*statements, decisive], trust)
    assert outcome.result is not None
    assert outcome.result.resolved_status == status
    assert outcome.result.conflict_detected is False
    assert outcome.result.contributing_vex_ids == (decisive.raw_id,)
    assert str(outcome.result.confidence) == "1.0000"
    assert "status_disagreement" not in outcome.conflicts
    others = [v for v in outcome.verdicts if v.raw_id != decisive.raw_id]
    assert all(v.disposition in {"lower_priority", "excluded"} for v in others)
