"""The conflict review queue: list conflicts, resolve one with who, why and (optionally)
the status the reviewer decided.

A decided status is stored as a statement of the review issuer (:data:`REVIEW_ISSUER`,
trust row created at priority 0 and score 1.00 unless an operator set another) about
the conflict's pair, and the pair is recomputed in the same transaction: the decision is
an input to this and every later recompute, through the one consensus algorithm
(``docs/exports.md``). A resolution without a status closes the conflict only; it stays
closed while the result it was raised for is unchanged.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from contracts.vex import VexStatus
from workers.db import DbConn
from workers.vex_consensus import service
from workers.vex_consensus.records import Collector, ParsedDocument

REVIEW_ISSUER: Final = "streamfleet:review"


class Conflict(msgspec.Struct, frozen=True, kw_only=True):
    conflict_id: uuid.UUID
    component_purl: str
    vulnerability_id: str
    reason: str
    statuses: list[str]
    detected_at: datetime
    resolved_at: datetime | None
    resolution: str | None
    resolved_by: str | None
    resolution_note: str | None
    decided_status: str | None


_LIST = """
SELECT conflict_id, component_purl, vulnerability_id, reason, statuses, detected_at,
       resolved_at, resolution, resolved_by, resolution_note, decided_status
FROM vex.consensus_conflicts
WHERE $1 OR resolved_at IS NULL
ORDER BY detected_at, conflict_id
LIMIT $2
"""


async def list_conflicts(conn: DbConn, *, include_closed: bool, limit: int) -> list[Conflict]:
    return [Conflict(**dict(r)) for r in await conn.fetch(_LIST, include_closed, limit)]


class ResolveError(ValueError):
    """The conflict cannot be resolved (unknown, or already closed); one line."""


def review_document(
    conflict: Conflict, status: VexStatus, by: str, why: str, at: datetime
) -> ParsedDocument:
    """The reviewer's decision as a one-statement document of :data:`REVIEW_ISSUER` (pure)."""
    out = Collector(REVIEW_ISSUER)
    out.add(
        purl=conflict.component_purl,
        vulnerability_id=conflict.vulnerability_id,
        status=status,
        justification=None,
        # An impact statement makes a not_affected decision count as such (rule 2).
        impact_statement=f"review by {by}: {why}",
        published_at=at,
        raw={
            "review": {
                "conflict_id": str(conflict.conflict_id),
                "by": by,
                "why": why,
                "status": status,
            }
        },
    )
    return ParsedDocument(
        format="openvex",
        format_version="0.2.0",
        document_id=f"review:{conflict.conflict_id}",
        issuer_id=REVIEW_ISSUER,
        records=tuple(out.records.values()),
    )


async def resolve(
    conn: DbConn,
    conflict_id: uuid.UUID,
    *,
    by: str,
    why: str,
    status: VexStatus | None,
    now: datetime | None = None,
) -> tuple[Conflict, service.RecomputeReport | None]:
    """Close an open conflict (inside the caller's transaction); with ``status``, store
    the decision as a statement and recompute the pair."""
    at = now or datetime.now(UTC)
    row = await conn.fetchrow(
        "SELECT conflict_id, component_purl, vulnerability_id, reason, statuses, detected_at, "
        "resolved_at, resolution, resolved_by, resolution_note, decided_status "
        "FROM vex.consensus_conflicts WHERE conflict_id = $1 FOR UPDATE",
        conflict_id,
    )
    if row is None:
        raise ResolveError(f"no conflict {conflict_id}")
    conflict = Conflict(**dict(row))
    if conflict.resolved_at is not None:
        raise ResolveError(
            f"conflict {conflict_id} is already closed ({conflict.resolution}"
            + (f" by {conflict.resolved_by}" if conflict.resolved_by else "")
            + ")"
        )
    await conn.execute(
        "UPDATE vex.consensus_conflicts SET resolved_at = $2, resolution = 'reviewed', "
        "resolved_by = $3, resolution_note = $4, decided_status = $5 WHERE conflict_id = $1",
        conflict_id,
        at,
        by,
        why,
        status,
    )
    report = None
    if status is not None:
        # The review issuer's trust row, unless an operator already set one.
        await conn.execute(
            "INSERT INTO vex.issuer_trust (issuer_id, trust_score, priority, issuer_type) "
            "VALUES ($1, 1.00, 0, 'other') ON CONFLICT (issuer_id) DO NOTHING",
            REVIEW_ISSUER,
        )
        imported = await service.import_documents(
            conn, [review_document(conflict, status, by, why, at)], now=at
        )
        report = imported.recompute
    closed = msgspec.structs.replace(
        conflict,
        resolved_at=at,
        resolution="reviewed",
        resolved_by=by,
        resolution_note=why,
        decided_status=status,
    )
    return closed, report


def as_json(conflict: Conflict) -> dict[str, Any]:
    return msgspec.to_builtins(conflict)  # type: ignore[no-any-return]  # a Struct of builtins
