"""What a scan's row converges to, whatever the order events arrive in (pure, no I/O).

A row has three parts, each taken from one event chosen by a total order, so merging
is associative and commutative: merging a batch here, then merging the result with the
stored row in SQL (``worker.py``), gives the row a single merge of every event would.

- Outcome (status, timings, counts, hashes, errors, phases): the winning
  ``scan.completed``/``scan.failed``. Completed wins over failed (a scan that produced
  evidence did complete, e.g. a retry after a failed attempt); between two of the same
  kind the later finishedAt/failedAt wins, then the greater eventId.
- Submission (submittedAt): the earliest ``scan.submitted``, then the smaller eventId.
- Artifact (tenant, digest, type, surface, replay flag): from the winning outcome once
  there is one, else from the winning submission. So a late ``scan.submitted`` changes
  nothing an outcome set, and a scan never goes back to ``submitted``.
"""

from __future__ import annotations

import hashlib
import operator
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Final, Literal

import msgspec

from contracts.scanner import (
    ArtifactType,
    Phase,
    ScanCompleted,
    ScanFailed,
    ScannerEvent,
    ScanSubmitted,
)
from workers.scan_metrics.tte import phase_sums

Outcome = ScanCompleted | ScanFailed
Status = Literal["submitted", "completed", "failed"]

METRICS_NAMESPACE: Final = uuid.UUID("6d1c5f3e-1f0a-5b7e-9c2d-7a4e8b0c3f51")
"""uuid5 namespace of ``metrics_id``: the id follows from ``scan_id`` alone."""


_NAMESPACE_BYTES: Final = METRICS_NAMESPACE.bytes
_VERSION_MASK: Final = ~(0xF000 << 64) & ~(0xC000 << 48)
_VERSION_5: Final = (5 << 76) | (0x8000 << 48)


def metrics_id_for(scan_id: uuid.UUID) -> uuid.UUID:
    """``uuid.uuid5(METRICS_NAMESPACE, str(scan_id))``, computed without the generic
    constructor's checks: it runs for every event."""
    digest = hashlib.sha1(_NAMESPACE_BYTES + str(scan_id).encode(), usedforsecurity=False)
    value = int.from_bytes(digest.digest()[:16]) & _VERSION_MASK | _VERSION_5
    return uuid.UUID(int=value)


def outcome_key(event: Outcome) -> tuple[bool, datetime, uuid.UUID]:
    """Greater wins: completed over failed, then the later outcome time, then the eventId."""
    if type(event) is ScanCompleted:
        return (True, event.finished_at, event.event_id)
    assert isinstance(event, ScanFailed)
    return (False, event.failed_at, event.event_id)


def submission_key(event: ScanSubmitted) -> tuple[datetime, uuid.UUID]:
    """Smaller wins: the earliest submission, then the smaller eventId."""
    return (event.submitted_at, event.event_id)


