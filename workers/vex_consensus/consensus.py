"""The VEX consensus rules (docs/workers.md): a pure, deterministic function.

:func:`compute_consensus` takes the statements about one (component purl,
vulnerability) pair and the issuer trust table and returns a
:class:`ConsensusOutcome`: the consensus row (or ``None`` when no statement is
eligible), a verdict for every statement, and the conflict reasons to count.

Guarantees:

- No I/O, no clock, no randomness. The same statements in any order, with
  duplicates or not, give byte-identical output: every choice is made by a total
  order (timestamp, then status safety, then raw id), and weights are exact
  ``Decimal`` sums, so float rounding can never depend on input order.
- ``ConsensusResult.digest`` is the hex SHA-256 of :meth:`ConsensusResult.canonical_json`
  (sorted keys, no whitespace, ids as lowercase strings, confidence as a
  fixed four-place decimal string); it covers exactly the fields stored in
  ``vex.consensus``, so the digest can be re-derived from the row.
- A statement from an issuer without a trust row never changes the result.

Scope (rule 4). Statement and pair purls are canonical
(:mod:`workers.vex_consensus.purls`). A statement applies to the pair when it names
the same package (type, namespace, name), its version is absent or equal, its
qualifiers are a subset of the pair's and its subpath is absent or equal; others
(another package, version, qualifier value or subpath, another vulnerability) are
excluded as ``out_of_scope``. Rule 4 works within each issuer: of an issuer's
eligible statements the most specific scope wins, ordered by (carries a version,
number of qualifiers, carries a subpath), and rule 3 picks the latest among those.
So a vendor's statement about ``pkg:oci/web@d?arch=amd64`` speaks for the pair
``pkg:oci/web@d?arch=amd64&os=linux`` until the vendor says something about that
exact product, whatever another issuer said about it. A statement made about a
subcomponent (OpenVEX ``subcomponents``) is stored under the subcomponent's own purl
and is exactly as specific as that purl.

Counting conflicts. ``missing_provenance`` is counted once per statement excluded
by rule 1. ``scope_mismatch`` is counted once per computation when an issuer's less specific
statement set aside by rule 4 carries another status than that issuer's effective
statement (set-aside statements that agree are not a conflict).
``status_disagreement`` is counted once when the deciding level holds two or
more statuses; it is also what sets ``conflict_detected``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from types import MappingProxyType
from typing import Any, Final, Literal

import msgspec

from contracts.vex import VexStatus
from workers.vex_consensus.purls import ScopeSpecificity, applies, scope_of, specificity

IssuerType = Literal["vendor", "distro", "researcher", "community", "other"]
ConflictReason = Literal["status_disagreement", "scope_mismatch", "missing_provenance"]
Disposition = Literal["contributing", "outvoted", "lower_priority", "excluded"]
"""What a statement did: ``contributing`` (deciding level, winning status),
``outvoted`` (deciding level, losing status), ``lower_priority`` (eligible but
below the deciding level; dissent when its status differs), ``excluded``."""
ExclusionReason = Literal[
    "no_trust_row", "no_timestamp", "superseded", "less_specific_scope", "out_of_scope"
]

# Higher is less safe; ties between equal weights go to the less safe status (rule 5),
# and so do ties between one issuer's statements with equal timestamps (rule 3).
UNSAFETY: Final[Mapping[VexStatus, int]] = MappingProxyType(
    {"affected": 3, "under_investigation": 2, "fixed": 1, "not_affected": 0}
)
STATUSES: Final[tuple[VexStatus, ...]] = tuple(sorted(UNSAFETY, key=UNSAFETY.__getitem__))
ISSUER_TYPES: Final[frozenset[str]] = frozenset(
    {"vendor", "distro", "researcher", "community", "other"}
)

OPENVEX_STATUS: Final[Mapping[str, VexStatus]] = MappingProxyType(
    {
        "not_affected": "not_affected",
        "affected": "affected",
        "fixed": "fixed",
        "under_investigation": "under_investigation",
    }
)
"""OpenVEX statuses are the consensus statuses themselves."""

CSAF_STATUS: Final[Mapping[str, VexStatus]] = MappingProxyType(
    {
        "known_not_affected": "not_affected",
        "known_affected": "affected",
        "first_affected": "affected",
        "last_affected": "affected",
        "fixed": "fixed",
        "first_fixed": "fixed",
        "under_investigation": "under_investigation",
    }
)
"""CSAF 2.0 ``product_status`` categories. ``recommended`` is not a VEX status and
is deliberately absent."""

CYCLONEDX_STATUS: Final[Mapping[str, VexStatus]] = MappingProxyType(
    {
        "not_affected": "not_affected",
        "false_positive": "not_affected",
        "exploitable": "affected",
        "resolved": "fixed",
        "resolved_with_pedigree": "fixed",
        "in_triage": "under_investigation",
    }
)
"""CycloneDX ``analysis.state`` values."""

CONSENSUS_ID_NAMESPACE: Final = uuid.UUID("4c787d84-8a59-4128-a55d-fcbcca85b017")
"""Fixed namespace of :func:`consensus_id_for` and :func:`conflict_id_for`; never change it."""

_CONFIDENCE_QUANTUM: Final = Decimal("0.0001")
_ZERO: Final = Decimal(0)


def canonical_json(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, UTF-8, no NaN; the digest and id input."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


class Statement(msgspec.Struct, frozen=True, kw_only=True):
    """One issuer's statement about one (component purl, vulnerability) pair."""

    raw_id: uuid.UUID
    issuer_id: str
    component_purl: str
    vulnerability_id: str
    status: VexStatus
    justification: str | None = None
    impact_statement: str | None = None
    published_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.status not in UNSAFETY:
            raise ValueError(f"unknown VEX status {self.status!r}")
        # Comparing aware with naive datetimes raises mid-computation; refuse early.
        if self.published_at is not None and self.published_at.utcoffset() is None:
            raise ValueError(f"statement {self.raw_id}: published_at has no UTC offset")

    @property
    def specificity(self) -> ScopeSpecificity:
        return specificity(scope_of(self.component_purl))


