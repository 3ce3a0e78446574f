"""Issuer trust in PostgreSQL (``vex.issuer_trust``): each issuer's weight, priority
level and type, read for recomputes, upserted by ``fleet vex trust set`` and listed.
Issuer keys and the signature policy are in :mod:`workers.vex_consensus.keys`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import cast

import msgspec

from workers.db import DbConn
from workers.vex_consensus.consensus import IssuerTrust, IssuerType


class TrustListing(msgspec.Struct, frozen=True, kw_only=True):
    """An issuer with or without a trust row, and how many statements it made."""

    issuer_id: str
    trust: IssuerTrust | None
    statements: int
    updated_at: datetime | None


def trust_row(issuer_id: str, score: Decimal, priority: int, issuer_type: str) -> IssuerTrust:
    return IssuerTrust(
        issuer_id=issuer_id,
        trust_score=score,
        priority=priority,
        issuer_type=cast(IssuerType, issuer_type),
    )


_UPSERT_TRUST = """
INSERT INTO vex.issuer_trust AS t (issuer_id, trust_score, priority, issuer_type, updated_at)
SELECT u.issuer_id, u.trust_score, u.priority, u.issuer_type, now()
FROM unnest($1::text[], $2::numeric[], $3::int[], $4::text[])
    AS u(issuer_id, trust_score, priority, issuer_type)
ON CONFLICT (issuer_id) DO UPDATE SET
    trust_score = EXCLUDED.trust_score,
    priority = EXCLUDED.priority,
    issuer_type = EXCLUDED.issuer_type,
    updated_at = now()
WHERE (t.trust_score, t.priority, t.issuer_type)
    IS DISTINCT FROM (EXCLUDED.trust_score, EXCLUDED.priority, EXCLUDED.issuer_type)
RETURNING issuer_id
"""


_TRUST_OF = """
SELECT issuer_id, trust_score, priority, issuer_type FROM vex.issuer_trust
WHERE issuer_id = ANY($1::text[])
"""


async def trust_of(conn: DbConn, issuer_ids: Sequence[str]) -> dict[str, IssuerTrust]:
    """The trust rows of ``issuer_ids`` that exist."""
    rows = await conn.fetch(_TRUST_OF, list(issuer_ids))
    return {
        r["issuer_id"]: trust_row(r["issuer_id"], r["trust_score"], r["priority"], r["issuer_type"])
        for r in rows
    }


async def upsert_trust(conn: DbConn, rows: Sequence[IssuerTrust]) -> list[str]:
    """Insert or update trust rows; returns the issuers whose row actually changed."""
    unique = {r.issuer_id: r for r in rows}
    if not unique:
        return []
    found = await conn.fetch(
        _UPSERT_TRUST,
        list(unique),
        [r.trust_score for r in unique.values()],
        [r.priority for r in unique.values()],
        [r.issuer_type for r in unique.values()],
    )
    return sorted(r["issuer_id"] for r in found)


_LIST_TRUST = """
WITH counts AS (
    SELECT issuer_id, count(*) AS statements FROM vex.vex_raw GROUP BY issuer_id
)
SELECT coalesce(t.issuer_id, c.issuer_id) AS issuer_id, t.trust_score, t.priority,
       t.issuer_type, t.updated_at, coalesce(c.statements, 0) AS statements
FROM vex.issuer_trust t
FULL JOIN counts c ON c.issuer_id = t.issuer_id
ORDER BY t.priority NULLS LAST, t.trust_score DESC NULLS LAST, 1
"""


async def list_trust(conn: DbConn) -> list[TrustListing]:
    """Every issuer with a trust row or a statement, best level first."""
    return [
        TrustListing(
            issuer_id=r["issuer_id"],
            trust=None
            if r["priority"] is None
            else trust_row(r["issuer_id"], r["trust_score"], r["priority"], r["issuer_type"]),
            statements=int(r["statements"]),
            updated_at=r["updated_at"],
        )
        for r in await conn.fetch(_LIST_TRUST)
    ]
