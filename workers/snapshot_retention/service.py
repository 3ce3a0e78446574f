"""Every snapshot operation over PostgreSQL and S3, one class assembled from one module per
capability (docs/snapshots.md):

* ``reads``: the SLA, reading the active snapshot, holds, freshness gauges;
* ``changes``: import, rollback, manual expiry, holds;
* ``housekeeping``: the retention run, once across the fleet;
* ``audit_log``: listing and verifying the hash-chained audit trail.

State lives in ``ingest.feed_snapshots`` (one active snapshot per tool),
``ingest.retention_exceptions`` and the hash-chained ``ingest.snapshot_audit``; payloads live
in S3 under content-addressed keys, so re-uploading is idempotent. The ``snapshot-retention``
worker that runs the schedule is ``worker``; the HTTP API is ``api``.
"""

from __future__ import annotations

from workers.snapshot_retention.audit_log import AuditLog
from workers.snapshot_retention.changes import Changes
from workers.snapshot_retention.housekeeping import Housekeeping
from workers.snapshot_retention.reads import Reads


class Snapshots(Reads, Changes, Housekeeping, AuditLog):
    """Every snapshot operation, over one pool and one S3 client (opened by the caller)."""
