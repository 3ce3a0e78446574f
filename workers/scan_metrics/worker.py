"""The scan-metrics worker: one set-based statement per batch.

Stream in: ``scanner:events`` (``scan.submitted``, ``scan.completed``, ``scan.failed``),
group ``scan-metrics``. The kernel hands over the events the group has not seen; they are
merged in Python to one row per scan (``rows.py``) and sent as one array per column:
the rows, then their phases flat with each phase's row position. One statement, the inbox
insert composed in front (``workers.kernel.inbox``), writes them:

- ``INSERT``: scans never seen before, plain inserts into ``scanner.scan_metrics`` and
  ``scanner.execution_phases`` (no conflict check);
- ``UPSERT``, when a scan of the batch is already stored (that statement fails on the
  scan's key with nothing written): ``scanner.scan_metrics`` upserted keyed by ``scan_id``
  and, for the scans whose outcome this batch decided, their phases replaced by the
  winning event's. The ``ON CONFLICT`` conditions repeat the precedence rules of
  ``rows.py`` against the stored row, so the result is the same in any order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from operator import attrgetter
from typing import Any, ClassVar, Final

import asyncpg
import msgspec
import structlog

from contracts.scanner import Phase, ScanCompleted, ScanFailed, ScannerEvent, ScanSubmitted
from workers import metrics
from workers.db import array_literal
from workers.kernel.inbox import Tx, compose
from workers.kernel.stopping import Stopping
from workers.kernel.worker import Resources, Worker
from workers.scan_metrics import tte
from workers.scan_metrics.retention import ScanMetricsRetention
from workers.scan_metrics.rows import ScanRow, rows_for_batch

log = structlog.get_logger("workers.scan_metrics")

# (column, type) of scanner.scan_metrics in the order of the statement's parameters.
# ``text`` columns travel as lists the driver encodes (any text is safe); the others as
# array literals (``workers.db.array_literal``): numbers, booleans, RFC 3339
# timestamps and the contract's names need no quoting and cost the server little to parse.
_ARTIFACT: Final = (
    ("tenant_id", "uuid"),
    ("surface_id", "uuid"),
    ("artifact_digest", "text"),
    ("artifact_type", "name"),
    ("is_replay", "boolean"),
)
_SUBMISSION: Final = (("submitted_at", "timestamptz"), ("submitted_event_id", "uuid"))
_OUTCOME: Final = (
    ("status", "name"),
    ("outcome_event_id", "uuid"),
    ("started_at", "timestamptz"),
    ("finished_at", "timestamptz"),
    ("failed_at", "timestamptz"),
    ("failed_phase", "name"),
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
_ROW: Final = (("metrics_id", "uuid"), ("scan_id", "uuid"), *_ARTIFACT, *_SUBMISSION, *_OUTCOME)
# Phases, flat in row order: ``owner`` is the 1-based position of the phase's row.
_PHASE: Final = (
    ("owner", "int"),
    ("name", "name"),
    ("order", "int"),
    ("started_at", "timestamptz"),
    ("finished_at", "timestamptz"),
    ("success", "boolean"),
    ("error_code", "text"),
    ("error_message", "text"),
)


def _cast(position: int, kind: str) -> str:
    """The parameter's SQL: lists for uuid and text, array literals (text) otherwise."""
    if kind == "uuid":
        return f"${position}::uuid[]"
    if kind == "text":
        return f"${position}::text[]"
    sql_type = "text" if kind == "name" else kind
    return f"${position}::text::{sql_type}[]"


_FIRST: Final = 3  # $1 and $2 are the inbox's
_ROW_ARGS: Final = ", ".join(_cast(_FIRST + i, t) for i, (_, t) in enumerate(_ROW))
_PHASE_FIRST: Final = _FIRST + len(_ROW)
_PHASE_ARGS: Final = ", ".join(
    f"unnest({_cast(_PHASE_FIRST + i, t)})" for i, (_, t) in enumerate(_PHASE)
)
# Each phase's metrics: one JSON array for the batch, parsed once.
_METRICS_ARG: Final = f"${_PHASE_FIRST + len(_PHASE)}::text::jsonb"
_ROW_NAMES: Final = ", ".join(c for c, _ in _ROW)
_PHASE_NAMES: Final = ", ".join(f'"{c}"' for c, _ in _PHASE)
_PHASES_FROM: Final = f"""ROWS FROM ({_PHASE_ARGS}, jsonb_array_elements({_METRICS_ARG}))
        AS p({_PHASE_NAMES}, metrics)"""
_PHASE_COLUMNS: Final = (
    "metrics_id, phase_name, phase_order, started_at, finished_at, success, error_code, "
    "error_message, phase_metrics"
)


def _phase_values(metrics_id: str) -> str:
    return (
        f'{metrics_id}, p.name, p."order", p.started_at, p.finished_at, p.success, '
        "p.error_code, p.error_message, p.metrics"
    )


