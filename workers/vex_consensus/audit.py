"""The audit line of a consensus decision (pure): what seed 004 asks logs to carry.

Every pair whose result changes is logged once (``vex.decision``) with the seed's
fields: ``correlationId``, ``artifactKey`` (the purl), ``advisoryKey`` (the
vulnerability id), ``issuer`` and ``trustTier`` (the deciding issuer: the most trusted
issuer behind the winning status, and its issuer type), ``weightBefore`` and
``weightAfter`` (the confidence of the result before and after: the winning status's
share of the deciding level's trust, ``0`` to ``1``; absent when there was or is no
result) and ``justification`` (the deciding statement's), with the statuses before and
after.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

import msgspec

from workers.vex_consensus.consensus import ConsensusOutcome, IssuerTrust, Statement


class Before(msgspec.Struct, frozen=True, kw_only=True):
    """A pair's stored result before the recompute."""

    status: str
    confidence: Decimal


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    correlation_id: str | None
    artifact_key: str
    advisory_key: str
    issuer: str | None
    trust_tier: str | None
    weight_before: str | None
    weight_after: str | None
    justification: str | None
    status_before: str | None
    status_after: str | None

    def fields(self) -> dict[str, str | None]:
        """The log line's fields, named as seed 004 names them."""
        return {
            "correlationId": self.correlation_id,
            "artifactKey": self.artifact_key,
            "advisoryKey": self.advisory_key,
            "issuer": self.issuer,
            "trustTier": self.trust_tier,
            "weightBefore": self.weight_before,
            "weightAfter": self.weight_after,
            "justification": self.justification,
            "statusBefore": self.status_before,
            "statusAfter": self.status_after,
        }


def decision(
    outcome: ConsensusOutcome,
    statements: Sequence[Statement],
    trust: Mapping[str, IssuerTrust],
    before: Before | None,
    correlation_id: str | None,
) -> Decision:
    """The audit record of ``outcome`` replacing ``before``."""
    result = outcome.result
    issuer = tier = justification = None
    if result is not None:
        contributing = [v for v in outcome.verdicts if v.disposition == "contributing"]
        if contributing:
            deciding = min(contributing, key=lambda v: (-(v.trust_score or 0), v.issuer_id))
            issuer = deciding.issuer_id
            row = trust.get(issuer)
            tier = None if row is None else row.issuer_type
            by_id = {s.raw_id: s for s in statements}
            statement = by_id.get(deciding.raw_id)
            justification = None if statement is None else statement.justification
    return Decision(
        correlation_id=correlation_id,
        artifact_key=outcome.component_purl,
        advisory_key=outcome.vulnerability_id,
        issuer=issuer,
        trust_tier=tier,
        weight_before=None if before is None else str(before.confidence),
        weight_after=None if result is None else str(result.confidence),
        justification=justification,
        status_before=None if before is None else before.status,
        status_after=None if result is None else result.resolved_status,
    )
