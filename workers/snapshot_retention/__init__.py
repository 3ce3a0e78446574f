"""Snapshot governance and retention for imported feed snapshots (SPEC §5.4).

``core`` holds every decision as pure functions over plain data: snapshot ids, freshness,
the snapshot state machine, rollback and retention planning, the hash-chained audit log and
content-addressed object keys. ``store`` persists records, holds and the audit chain;
``service`` runs the operations over PostgreSQL and S3 and is the ``snapshot-retention``
worker; ``api`` serves the seed's HTTP API on the ops endpoint; ``cli`` is
``fleet snapshots``.
"""

from workers.snapshot_retention.service import SnapshotRetentionService, Snapshots

__all__ = ["SnapshotRetentionService", "Snapshots"]
