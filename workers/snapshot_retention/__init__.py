"""Snapshot governance and retention for imported feed snapshots (docs/snapshots.md).

Pure modules, one per capability, no I/O: ``times`` (instants, ISO 8601 durations), ``ids``
(snapshot ids, digests, object keys), ``records``, ``payload``, ``lifecycle`` (the state
machine, activation, rollback and expiry plans), ``freshness``, ``retention`` (planning),
``audit`` (the hash chain and its anchors) and ``api_shapes`` (the HTTP bodies).

Around them: ``store`` persists records, holds, thresholds and the audit chain; ``base``,
``reads``, ``changes``, ``housekeeping`` and ``audit_log`` are the operations, assembled
into ``service.Snapshots``; ``worker`` is the ``snapshot-retention`` worker; ``api`` serves
the HTTP API on the ops endpoint; ``cli`` is ``fleet snapshots``.
"""

from workers.snapshot_retention.service import Snapshots
from workers.snapshot_retention.worker import SnapshotRetentionService

__all__ = ["SnapshotRetentionService", "Snapshots"]
