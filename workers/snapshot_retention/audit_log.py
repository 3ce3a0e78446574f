"""The audit log: listing, verification and the one-year pruning (docs/snapshots.md,
"Audit trail").

Verification starts from the newest pruning anchor (after checking the anchors' own chain)
or, before any pruning, from the genesis value, and checks every record kept. Pruning
removes the oldest records, never the newest, only after they verify, and records an
anchor naming the last one removed, in one transaction holding the chain's tail lock.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

import msgspec

from workers.snapshot_retention import store
from workers.snapshot_retention.audit import (
    GENESIS_HASH,
    AuditAnchor,
    AuditRecord,
    plan_prune,
    verify_anchors,
    verify_chain,
)
from workers.snapshot_retention.base import SnapshotError, SnapshotsBase, log, utcnow
from workers.snapshot_retention.times import rfc3339

AUDIT_VERIFY_BATCH = 5_000


class PruneRefused(SnapshotError):
    """The pruning would break the audit retention or a broken chain; nothing changed."""


class AuditVerification(msgspec.Struct, frozen=True, kw_only=True):
    """``ok``, or the first bad record (``first_bad``) or anchor (``bad_anchor``)."""

    ok: bool
    checked: int
    anchor: AuditAnchor | None = None
    first_bad: AuditRecord | None = None
    bad_anchor: int | None = None
    reason: str | None = None


class PruneReport(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["pruned", "dry_run", "nothing"]
    before: datetime
    records: int = 0
    last_seq: int | None = None
    anchor: AuditAnchor | None = None


class AuditLog(SnapshotsBase):
    async def audit(
        self,
        *,
        tool: str | None = None,
        snapshot_id: str | None = None,
        limit: int = 50,
    ) -> list[AuditRecord]:
        """The newest ``limit`` audit records (optionally of one tool or snapshot), oldest
        first."""
        async with self.pool.acquire() as conn:
            found = await store.load_audit(
                conn, tool=tool, snapshot_id=snapshot_id, limit=limit, newest_first=True
            )
        return found[::-1]

    async def verify_audit(self) -> AuditVerification:
        """Check the anchors, then every kept record in seq order from the newest anchor
        (or the genesis value), in batches; name the first bad anchor or record."""
        async with self.pool.acquire() as conn:
            anchors = await store.load_anchors(conn)
            broken_anchor = verify_anchors(anchors)
            if broken_anchor is not None:
                log.warning("snapshot.audit_anchor_broken", reason=broken_anchor)
                return AuditVerification(
                    ok=False, checked=0, bad_anchor=len(anchors), reason=broken_anchor
                )
            anchor = anchors[-1] if anchors else None
            after = 0 if anchor is None else anchor.last_seq
            start = GENESIS_HASH if anchor is None else anchor.last_hash
            checked = 0
            while True:
                batch = await store.load_audit(conn, after_seq=after, limit=AUDIT_VERIFY_BATCH)
                if not batch:
                    return AuditVerification(ok=True, checked=checked, anchor=anchor)
                # Records at or before the anchor's last_seq are not loaded: after a prune
                # there are none, and any left behind is outside the verified chain.
                broken = verify_chain(batch, start_hash=start, start_seq=after)
                if broken is not None:
                    bad = batch[broken.index]
                    log.warning("snapshot.audit_broken", seq=bad.seq, reason=broken.reason)
                    return AuditVerification(
                        ok=False,
                        checked=checked + broken.index,
                        anchor=anchor,
                        first_bad=bad,
                        reason=broken.reason,
                    )
                checked += len(batch)
                after, start = batch[-1].seq, batch[-1].hash

    async def prune_audit(
        self,
        before: datetime,
        *,
        actor: str,
        dry_run: bool = False,
        now: datetime | None = None,
    ) -> PruneReport:
        """Remove the audit records that occurred before ``before`` (the oldest ones, in
        seq order, never the newest) and record an anchor, so ``verify_audit`` still
        checks every kept record. ``before`` may not be later than now minus
        ``FLEET_SNAPSHOT_AUDIT_RETENTION_DAYS``."""
        at = now or utcnow()
        days = self.settings.snapshot_audit_retention_days
        limit = at - timedelta(days=days)
        if before > limit:
            raise PruneRefused(
                f"--before {rfc3339(before)} would remove records younger than the audit "
                f"retention (FLEET_SNAPSHOT_AUDIT_RETENTION_DAYS={days:g}): use "
                f"{rfc3339(limit)} or earlier"
            )
        async with self.pool.acquire() as conn, conn.transaction():
            await store.lock_audit_tail(conn)
            anchors = await store.load_anchors(conn)
            broken_anchor = verify_anchors(anchors)
            if broken_anchor is not None:
                raise PruneRefused(f"refusing to prune: {broken_anchor}")
            previous = anchors[-1] if anchors else None
            records = await store.load_audit(
                conn, after_seq=0 if previous is None else previous.last_seq
            )
            try:
                plan = plan_prune(records, before, previous_anchor=previous, actor=actor, at=at)
            except ValueError as exc:
                raise PruneRefused(str(exc)) from None
            if plan is None:
                return PruneReport(status="nothing", before=before)
            if dry_run:
                return PruneReport(
                    status="dry_run",
                    before=before,
                    records=plan.records,
                    last_seq=plan.last.seq,
                    anchor=plan.anchor,
                )
            removed = await store.prune_audit(conn, plan.anchor)
            if removed != plan.records:
                # Rolled back with the transaction: the table changed under the lock.
                raise PruneRefused(
                    f"expected to remove {plan.records} record(s), found {removed}; nothing pruned"
                )
        log.info(
            "snapshot.audit_pruned",
            records=plan.records,
            last_seq=plan.last.seq,
            anchor=plan.anchor.anchor_seq,
            actor=actor,
        )
        return PruneReport(
            status="pruned",
            before=before,
            records=plan.records,
            last_seq=plan.last.seq,
            anchor=plan.anchor,
        )
