"""The scan-metrics worker: one set-based statement per batch.

The batch is merged in Python to one row per scan (``rows.py``), sent as one JSON text
parameter and parsed by PostgreSQL with ``json_to_recordset``. One statement upserts
``scanner.scan_metrics`` keyed by ``scan_id`` and, for the scans whose outcome this batch
decided, replaces their ``scanner.execution_phases`` keyed by ``(metrics_id,
phase_order)``. The ``ON CONFLICT`` conditions repeat the precedence rules of
``rows.py`` against the stored row, so the result is the same in any order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final

import asyncpg
import msgspec
import structlog

from contracts import Event
from contracts.scanner import ScanCompleted, ScanFailed, ScanSubmitted
from workers import metrics
from workers.base import Resources, Worker
from workers.errors import Permanent
from workers.scan_metrics import tte
from workers.scan_metrics.rows import rows_for_batch

if TYPE_CHECKING:
    from workers.db import DbConn

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
    f"({_OUTCOME_WINS} OR (s.status = 'submitted' AND EXCLUDED.status = 'submitted' "
    f"AND {_SUBMISSION_WINS}))"
)


def _assign(columns: Sequence[tuple[str, str]], condition: str) -> list[str]:
    return [f"{c} = CASE WHEN {condition} THEN EXCLUDED.{c} ELSE s.{c} END" for c, _ in columns]


def _upsert_sql() -> str:
    columns = [("metrics_id", "uuid"), ("scan_id", "uuid"), *_ARTIFACT, *_SUBMISSION, *_OUTCOME]
    names = ", ".join(c for c, _ in columns)
    record = ", ".join(f'"{_camel(c)}" {t}' for c, t in columns)
    selected = ", ".join(f'x."{_camel(c)}"' for c, _ in columns)
    assignments = ",\n        ".join(
        [
            *_assign(_ARTIFACT, _ARTIFACT_WINS),
            *_assign(_SUBMISSION, _SUBMISSION_WINS),
            *_assign(_OUTCOME, _OUTCOME_WINS),
            "updated_at = now()",
        ]
    )
    # ``won``: scans whose outcome this statement wrote (the stored outcome_event_id is now
    # the batch's); their phases become exactly the winning event's. A row this statement
    # inserted (xmax = 0) has no phases yet: a plain INSERT. Otherwise orders the winner
    # does not have are deleted and the others upserted. Phase rows need no ORDER BY: the
    # scan row's lock, taken above in scan_id order, already serializes writers of a scan.
    return f"""
WITH x AS (
    SELECT * FROM json_to_recordset($1::text::json) AS x({record}, phases json)
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
    SELECT m.metrics_id, m.inserted, x.phases
    FROM x JOIN m ON m.metrics_id = x."metricsId" AND m.outcome_event_id = x."outcomeEventId"
),
p AS (
    SELECT won.metrics_id, won.inserted, ph.*
    FROM won CROSS JOIN LATERAL json_to_recordset(won.phases) AS ph(
        name text, "order" int, "startedAt" timestamptz, "finishedAt" timestamptz,
        success boolean, "errorCode" text, "errorMessage" text, metrics jsonb
    )
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
)
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
"""


_PHASE_COLUMNS: Final = (
    "metrics_id, phase_name, phase_order, started_at, finished_at, success, error_code, "
    "error_message, phase_metrics"
)
_PHASE_VALUES: Final = (
    'p.metrics_id, p.name, p."order", p."startedAt", p."finishedAt", p.success, '
    'p."errorCode", p."errorMessage", COALESCE(p.metrics, \'{}\'::jsonb)'
)


UPSERT_SQL: Final = _upsert_sql()

_encoder = msgspec.json.Encoder()


class ScanMetricsWorker(Worker):
    name: ClassVar[str] = "scan-metrics"
    stream: ClassVar[str] = "scanner:events"
    event_types: ClassVar[tuple[type[Event], ...]] = (ScanSubmitted, ScanCompleted, ScanFailed)

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

    def validate(self, event: Event) -> str | None:
        assert isinstance(event, (ScanSubmitted, ScanCompleted, ScanFailed))
        return tte.validate(event)

    async def apply(self, conn: DbConn | None, events: Sequence[Event]) -> None:
        assert conn is not None
        rows = rows_for_batch(events)  # type: ignore[arg-type]  # event_types admits scanner events only
        try:
            await conn.execute(UPSERT_SQL, _encoder.encode(rows).decode())
        except asyncpg.UntranslatableCharacterError as exc:
            # validate() refuses NUL characters where it looks; anything it missed lands
            # here. In a batch the runtime retries event by event, so only the culprit
            # is dead-lettered.
            raise Permanent("invalid_event", f"cannot be stored: {exc}") from None

    async def after_commit(self, events: Sequence[Event]) -> None:
        """Count each outcome event the group saw for the first time.

        ``fleet_scans_total{outcome}``: ``completed``, ``failed``, or ``replay`` for either
        outcome of a replayed scan. TTE, SLO breaches and phase durations only observe
        completed scans that are not replays: they are what the SLOs are about.
        """
        outcomes: Counter[str] = Counter()
        for event in events:
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
            metrics.SCAN_TTE_SECONDS.observe(took / 1000)
            for slo in tte.slo_breaches(took):
                self._breaches[slo].inc()
            for phase in event.phases:
                self._phase_seconds[phase.name].observe(
                    tte.duration_ms(phase.started_at, phase.finished_at) / 1000
                )
        for outcome, n in outcomes.items():
            self._scans[outcome].inc(n)
        if outcomes:
            log.debug("scans.recorded", **outcomes)
