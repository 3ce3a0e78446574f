"""The scan-metrics worker: one set-based statement per batch.

Stream in: ``scanner:events`` (``scan.submitted``, ``scan.completed``, ``scan.failed``),
group ``scan-metrics``. The kernel hands over the events the group has not seen; they are
merged in Python to one row per scan (``rows.py``) and sent as JSON text parameters: the
rows without their phases, the phases flat, and each phase's owner. One statement, the
inbox insert composed in front (``workers.kernel.inbox``), upserts
``scanner.scan_metrics`` keyed by ``scan_id`` and, for the scans whose outcome this
batch decided, replaces their ``scanner.execution_phases`` keyed by
``(metrics_id, phase_order)``. The ``ON CONFLICT`` conditions repeat the precedence
rules of ``rows.py`` against the stored row, so the result is the same in any order.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar, Final

import msgspec
import structlog

from contracts.scanner import Phase, ScanCompleted, ScanFailed, ScannerEvent, ScanSubmitted
from workers import metrics
from workers.kernel.inbox import Tx, compose
from workers.kernel.worker import Resources, Worker
from workers.scan_metrics import tte
from workers.scan_metrics.rows import ScanRow, rows_for_batch

log = structlog.get_logger("workers.scan_metrics")

# (column, type) in the order of the INSERT; the JSON keys are their camelCase names.
_ARTIFACT: Final = (
    ("tenant_id", "uuid"),
    ("surface_id", "uuid"),
    ("artifact_digest", "text"),
    ("artifact_type", "text"),
    ("is_replay", "boolean"),
)
_SUBMISSION: Final = (("submitted_at", "timestamptz"), ("submitted_event_id", "uuid"))
_OUTCOME: Final = (
    ("status", "text"),
    ("outcome_event_id", "uuid"),
    ("started_at", "timestamptz"),
    ("finished_at", "timestamptz"),
    ("failed_at", "timestamptz"),
    ("failed_phase", "text"),
    ("error_code", "text"),
    ("error_message", "text"),
    ("retryable", "boolean"),
    ("package_count", "int"),
    ("finding_count", "int"),
    ("vex_decision_count", "int"),
    ("replay_manifest_hash", "text"),
    ("findings_sha256", "text"),
    ("vex_bundle_sha256", "text"),
    ("proof_bundle_sha256", "text"),
    ("sbom_sha256", "text"),
    ("policy_digest", "text"),
    ("feed_snapshot_id", "text"),
    ("scanner_version", "text"),
    ("scanner_image_digest", "text"),
    *((f"t_{phase}_ms", "int") for phase in tte.TRACKED_PHASES),
)


def _camel(column: str) -> str:
    head, *rest = column.split("_")
    return head + "".join(part.capitalize() for part in rest)


# The stored outcome loses to the proposed one (rows.outcome_key, compared in SQL).
_OUTCOME_WINS: Final = """(EXCLUDED.status <> 'submitted' AND (s.status = 'submitted' OR
    (EXCLUDED.status = 'completed', COALESCE(EXCLUDED.finished_at, EXCLUDED.failed_at),
     EXCLUDED.outcome_event_id)
    > (s.status = 'completed', COALESCE(s.finished_at, s.failed_at), s.outcome_event_id)))"""
# The stored submission loses to the proposed one (rows.submission_key).
_SUBMISSION_WINS: Final = """(EXCLUDED.submitted_at IS NOT NULL AND (s.submitted_at IS NULL
    OR (EXCLUDED.submitted_at, EXCLUDED.submitted_event_id)
       < (s.submitted_at, s.submitted_event_id)))"""
# Artifact fields follow the outcome once there is one, else the submission.
_ARTIFACT_WINS: Final = (
    "(w.o OR (s.status = 'submitted' AND EXCLUDED.status = 'submitted' AND w.sb))"
)


def _assignment() -> str:
    """The ``DO UPDATE SET`` list: every merged column in one multiple-column assignment
    whose sub-SELECT evaluates each precedence rule once (``w.o``: the outcome wins,
    ``w.sb``: the submission wins) rather than once per column. It also keeps the
    statement under asyncpg's statement-cache limit (15 KiB), so it is prepared and
    planned once per connection instead of on every batch."""
    groups = ((_ARTIFACT, _ARTIFACT_WINS), (_SUBMISSION, "w.sb"), (_OUTCOME, "w.o"))
    targets = ", ".join(c for columns, _ in groups for c, _ in columns)
    values = ",\n            ".join(
        f"CASE WHEN {condition} THEN EXCLUDED.{c} ELSE s.{c} END"
        for columns, condition in groups
        for c, _ in columns
    )
    return f"""({targets}) = (
        SELECT {values}
        FROM (SELECT {_OUTCOME_WINS} AS o, {_SUBMISSION_WINS} AS sb) AS w
    ),
        updated_at = now()"""


def _upsert_sql() -> str:
    """The batch's effects (composed behind the inbox insert): ``$3``, the merged rows
    without their phases (JSON array); ``$4``, the phases of every row, flat, in row order
    (JSON array); ``$5``, the ``metrics_id`` each of those phases belongs to (JSON array,
    same length)."""
    columns = [("metrics_id", "uuid"), ("scan_id", "uuid"), *_ARTIFACT, *_SUBMISSION, *_OUTCOME]
    names = ", ".join(c for c, _ in columns)
    record = ", ".join(f'"{_camel(c)}" {t}' for c, t in columns)
    selected = ", ".join(f'x."{_camel(c)}"' for c, _ in columns)
    assignments = _assignment()
    # ``won``: scans whose outcome this statement wrote (the stored outcome_event_id is now
    # the batch's); their phases become exactly the winning event's. A row this statement
    # inserted (xmax = 0) has no phases yet: a plain INSERT. Otherwise orders the winner
    # does not have are deleted and the others upserted. Phase rows need no ORDER BY: the
    # scan row's lock, taken above in scan_id order, already serializes writers of a scan.
    # The phases come flat with their owners beside them (ROWS FROM zips the two), so
    # PostgreSQL parses each phase once instead of a nested array per scan.
    return f"""
