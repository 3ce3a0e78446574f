"""The scan-metrics worker: one set-based statement per batch.

The batch is merged in Python to one row per scan (``rows.py``) and sent as JSON text
parameters: the rows without their phases, the phases flat, and each phase's owner.
One statement inserts the runtime's inbox rows (``writes_inbox``), upserts
``scanner.scan_metrics`` keyed by ``scan_id`` for the events that are new and, for the
scans whose outcome this batch decided, replaces their ``scanner.execution_phases``
keyed by ``(metrics_id, phase_order)``. The ``ON CONFLICT`` conditions repeat the
precedence rules of ``rows.py`` against the stored row, so the result is the same in any
order. A batch holding several events of one scan takes the runtime's usual path
instead (inbox first, then the merge of the new events, in one transaction).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final

import asyncpg
import msgspec
import structlog

from contracts import Event
from contracts.scanner import Phase, ScanCompleted, ScanFailed, ScanSubmitted
from workers import metrics
from workers.base import Resources, Worker
from workers.errors import Permanent
from workers.scan_metrics import tte
from workers.scan_metrics.rows import ScanRow, rows_for_batch

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


def _upsert_sql(*, inbox: bool) -> str:
    """The batch statement. ``$1``: the merged rows without their phases (JSON array);
    ``$2``: the phases of every row, flat, in row order (JSON array); ``$3``: the
    ``metrics_id`` each of those phases belongs to (JSON array, same length). With
    ``inbox``, ``$4`` is the group: the statement also inserts the inbox rows, applies only
    the rows whose event is new (one event per scan, so a row is new or not as a whole)
    and returns the new event ids."""
    columns = [("metrics_id", "uuid"), ("scan_id", "uuid"), *_ARTIFACT, *_SUBMISSION, *_OUTCOME]
    names = ", ".join(c for c, _ in columns)
    record = ", ".join(f'"{_camel(c)}" {t}' for c, t in columns)
    selected = ", ".join(f'x."{_camel(c)}"' for c, _ in columns)
    assignments = _assignment()
    if inbox:
        head = f"""
WITH batch AS (
    SELECT * FROM json_to_recordset($1::text::json) AS x({record})
),
inbox AS (
    INSERT INTO fleet.inbox (event_id, group_name)
    SELECT COALESCE(b."outcomeEventId", b."submittedEventId"), $4 FROM batch AS b
    ORDER BY 1  -- one lock order for every batch: concurrent batches cannot deadlock
    ON CONFLICT DO NOTHING
    RETURNING event_id
),
x AS (
    SELECT b.* FROM batch AS b
    JOIN inbox ON inbox.event_id = COALESCE(b."outcomeEventId", b."submittedEventId")
),"""
        tail = "SELECT event_id FROM inbox"
    else:
        head = f"""
WITH x AS (
    SELECT * FROM json_to_recordset($1::text::json) AS x({record})
),"""
        tail = "SELECT"
    # ``won``: scans whose outcome this statement wrote (the stored outcome_event_id is now
    # the batch's); their phases become exactly the winning event's. A row this statement
    # inserted (xmax = 0) has no phases yet: a plain INSERT. Otherwise orders the winner
    # does not have are deleted and the others upserted. Phase rows need no ORDER BY: the
    # scan row's lock, taken above in scan_id order, already serializes writers of a scan.
    # The phases come flat with their owners beside them (ROWS FROM zips the two), so
    # PostgreSQL parses each phase once instead of a nested array per scan.
    return f"""{head}
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
        json_to_recordset($2::text::json) AS (
            name text, "order" int, "startedAt" timestamptz, "finishedAt" timestamptz,
            success boolean, "errorCode" text, "errorMessage" text, metrics json
        ),
        json_array_elements_text($3::text::json)
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
{tail}
"""


_PHASE_COLUMNS: Final = (
    "metrics_id, phase_name, phase_order, started_at, finished_at, success, error_code, "
    "error_message, phase_metrics"
)
_PHASE_VALUES: Final = (
    'p.metrics_id, p.name, p."order", p."startedAt", p."finishedAt", p.success, '
    'p."errorCode", p."errorMessage", COALESCE(p.metrics::jsonb, \'{}\'::jsonb)'
)

_INBOX_SQL: Final = """
INSERT INTO fleet.inbox (event_id, group_name)
SELECT e, $1 FROM unnest($2::uuid[]) AS e
ORDER BY e  -- one lock order for every batch: concurrent batches cannot deadlock
ON CONFLICT DO NOTHING
RETURNING event_id
"""

UPSERT_SQL: Final = _upsert_sql(inbox=False)
UPSERT_WITH_INBOX_SQL: Final = _upsert_sql(inbox=True)

_encoder = msgspec.json.Encoder()
_NO_PHASES: Final[list[Phase]] = []


def _parameters(rows: Sequence[ScanRow]) -> tuple[str, str, str]:
    """``$1``-``$3`` of the batch statement: the rows without phases, the phases flat, and
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