# Scans never seen before (the common case: one event per scan, or its whole lifecycle
# in one batch): plain inserts, no conflict check on any row. A scan already stored makes
# the statement fail on one of its keys (_SCAN_KEYS) with nothing written; the batch then goes
# through UPSERT with the same parameters.
INSERT: Final = compose(f"""
m AS (
    INSERT INTO scanner.scan_metrics ({_ROW_NAMES})
    SELECT * FROM unnest({_ROW_ARGS})
),
ph AS (
    INSERT INTO scanner.execution_phases ({_PHASE_COLUMNS})
    SELECT {_phase_values(f"(${_FIRST}::uuid[])[p.owner]")}
    FROM {_PHASES_FROM}
)
SELECT
""")

# A stored scan shows on whichever of its keys the statement reaches first.
_SCAN_KEYS: Final = frozenset({"scan_metrics_pkey", "scan_metrics_scan_id_key"})


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


# Any order, any redelivery: upserts ``scanner.scan_metrics`` keyed by ``scan_id`` and,
# for the scans whose outcome this statement decided (``won``: the stored
# outcome_event_id is now the batch's), makes their phases exactly the winning event's:
# the stored ones are deleted (a row this statement inserted, xmax = 0, has none) and the
# winner's inserted. Phase rows need no ORDER BY or key of their own: the scan row's lock,
# taken above in scan_id order, already serializes the writers of a scan's phases.
UPSERT: Final = compose(f"""
x AS (
    SELECT *, ordinality::int AS position
    FROM unnest({_ROW_ARGS}) WITH ORDINALITY AS x({_ROW_NAMES})
),
m AS (
    INSERT INTO scanner.scan_metrics AS s ({_ROW_NAMES})
    SELECT {", ".join(f"x.{c}" for c, _ in _ROW)} FROM x ORDER BY x.scan_id
    ON CONFLICT (scan_id) DO UPDATE SET
        {_assignment()}
    WHERE {_OUTCOME_WINS} OR {_SUBMISSION_WINS}
    RETURNING s.metrics_id, s.outcome_event_id, (s.xmax = 0) AS inserted
),
won AS (
    SELECT m.metrics_id, m.inserted, x.position
    FROM x JOIN m ON m.metrics_id = x.metrics_id AND m.outcome_event_id = x.outcome_event_id
),
p AS (
    SELECT won.metrics_id, p.*
    FROM {_PHASES_FROM}
    JOIN won ON won.position = p.owner
),
gone AS (
    DELETE FROM scanner.execution_phases e
    USING won
    WHERE NOT won.inserted AND e.metrics_id = won.metrics_id
),
ph AS (
    INSERT INTO scanner.execution_phases ({_PHASE_COLUMNS})
    SELECT {_phase_values("p.metrics_id")} FROM p
)
SELECT
""")

_encoder = msgspec.json.Encoder()
_ROW_GETTERS: Final = [(attrgetter(c), t) for c, t in _ROW]
_PHASE_GETTERS: Final = [(attrgetter(c), t) for c, t in _PHASE[1:]]
_phase_metrics: Final = attrgetter("metrics")


def parameters(rows: Sequence[ScanRow]) -> list[Any]:
    """The batch statement's parameters from ``$3``: one per scan_metrics column, then one
    per phase column (phases flat, in row order), then every phase's metrics as one JSON
    array. INSERT and UPSERT take the same ones."""
    params: list[Any] = []
    for get, kind in _ROW_GETTERS:
        values = list(map(get, rows))
        params.append(values if kind in ("uuid", "text") else array_literal(values))
    phases: list[Phase] = []
    owners: list[int] = []
    for position, row in enumerate(rows, start=1):
        if row.phases:
            phases.extend(row.phases)
            owners.extend([position] * len(row.phases))
    params.append(array_literal(owners))
    for get, kind in _PHASE_GETTERS:
        values = list(map(get, phases))
        params.append(values if kind == "text" else array_literal(values))
    params.append(_encoder.encode(list(map(_phase_metrics, phases))).decode())
    return params


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
        # Built here so that a bad schedule stops the worker at start, not at midnight.
        self._retention = (
            None
            if resources.pool is None
            else ScanMetricsRetention(resources.settings, resources.pool)
        )

    async def background(self, stopping: Stopping) -> None:
        """Expire old scan metrics on the retention schedule, once across the fleet
        (``workers/scan_metrics/retention.py``); needs PostgreSQL only."""
        if self._retention is not None:
            await self._retention.run(stopping)

    def validate(self, event: ScannerEvent) -> str | None:
        return tte.validate(event)

    async def apply(self, tx: Tx, fresh: Sequence[ScannerEvent]) -> None:
        # Several events of one scan merge into one row (rows.py): the kernel hands over
        # only events this group has not seen, so every row is new information.
        params = parameters(rows_for_batch(fresh))
        try:
            await tx.execute(INSERT, *params)
        except asyncpg.UniqueViolationError as exc:
            # A scan of the batch is already stored (a submission recorded earlier, an
            # outcome redelivered under a new event id, a concurrent batch): the failed
            # statement wrote nothing, so the whole batch is upserted instead.
            if exc.constraint_name not in _SCAN_KEYS:
                raise
            await tx.execute(UPSERT, *params)

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