class IssuerTrust(msgspec.Struct, frozen=True, kw_only=True):
    """A row of ``vex.issuer_trust``: weight within a level, and the level (lower = better)."""

    issuer_id: str
    trust_score: Decimal
    priority: int
    issuer_type: IssuerType = "other"

    def __post_init__(self) -> None:
        # Decimal only: a float weight would make sums depend on addition order.
        score: object = self.trust_score  # checked at run time: callers may pass a float anyway
        if not isinstance(score, Decimal) or not score.is_finite():
            raise TypeError(f"issuer {self.issuer_id!r}: trust_score must be a finite Decimal")
        if not _ZERO <= self.trust_score <= 1:
            raise ValueError(
                f"issuer {self.issuer_id!r}: trust_score {self.trust_score} is outside 0..1"
            )
        if self.issuer_type not in ISSUER_TYPES:
            raise ValueError(f"issuer {self.issuer_id!r}: unknown issuer_type {self.issuer_type!r}")


class StatusWeight(msgspec.Struct, frozen=True, kw_only=True):
    """The summed trust behind one status at the deciding level."""

    status: VexStatus
    weight: Decimal
    statements: int


class StatementVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """What the algorithm did with one statement, for ``fleet vex show`` and audits."""

    raw_id: uuid.UUID
    issuer_id: str
    component_purl: str
    status: VexStatus
    effective_status: VexStatus
    """``status`` after rule 2 (an unjustified ``not_affected`` counts as under_investigation)."""
    published_at: datetime | None
    disposition: Disposition
    exclusion: ExclusionReason | None = None
    priority: int | None = None
    trust_score: Decimal | None = None


class ConsensusResult(msgspec.Struct, frozen=True, kw_only=True):
    """The ``vex.consensus`` row for one pair (``consensus_id`` and ``computed_at`` aside)."""

    component_purl: str
    vulnerability_id: str
    resolved_status: VexStatus
    conflict_detected: bool
    contributing_vex_ids: tuple[uuid.UUID, ...]
    confidence: Decimal
    digest: str

    def canonical_json(self) -> bytes:
        """The bytes :attr:`digest` is the SHA-256 of: every field but the digest."""
        return _result_json(
            component_purl=self.component_purl,
            vulnerability_id=self.vulnerability_id,
            resolved_status=self.resolved_status,
            conflict_detected=self.conflict_detected,
            contributing_vex_ids=self.contributing_vex_ids,
            confidence=self.confidence,
        )


class ConsensusOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """The result of one computation and its explanation."""

    component_purl: str
    vulnerability_id: str
    result: ConsensusResult | None
    """``None``: no eligible statement, so no consensus row (rule 8)."""
    deciding_priority: int | None
    level_weights: tuple[StatusWeight, ...]
    """Statuses present at the deciding level, least safe first."""
    verdicts: tuple[StatementVerdict, ...]
    """One per distinct input statement, ordered by raw id."""
    conflicts: tuple[ConflictReason, ...]
    """Conflict reasons to count, sorted; see the module docstring for multiplicity."""

    @property
    def exclusions(self) -> tuple[StatementVerdict, ...]:
        return tuple(v for v in self.verdicts if v.disposition == "excluded")

    @property
    def dissent(self) -> tuple[StatementVerdict, ...]:
        """Lower-priority statements whose status differs from the resolved one (rule 6)."""
        if self.result is None:
            return ()
        resolved = self.result.resolved_status
        return tuple(
            v
            for v in self.verdicts
            if v.disposition == "lower_priority" and v.effective_status != resolved
        )

    @property
    def conflict_statuses(self) -> tuple[VexStatus, ...]:
        """The statuses disagreeing at the deciding level (empty without a conflict)."""
        if len(self.level_weights) < 2:
            return ()
        return tuple(w.status for w in self.level_weights)