def _unstorable(exc: asyncpg.UntranslatableCharacterError) -> Permanent:
    # validate() refuses NUL characters where it looks; anything it missed lands here. In
    # a batch the runtime retries event by event, so only the culprit is dead-lettered.
    return Permanent("invalid_event", f"cannot be stored: {exc}")


async def _execute(conn: DbConn, sql: str, parameters: tuple[str, ...]) -> None:
    try:
        await conn.execute(sql, *parameters)
    except asyncpg.UntranslatableCharacterError as exc:
        raise _unstorable(exc) from None


async def _fetch(conn: DbConn, sql: str, parameters: tuple[str, ...], group: str) -> list[Any]:
    try:
        return await conn.fetch(sql, *parameters, group)
    except asyncpg.UntranslatableCharacterError as exc:
        raise _unstorable(exc) from None


def _first_of_each(events: Sequence[Event], new: set[uuid.UUID]) -> list[Event]:
    """The events whose inbox row is new, each once (a second copy is a duplicate)."""
    left = set(new)
    fresh = []
    for event in events:
        if event.event_id in left:
            left.discard(event.event_id)
            fresh.append(event)
    return fresh


class ScanMetricsWorker(Worker):
    name: ClassVar[str] = "scan-metrics"
    stream: ClassVar[str] = "scanner:events"
    event_types: ClassVar[tuple[type[Event], ...]] = (ScanSubmitted, ScanCompleted, ScanFailed)
    writes_inbox: ClassVar[bool] = True

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
        await _execute(conn, UPSERT_SQL, _parameters(rows))

    async def apply_with_inbox(
        self, conn: DbConn, group: str, events: Sequence[Event]
    ) -> list[uuid.UUID]:
        rows = rows_for_batch(events)  # type: ignore[arg-type]  # event_types admits scanner events only
        if len(rows) == len(events):
            # One event per scan (the common case): each row stands or falls with its one
            # event's inbox row, so a single statement writes both.
            return [
                r[0] for r in await _fetch(conn, UPSERT_WITH_INBOX_SQL, _parameters(rows), group)
            ]
        # Several events of a scan in the batch: the row must merge only those that are
        # new, which is known only after the inbox insert. Inbox, then effects, in one
        # transaction.
        async with conn.transaction():
            new = {r[0] for r in await conn.fetch(_INBOX_SQL, group, [e.event_id for e in events])}
            if new:
                fresh = _first_of_each(events, new)
                await _execute(conn, UPSERT_SQL, _parameters(rows_for_batch(fresh)))  # type: ignore[arg-type]  # as above
        return list(new)

    async def after_commit(self, events: Sequence[Event]) -> None:
        """Count each outcome event the group saw for the first time.

        ``fleet_scans_total{outcome}``: ``completed``, ``failed``, or ``replay`` for either
        outcome of a replayed scan. TTE, SLO breaches and phase durations only observe
        completed scans that are not replays: they are what the SLOs are about.
        """
        outcomes: Counter[str] = Counter()
        breaches: Counter[str] = Counter()
        ttes: list[float] = []
        phases: dict[str, list[float]] = {}
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
