"""Time-to-Evidence maths and the semantic checks of scanner events (pure, no I/O).

Durations are whole milliseconds rounded down, exactly like the generated columns
``total_duration_ms`` and ``duration_ms`` in ``schema/0003_scan_metrics.sql``, so what
Python computes and what PostgreSQL stores always agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Final

from contracts.base import INT32_MAX
from contracts.scanner import (
    Phase,
    PhaseName,
    ScanCompleted,
    ScanFailed,
    ScannerEvent,
    ScanSubmitted,
)

TRACKED_PHASES: Final[tuple[PhaseName, ...]] = (
    "ingest",
    "analyze",
    "reachability",
    "vex",
    "sign",
    "publish",
)
"""Phases with a ``t_<phase>_ms`` column; ``other`` is kept in execution_phases only."""

ALL_PHASES: Final[tuple[PhaseName, ...]] = (*TRACKED_PHASES, "other")

SLO_P50_MS: Final = 120_000
"""TTE p50 target: below 120 s (docs/workers.md, scan-metrics)."""
SLO_P95_MS: Final = 300_000
"""TTE p95 target: below 300 s (docs/workers.md, scan-metrics)."""

MAX_INT: Final = INT32_MAX
"""Largest value of a PostgreSQL INT column: longer durations or larger counts would not
fit the row, so they are refused before anything is written."""

_MS: Final = timedelta(milliseconds=1)


def duration_ms(started_at: datetime, finished_at: datetime) -> int:
    """Whole milliseconds from ``started_at`` to ``finished_at``, rounded down."""
    return (finished_at - started_at) // _MS


def tte_ms(event: ScanCompleted) -> int:
    """Time-to-Evidence of a completed scan: startedAt to finishedAt."""
    return duration_ms(event.started_at, event.finished_at)


def phase_sums(phases: Iterable[Phase]) -> dict[PhaseName, int]:
    """Milliseconds per tracked phase name, summed over every phase of that name.

    A phase that did not run is absent (its column stays NULL), which is not the same
    as a phase that took 0 ms.
    """
    sums: dict[PhaseName, int] = {}
    for phase in phases:
        name = phase.name
        if name != "other":
            sums[name] = sums.get(name, 0) + duration_ms(phase.started_at, phase.finished_at)
    return sums


def slo_breaches(tte: int) -> tuple[str, ...]:
    """SLO labels a single completed scan exceeds: ``p50`` above 120 s, ``p95`` above 300 s.

    A scan of exactly 120 000 ms is within the limit, like the ``le="120"`` bucket.
    """
    if tte > SLO_P95_MS:
        return ("p50", "p95")
    if tte > SLO_P50_MS:
        return ("p50",)
    return ()


# ---------------------------------------------------------------------------- validation


def validate(event: ScannerEvent) -> str | None:
    """Why ``event`` can never be recorded, or None when it can.

    The contract already checks shape, enums (unknown phase names) and non-negative
    numbers; this adds what only makes sense across fields: no negative duration (scan
    or phase), unique phase orders, values that fit the INT columns, and no NUL
    characters (PostgreSQL text cannot hold them). It runs for every event, so the
    messages are only built for events that fail.
    """
    if type(event) is ScanSubmitted:
        return _text_problem(event, _SUBMITTED_TEXT)
    assert isinstance(event, (ScanCompleted, ScanFailed))
    if type(event) is ScanCompleted:
        end, end_name, texts = event.finished_at, "finishedAt", _COMPLETED_TEXT
    else:
        assert isinstance(event, ScanFailed)
        end, end_name, texts = event.failed_at, "failedAt", _FAILED_TEXT
    total = (end - event.started_at) // _MS
    if total < 0:
        return (
            f"{end_name} {end.isoformat()} is before startedAt {event.started_at.isoformat()}: "
            f"negative duration ({total} ms)"
        )
    if total > MAX_INT:
        return f"scan duration of {total} ms is implausible (more than {MAX_INT} ms)"
    # Counts and phase orders carry the INTEGER range in the contract itself.
    return _phases_problem(event.phases) or _text_problem(event, texts)


def _phases_problem(phases: list[Phase]) -> str | None:
    seen: set[int] = set()
    sums: dict[str, int] = {}
    for phase in phases:
        order = phase.order
        if order in seen:
            return f"phase order {order} appears more than once"
        seen.add(order)
        took = (phase.finished_at - phase.started_at) // _MS
        if took < 0:
            return (
                f"{_label(phase)} finishes before it starts "
                f"({phase.finished_at.isoformat()} < {phase.started_at.isoformat()}): "
                f"negative duration ({took} ms)"
            )
        total = sums[phase.name] = sums.get(phase.name, 0) + took
        if total > MAX_INT:
            return f"{_label(phase)}: {total} ms is implausible (more than {MAX_INT} ms)"
        if (phase.error_code is not None and "\x00" in phase.error_code) or (
            phase.error_message is not None and "\x00" in phase.error_message
        ):
            return f"{_label(phase)} error contains a NUL character"
        if phase.metrics and _contains_nul(phase.metrics):
            return f"{_label(phase)} metrics contain a NUL character"
    return None


def _label(phase: Phase) -> str:
    return f"phase {phase.name!r} (order {phase.order})"


# (attribute, wire name) of the text fields each event type stores.
_SUBMITTED_TEXT: Final[tuple[tuple[str, str], ...]] = (("artifact_digest", "artifactDigest"),)
_COMPLETED_TEXT: Final[tuple[tuple[str, str], ...]] = (
    *_SUBMITTED_TEXT,
    ("replay_manifest_hash", "replayManifestHash"),
    ("findings_sha256", "findingsSha256"),
    ("vex_bundle_sha256", "vexBundleSha256"),
    ("proof_bundle_sha256", "proofBundleSha256"),
    ("sbom_sha256", "sbomSha256"),
    ("policy_digest", "policyDigest"),
    ("feed_snapshot_id", "feedSnapshotId"),
    ("scanner_version", "scannerVersion"),
    ("scanner_image_digest", "scannerImageDigest"),
)
_FAILED_TEXT: Final[tuple[tuple[str, str], ...]] = (
    *_COMPLETED_TEXT,
    ("error_code", "errorCode"),
    ("error_message", "errorMessage"),
)


def _text_problem(event: ScannerEvent, fields: tuple[tuple[str, str], ...]) -> str | None:
    for attribute, name in fields:
        value = getattr(event, attribute)
        if value is not None and "\x00" in value:
            return f"{name} contains a NUL character"
    return None


def _contains_nul(metrics: dict[str, Any]) -> bool:
    # Flat maps of names to numbers are the common case: no stack for those.
    nested: list[Any] = []
    for key, value in metrics.items():
        if "\x00" in key:
            return True
        kind = type(value)
        if kind is str:
            if "\x00" in value:
                return True
        elif kind is dict or kind is list:
            nested.append(value)
    while nested:
        item = nested.pop()
        if type(item) is dict:
            if any("\x00" in k for k in item):
                return True
            item = item.values()
        for value in item:
            kind = type(value)
            if kind is str:
                if "\x00" in value:
                    return True
            elif kind is dict or kind is list:
                nested.append(value)
    return False
