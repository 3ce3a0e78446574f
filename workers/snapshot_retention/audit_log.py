"""The audit log's reads and its verification from the genesis value (docs/snapshots.md)."""

from __future__ import annotations

import msgspec

from workers.snapshot_retention import store
from workers.snapshot_retention.audit import GENESIS_HASH, AuditRecord, verify_chain
from workers.snapshot_retention.base import SnapshotsBase, log

AUDIT_VERIFY_BATCH = 5_000


class AuditVerification(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    checked: int
    first_bad: AuditRecord | None = None
    reason: str | None = None


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
        """Check the whole chain in seq order, in batches; name the first bad record."""
        checked, after, start = 0, 0, GENESIS_HASH
        async with self.pool.acquire() as conn:
            while True:
                batch = await store.load_audit(conn, after_seq=after, limit=AUDIT_VERIFY_BATCH)
                if not batch:
                    return AuditVerification(ok=True, checked=checked)
                broken = verify_chain(batch, start_hash=start)
                if broken is not None:
                    bad = batch[broken.index]
                    log.warning("snapshot.audit_broken", seq=bad.seq, reason=broken.reason)
                    return AuditVerification(
                        ok=False,
                        checked=checked + broken.index,
                        first_bad=bad,
                        reason=broken.reason,
                    )
                checked += len(batch)
                after, start = batch[-1].seq, batch[-1].hash