class ScanRow(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """One scan's merged row as sent to PostgreSQL (JSON, camelCase keys; a missing key
    is NULL to ``json_to_recordset``, so unset fields are left out)."""

    metrics_id: uuid.UUID
    scan_id: uuid.UUID
    status: Status
    # artifact
    tenant_id: uuid.UUID
    surface_id: uuid.UUID | None
    artifact_digest: str
    artifact_type: ArtifactType
    is_replay: bool
    # submission
    submitted_at: datetime | None = None
    submitted_event_id: uuid.UUID | None = None
    # outcome
    outcome_event_id: uuid.UUID | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    failed_at: datetime | None = None
    failed_phase: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    retryable: bool | None = None
    package_count: int | None = None
    finding_count: int | None = None
    vex_decision_count: int | None = None
    replay_manifest_hash: str | None = None
    findings_sha256: str | None = None
    vex_bundle_sha256: str | None = None
    proof_bundle_sha256: str | None = None
    sbom_sha256: str | None = None
    policy_digest: str | None = None
    feed_snapshot_id: str | None = None
    scanner_version: str | None = None
    scanner_image_digest: str | None = None
    t_ingest_ms: int | None = None
    t_analyze_ms: int | None = None
    t_reachability_ms: int | None = None
    t_vex_ms: int | None = None
    t_sign_ms: int | None = None
    t_publish_ms: int | None = None
    phases: list[Phase] = msgspec.field(default_factory=list)


_as_int: Final = operator.attrgetter("int")


def rows_for_batch(events: Iterable[ScannerEvent]) -> list[ScanRow]:
    """One merged row per scan, sorted by scan id (so concurrent batches lock rows in the
    same order and never deadlock on each other)."""
    submissions: dict[uuid.UUID, ScanSubmitted] = {}
    outcomes: dict[uuid.UUID, Outcome] = {}
    for event in events:
        if type(event) is ScanSubmitted:
            best_sub = submissions.get(event.scan_id)
            if best_sub is None or submission_key(event) < submission_key(best_sub):
                submissions[event.scan_id] = event
        else:
            assert isinstance(event, (ScanCompleted, ScanFailed))
            best_out = outcomes.get(event.scan_id)
            if best_out is None or outcome_key(event) > outcome_key(best_out):
                outcomes[event.scan_id] = event
    return [
        merged_row(scan_id, submissions.get(scan_id), outcomes.get(scan_id))
        # UUIDs order by their integer value; sorting by it skips UUID.__lt__ in Python.
        for scan_id in sorted(submissions.keys() | outcomes.keys(), key=_as_int)
    ]


def merged_row(
    scan_id: uuid.UUID, submitted: ScanSubmitted | None, outcome: Outcome | None
) -> ScanRow:
    """The row for one scan from its winning submission and winning outcome."""
    if outcome is None:
        assert submitted is not None
        return ScanRow(
            metrics_id=metrics_id_for(scan_id),
            scan_id=scan_id,
            status="submitted",
            tenant_id=submitted.tenant_id,
            surface_id=submitted.surface_id,
            artifact_digest=submitted.artifact_digest,
            artifact_type=submitted.artifact_type,
            is_replay=submitted.is_replay,
            submitted_at=submitted.submitted_at,
            submitted_event_id=submitted.event_id,
        )
    sums = phase_sums(outcome.phases)
    row = ScanRow(
        metrics_id=metrics_id_for(scan_id),
        scan_id=scan_id,
        status="completed" if type(outcome) is ScanCompleted else "failed",
        tenant_id=outcome.tenant_id,
        surface_id=outcome.surface_id,
        artifact_digest=outcome.artifact_digest,
        artifact_type=outcome.artifact_type,
        is_replay=outcome.is_replay,
        submitted_at=None if submitted is None else submitted.submitted_at,
        submitted_event_id=None if submitted is None else submitted.event_id,
        outcome_event_id=outcome.event_id,
        started_at=outcome.started_at,
        package_count=outcome.package_count,
        finding_count=outcome.finding_count,
        vex_decision_count=outcome.vex_decision_count,
        replay_manifest_hash=outcome.replay_manifest_hash,
        findings_sha256=outcome.findings_sha256,
        vex_bundle_sha256=outcome.vex_bundle_sha256,
        proof_bundle_sha256=outcome.proof_bundle_sha256,
        sbom_sha256=outcome.sbom_sha256,
        policy_digest=outcome.policy_digest,
        feed_snapshot_id=outcome.feed_snapshot_id,
        scanner_version=outcome.scanner_version,
        scanner_image_digest=outcome.scanner_image_digest,
        t_ingest_ms=sums.get("ingest"),
        t_analyze_ms=sums.get("analyze"),
        t_reachability_ms=sums.get("reachability"),
        t_vex_ms=sums.get("vex"),
        t_sign_ms=sums.get("sign"),
        t_publish_ms=sums.get("publish"),
        phases=outcome.phases,
    )
    if type(outcome) is ScanCompleted:
        row.finished_at = outcome.finished_at
    else:
        assert isinstance(outcome, ScanFailed)
        row.failed_at = outcome.failed_at
        row.failed_phase = outcome.failed_phase
        row.error_code = outcome.error_code
        row.error_message = outcome.error_message
        row.retryable = outcome.retryable
    return row