x AS (
    SELECT * FROM json_to_recordset($3::text::json) AS x({record})
),
m AS (
    INSERT INTO scanner.scan_metrics AS s ({names})
    SELECT {selected} FROM x ORDER BY x."scanId"
    ON CONFLICT (scan_id) DO UPDATE SET
        {assignments}
    WHERE {_OUTCOME_WINS} OR {_SUBMISSION_WINS}
    RETURNING s.metrics_id, s.outcome_event_id, (s.xmax = 0) AS inserted
),
won AS (
    SELECT m.metrics_id, m.inserted
    FROM x JOIN m ON m.metrics_id = x."metricsId" AND m.outcome_event_id = x."outcomeEventId"
),
p AS (
    SELECT won.metrics_id, won.inserted, ph.*
    FROM ROWS FROM (
        json_to_recordset($4::text::json) AS (
            name text, "order" int, "startedAt" timestamptz, "finishedAt" timestamptz,
            success boolean, "errorCode" text, "errorMessage" text, metrics json
        ),
        json_array_elements_text($5::text::json)
    ) AS ph(
        name, "order", "startedAt", "finishedAt", success, "errorCode", "errorMessage",
        metrics, owner
    )
    JOIN won ON won.metrics_id = ph.owner::uuid
),
gone AS (
    DELETE FROM scanner.execution_phases e
    USING won
    WHERE NOT won.inserted
      AND e.metrics_id = won.metrics_id
      AND NOT EXISTS (
          SELECT FROM p WHERE p.metrics_id = e.metrics_id AND p."order" = e.phase_order
      )
),
fresh AS (
    INSERT INTO scanner.execution_phases ({_PHASE_COLUMNS})
    SELECT {_PHASE_VALUES} FROM p WHERE p.inserted
),
kept AS (
    INSERT INTO scanner.execution_phases AS e ({_PHASE_COLUMNS})
    SELECT {_PHASE_VALUES} FROM p WHERE NOT p.inserted
    ON CONFLICT (metrics_id, phase_order) DO UPDATE SET
        phase_name = EXCLUDED.phase_name,
        started_at = EXCLUDED.started_at,
        finished_at = EXCLUDED.finished_at,
        success = EXCLUDED.success,
        error_code = EXCLUDED.error_code,
        error_message = EXCLUDED.error_message,
        phase_metrics = EXCLUDED.phase_metrics
)
SELECT
"""


_PHASE_COLUMNS: Final = (
    "metrics_id, phase_name, phase_order, started_at, finished_at, success, error_code, "
    "error_message, phase_metrics"
)
_PHASE_VALUES: Final = (
    'p.metrics_id, p.name, p."order", p."startedAt", p."finishedAt", p.success, '
    'p."errorCode", p."errorMessage", COALESCE(p.metrics::jsonb, \'{}\'::jsonb)'
)

UPSERT: Final = compose(_upsert_sql())

_encoder = msgspec.json.Encoder()
_NO_PHASES: Final[list[Phase]] = []


def _parameters(rows: Sequence[ScanRow]) -> tuple[str, str, str]:
    """``$3``-``$5`` of the batch statement: the rows without phases, the phases flat, and
    the owner of each phase. Takes the phases out of ``rows``."""
    phases: list[Phase] = []
    owners: list[uuid.UUID] = []
    for row in rows:
        if row.phases:
            phases.extend(row.phases)
            owners.extend([row.metrics_id] * len(row.phases))
            # The rows are built for this one statement: taking their phases out in place
            # saves copying every row.
            row.phases = _NO_PHASES
    return (
        _encoder.encode(rows).decode(),
        _encoder.encode(phases).decode(),
        _encoder.encode(owners).decode(),
    )


class ScanMetricsWorker(Worker[ScannerEvent, None]):
    name: ClassVar[str] = "scan-metrics"
    stream: ClassVar[str] = "scanner:events"

    def __init__(self, resources: Resources, *, group: str | None = None) -> None:
        super().__init__(resources, group=group)
        # Label children looked up once: after_commit runs for every batch.
        self._phase_seconds: dict[str, Any] = {
            phase: metrics.SCAN_PHASE_DURATION.labels(phase) for phase in tte.ALL_PHASES
        }
        self._scans: dict[str, Any] = {
            outcome: metrics.SCANS.labels(outcome) for outcome in ("completed", "failed", "replay")
        }
        self._breaches: dict[str, Any] = {
            slo: metrics.SCAN_SLO_BREACHES.labels(slo) for slo in ("p50", "p95")
        }

    def validate(self, event: ScannerEvent) -> str | None:
        return tte.validate(event)

    async def apply(self, tx: Tx, fresh: Sequence[ScannerEvent]) -> None:
        # Several events of one scan merge into one row (rows.py): the kernel hands over
        # only events this group has not seen, so every row is new information.
        await tx.execute(UPSERT, *_parameters(rows_for_batch(fresh)))

    async def after_commit(self, fresh: Sequence[ScannerEvent], result: None) -> None:
        """Count each outcome event the group saw for the first time.

        ``fleet_scans_total{outcome}``: ``completed``, ``failed``, or ``replay`` for either
        outcome of a replayed scan. TTE, SLO breaches and phase durations only observe
        completed scans that are not replays: they are what the SLOs are about.
        """
        outcomes: Counter[str] = Counter()
        breaches: Counter[str] = Counter()
        ttes: list[float] = []
        phases: dict[str, list[float]] = {}
        for event in fresh:
            kind = type(event)
            if kind is ScanSubmitted:
                continue
            assert isinstance(event, (ScanCompleted, ScanFailed))
            if event.is_replay:
                outcomes["replay"] += 1
                continue
            if kind is ScanFailed:
                outcomes["failed"] += 1
                continue
            assert isinstance(event, ScanCompleted)
            outcomes["completed"] += 1
            took = tte.tte_ms(event)
            ttes.append(took / 1000)
            breaches.update(tte.slo_breaches(took))
            for phase in event.phases:
                phases.setdefault(phase.name, []).append(
                    tte.duration_ms(phase.started_at, phase.finished_at) / 1000
                )
        metrics.observe_many(metrics.SCAN_TTE_SECONDS, ttes)
        for name, seconds in phases.items():
            metrics.observe_many(self._phase_seconds[name], seconds)
        for slo, n in breaches.items():
            self._breaches[slo].inc(n)
        for outcome, n in outcomes.items():
            self._scans[outcome].inc(n)
        if outcomes:
            log.debug("scans.recorded", **outcomes)
