"""What vex-consensus tells dashboards beyond its batches: trust changes and the
conflict queue per tenant (seed 004; migration 0010).

Trust changes are made by ``fleet vex trust set``, a process nobody scrapes. The change,
its recompute and one ``vex.trust_changes`` row per changed issuer commit together; a
running worker's background task claims the rows not yet observed (``UPDATE …
observed_at`` over ``FOR UPDATE SKIP LOCKED``, so each row is counted by exactly one
replica) and exports them: ``fleet_vex_issuer_trust_changes_total{issuer,tier}`` and,
once per recompute, ``fleet_vex_recompute_duration_seconds{reason}``.

The conflict queue is counted per tenant (the tenant whose event caused the recompute
that found the conflict); ``fleet_vex_conflict_queue_tenant_max_depth`` is the deepest
tenant's count, so the alert "> 500 for any tenant" needs no tenant label.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Literal

import asyncpg
import msgspec
import structlog

from workers import metrics
from workers.db import DbConn
from workers.vex_consensus.consensus import IssuerTrust

log = structlog.get_logger("workers.vex_consensus")

TrustReason = Literal["issuer_update", "policy_knob"]


class TrustChange(msgspec.Struct, frozen=True, kw_only=True):
    """One issuer's trust row before and after a change."""

    before: IssuerTrust | None
    after: IssuerTrust

    @property
    def reason(self) -> TrustReason:
        """``policy_knob``: an existing issuer's weight or level changed; ``issuer_update``:
        an issuer gained a trust row, or only its type changed."""
        if self.before is None:
            return "issuer_update"
        knobs_before = (self.before.trust_score, self.before.priority)
        knobs_after = (self.after.trust_score, self.after.priority)
        return "policy_knob" if knobs_before != knobs_after else "issuer_update"


def recompute_reason(changes: Sequence[TrustChange]) -> TrustReason:
    """The reason of the recompute answering ``changes`` (pure): ``policy_knob`` when any
    knob moved, else ``issuer_update``."""
    if any(change.reason == "policy_knob" for change in changes):
        return "policy_knob"
    return "issuer_update"


def trust_changes(
    before: Mapping[str, IssuerTrust], rows: Sequence[IssuerTrust], changed: Sequence[str]
) -> list[TrustChange]:
    """The changes of the issuers in ``changed`` (pure)."""
    after = {row.issuer_id: row for row in rows}
    return [TrustChange(before=before.get(issuer), after=after[issuer]) for issuer in changed]


_RECORD = """
INSERT INTO vex.trust_changes (
    recompute_id, issuer_id, issuer_type, reason, score_before, score_after,
    priority_before, priority_after, recompute_seconds
)
SELECT $1, c.issuer_id, c.issuer_type, c.reason, c.score_before, c.score_after,
       c.priority_before, c.priority_after, $2
FROM unnest($3::text[], $4::text[], $5::text[], $6::numeric[], $7::numeric[], $8::int[],
            $9::int[])
    AS c(issuer_id, issuer_type, reason, score_before, score_after, priority_before,
         priority_after)
"""


async def record_trust_changes(
    conn: DbConn, changes: Sequence[TrustChange], seconds: float
) -> None:
    """Record ``changes`` and the duration of the recompute that answered them, in the
    caller's transaction."""
    if not changes:
        return
    await conn.execute(
        _RECORD,
        uuid.uuid4(),
        seconds,
        [c.after.issuer_id for c in changes],
        [c.after.issuer_type for c in changes],
        [c.reason for c in changes],
        [None if c.before is None else c.before.trust_score for c in changes],
        [c.after.trust_score for c in changes],
        [None if c.before is None else c.before.priority for c in changes],
        [c.after.priority for c in changes],
    )


_CLAIM = """
UPDATE vex.trust_changes AS t SET observed_at = now()
WHERE t.change_id IN (
    SELECT change_id FROM vex.trust_changes
    WHERE observed_at IS NULL ORDER BY change_id LIMIT $1
    FOR UPDATE SKIP LOCKED
)
RETURNING t.recompute_id, t.issuer_id, t.issuer_type, t.reason, t.recompute_seconds
"""

_RECOMPUTE_REASON = """
SELECT CASE WHEN bool_or(reason = 'policy_knob') THEN 'policy_knob' ELSE 'issuer_update' END
FROM vex.trust_changes WHERE recompute_id = $1
"""


async def observe_trust_changes(pool: asyncpg.Pool, *, limit: int = 1000) -> int:
    """Export the trust changes no worker has observed yet; returns how many."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(_CLAIM, limit)
        recomputes: dict[uuid.UUID, float] = {}
        for row in rows:
            metrics.VEX_ISSUER_TRUST_CHANGES.labels(row["issuer_id"], row["issuer_type"]).inc()
            recomputes[row["recompute_id"]] = float(row["recompute_seconds"])
        for recompute_id, seconds in recomputes.items():
            # The recompute's reason over all its rows, even those another batch claims.
            reason = await conn.fetchval(_RECOMPUTE_REASON, recompute_id)
            metrics.VEX_RECOMPUTE_DURATION.labels(reason).observe(seconds)
    if rows:
        log.info("vex.trust_changes_observed", changes=len(rows), recomputes=len(recomputes))
    return len(rows)


_DEPTHS = """
SELECT coalesce(sum(n), 0) AS total, coalesce(max(n), 0) AS deepest,
       (array_agg(tenant_id ORDER BY n DESC, tenant_id))[1] AS tenant_id
FROM (
    SELECT tenant_id, count(*) AS n FROM vex.consensus_conflicts
    WHERE resolved_at IS NULL GROUP BY tenant_id
) AS per_tenant
"""


class QueueDepth(msgspec.Struct, frozen=True, kw_only=True):
    total: int
    deepest: int
    deepest_tenant: uuid.UUID | None


async def queue_depth(conn: DbConn) -> QueueDepth:
    """Open conflicts in all, and of the tenant with the most."""
    row = await conn.fetchrow(_DEPTHS)
    assert row is not None  # an aggregate always returns a row
    return QueueDepth(
        total=int(row["total"]), deepest=int(row["deepest"]), deepest_tenant=row["tenant_id"]
    )
