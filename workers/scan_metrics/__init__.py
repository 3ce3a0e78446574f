"""scan-metrics: records scans, their execution phases and Time-to-Evidence.

Stream in: ``scanner:events`` (group ``scan-metrics``): ``scan.submitted``,
``scan.completed``, ``scan.failed``. Writes ``scanner.scan_metrics`` (one row per scan,
keyed by ``scan_id``; ``metrics_id`` is uuid5 of it) and ``scanner.execution_phases``
(a scan's phases are the winning outcome's, replaced as a whole when another outcome
wins). Idempotency: the runtime's inbox by
``eventId``; rows converge to the same content in any arrival order and under
duplication (precedence rules in :mod:`workers.scan_metrics.rows`). Failed scans keep
their error and the phases that ran and are excluded from TTE statistics; replays are
flagged and excluded from SLO figures. Old rows (``created_at`` older than
``FLEET_SCAN_METRICS_RETENTION_DAYS``, default 90) are deleted by the worker's own scheduled
housekeeping, once across replicas (:mod:`workers.scan_metrics.retention`).
"""

from workers.scan_metrics.worker import ScanMetricsWorker

__all__ = ["ScanMetricsWorker"]