def effective_status(statement: Statement) -> VexStatus:
    """Rule 2: ``not_affected`` needs a justification or an impact statement to count."""
    if statement.status == "not_affected" and not (
        (statement.justification or "").strip() or (statement.impact_statement or "").strip()
    ):
        return "under_investigation"
    return statement.status


def consensus_id_for(component_purl: str, vulnerability_id: str) -> uuid.UUID:
    """Deterministic ``vex.consensus.consensus_id`` of a pair."""
    name = canonical_json(["consensus", component_purl, vulnerability_id]).decode("utf-8")
    return uuid.uuid5(CONSENSUS_ID_NAMESPACE, name)


def conflict_id_for(component_purl: str, vulnerability_id: str, digest: str) -> uuid.UUID:
    """Deterministic ``vex.consensus_conflicts.conflict_id`` of one conflicting result."""
    name = canonical_json(["conflict", component_purl, vulnerability_id, digest]).decode("utf-8")
    return uuid.uuid5(CONSENSUS_ID_NAMESPACE, name)


def compute_consensus(
    component_purl: str,
    vulnerability_id: str,
    statements: Iterable[Statement],
    trust: Mapping[str, IssuerTrust],
) -> ConsensusOutcome:
    """Resolve one pair's status from its statements (docs/workers.md, consensus rules 1-8).

    Raises ``ValueError`` when two different statements share a raw id, since
    then no order-independent answer exists.
    """
    unique = _dedupe(statements)
    verdicts: dict[uuid.UUID, StatementVerdict] = {}
    conflicts: list[ConflictReason] = []
    effective = {raw_id: effective_status(s) for raw_id, s in unique.items()}

    def judge(
        s: Statement, disposition: Disposition, exclusion: ExclusionReason | None = None
    ) -> None:
        row = trust.get(s.issuer_id)
        verdicts[s.raw_id] = StatementVerdict(
            raw_id=s.raw_id,
            issuer_id=s.issuer_id,
            component_purl=s.component_purl,
            status=s.status,
            effective_status=effective[s.raw_id],
            published_at=s.published_at,
            disposition=disposition,
            exclusion=exclusion,
            priority=None if row is None else row.priority,
            trust_score=None if row is None else row.trust_score,
        )

    # Scope applicability, then rule 1 (provenance).
    pair_scope = scope_of(component_purl)
    eligible: list[Statement] = []
    scopes: dict[uuid.UUID, ScopeSpecificity] = {}
    for s in unique.values():
        if s.vulnerability_id != vulnerability_id:
            judge(s, "excluded", "out_of_scope")
            continue
        scope = scope_of(s.component_purl)
        if s.component_purl != component_purl and not applies(scope, pair_scope):
            judge(s, "excluded", "out_of_scope")
        elif s.issuer_id not in trust:
            judge(s, "excluded", "no_trust_row")
            conflicts.append("missing_provenance")
        elif s.published_at is None:
            judge(s, "excluded", "no_timestamp")
            conflicts.append("missing_provenance")
        else:
            eligible.append(s)
            scopes[s.raw_id] = specificity(scope)

    # Rules 4 and 3, within each issuer: its most specific statement, the latest of those.
    chosen: dict[str, Statement] = {}
    for s in eligible:
        current = chosen.get(s.issuer_id)
        if current is None or _precedence(s, scopes, effective) > _precedence(
            current, scopes, effective
        ):
            chosen[s.issuer_id] = s
    scope_disagrees = False
    for s in eligible:
        winner_of_issuer = chosen[s.issuer_id]
        if winner_of_issuer.raw_id == s.raw_id:
            continue
        if scopes[s.raw_id] < scopes[winner_of_issuer.raw_id]:
            judge(s, "excluded", "less_specific_scope")
            scope_disagrees |= effective[s.raw_id] != effective[winner_of_issuer.raw_id]
        else:
            judge(s, "excluded", "superseded")
    if scope_disagrees:
        conflicts.append("scope_mismatch")
    kept = list(chosen.values())

    if not kept:  # rule 8
        return ConsensusOutcome(
            component_purl=component_purl,
            vulnerability_id=vulnerability_id,
            result=None,
            deciding_priority=None,
            level_weights=(),
            verdicts=_ordered(verdicts),
            conflicts=tuple(sorted(conflicts)),
        )

    # Rule 5: the best level decides; weights are summed trust per status.
    level = min(trust[s.issuer_id].priority for s in kept)
    deciding = [s for s in kept if trust[s.issuer_id].priority == level]
    weights: dict[VexStatus, Decimal] = {}
    counts: dict[VexStatus, int] = {}
    for s in deciding:
        status = effective[s.raw_id]
        weights[status] = weights.get(status, _ZERO) + trust[s.issuer_id].trust_score
        counts[status] = counts.get(status, 0) + 1
    winner = max(weights, key=lambda st: (weights[st], UNSAFETY[st]))
    conflict = len(weights) >= 2  # rule 6
    if conflict:
        conflicts.append("status_disagreement")

    for s in kept:
        if trust[s.issuer_id].priority != level:
            judge(s, "lower_priority")
        elif effective[s.raw_id] == winner:
            judge(s, "contributing")
        else:
            judge(s, "outvoted")

    # Rule 7.
    contributing = tuple(sorted(s.raw_id for s in deciding if effective[s.raw_id] == winner))
    confidence = _ratio(weights[winner], sum(weights.values(), _ZERO))
    fields: dict[str, Any] = {
        "component_purl": component_purl,
        "vulnerability_id": vulnerability_id,
        "resolved_status": winner,
        "conflict_detected": conflict,
        "contributing_vex_ids": contributing,
        "confidence": confidence,
    }
    digest = hashlib.sha256(_result_json(**fields)).hexdigest()
    level_weights = tuple(
        StatusWeight(status=st, weight=weights[st], statements=counts[st])
        for st in sorted(weights, key=lambda st: -UNSAFETY[st])
    )
    return ConsensusOutcome(
        component_purl=component_purl,
        vulnerability_id=vulnerability_id,
        result=ConsensusResult(**fields, digest=digest),
        deciding_priority=level,
        level_weights=level_weights,
        verdicts=_ordered(verdicts),
        conflicts=tuple(sorted(conflicts)),
    )


def _dedupe(statements: Iterable[Statement]) -> dict[uuid.UUID, Statement]:
    # Keyed by raw id and later iterated in raw-id order, so input order cannot leak out.
    unique: dict[uuid.UUID, Statement] = {}
    for s in statements:
        seen = unique.setdefault(s.raw_id, s)
        if seen != s:
            raise ValueError(f"two different statements share raw id {s.raw_id}")
    return dict(sorted(unique.items()))


def _precedence(
    s: Statement,
    scopes: Mapping[uuid.UUID, ScopeSpecificity],
    effective: Mapping[uuid.UUID, VexStatus],
) -> tuple[ScopeSpecificity, datetime, int, int]:
    # Rule 4 (the more specific scope), then rule 3 (the latest; equal times: less safe,
    # then the greater raw id): a total order, so the choice never depends on input order.
    assert s.published_at is not None  # statements without a timestamp were excluded
    return (scopes[s.raw_id], s.published_at, UNSAFETY[effective[s.raw_id]], s.raw_id.int)


def _ratio(part: Decimal, total: Decimal) -> Decimal:
    # A local context so a caller's decimal settings cannot change the digest.
    with localcontext() as ctx:
        ctx.prec = 28
        ctx.rounding = ROUND_HALF_EVEN
        if total == 0:  # every issuer at the level has trust 0: no confidence at all
            return _ZERO.quantize(_CONFIDENCE_QUANTUM)
        return (part / total).quantize(_CONFIDENCE_QUANTUM)


def _result_json(
    *,
    component_purl: str,
    vulnerability_id: str,
    resolved_status: VexStatus,
    conflict_detected: bool,
    contributing_vex_ids: tuple[uuid.UUID, ...],
    confidence: Decimal,
) -> bytes:
    with localcontext() as ctx:
        ctx.prec = 28
        ctx.rounding = ROUND_HALF_EVEN
        rendered = str(confidence.quantize(_CONFIDENCE_QUANTUM))
    return canonical_json(
        {
            "component_purl": component_purl,
            "vulnerability_id": vulnerability_id,
            "resolved_status": resolved_status,
            "conflict_detected": conflict_detected,
            "contributing_vex_ids": [str(i) for i in contributing_vex_ids],
            "confidence": rendered,
        }
    )


def _ordered(verdicts: Mapping[uuid.UUID, StatementVerdict]) -> tuple[StatementVerdict, ...]:
    return tuple(verdicts[k] for k in sorted(verdicts))
