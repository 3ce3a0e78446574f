"""TTE maths, event checks and the merge rules of scan-metrics: pure functions, no I/O."""

from __future__ import annotations

import itertools
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import msgspec
import pytest

from contracts import DecodeError, encode_entry
from contracts.scanner import Phase, ScanCompleted, ScanFailed, ScannerEvent, ScanSubmitted
from contracts.wire import decode_data
from devkit import workload
from workers.scan_metrics.report import parse_window
from workers.scan_metrics.rows import metrics_id_for, rows_for_batch
from workers.scan_metrics.tte import (
    MAX_INT,
    duration_ms,
    phase_sums,
    slo_breaches,
    tte_ms,
    validate,
)

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def phase(name: str, order: int, start_ms: float, end_ms: float, **kw: object) -> Phase:
    return Phase(name=name, order=order, started_at=at(start_ms), finished_at=at(end_ms), **kw)  # type: ignore[arg-type]


def scan() -> tuple[ScanSubmitted, ScanCompleted]:
    submitted, completed = workload.scan_lifecycles(1, seed=2, failure_rate=0, replay_rate=0)[0]
    assert isinstance(completed, ScanCompleted)
    return submitted, completed


# ------------------------------------------------------------------ durations


def test_durations_are_whole_milliseconds_rounded_down() -> None:
    assert duration_ms(at(0), at(1.999)) == 1
    assert duration_ms(at(0.001), at(120_000)) == 119_999
    assert duration_ms(at(0), at(0)) == 0
    assert duration_ms(at(5), at(4.5)) == -1  # floor, so negative never looks like zero
    across_days = datetime(2026, 11, 2, 0, 0, 0, 1, tzinfo=UTC)
    assert duration_ms(datetime(2026, 11, 1, 23, 59, 59, tzinfo=UTC), across_days) == 1000


def test_offsets_do_not_change_a_duration() -> None:
    from datetime import timezone

    plus2 = timezone(timedelta(hours=2))
    assert duration_ms(T0, T0.astimezone(plus2) + timedelta(seconds=3)) == 3000


def test_tte_is_started_to_finished() -> None:
    _, completed = scan()
    assert tte_ms(completed) == (completed.finished_at - completed.started_at) // timedelta(
        milliseconds=1
    )


def test_phase_sums_add_repeated_names_and_skip_other() -> None:
    phases = [
        phase("ingest", 1, 0, 1000.5),
        phase("analyze", 2, 1000, 31_000),
        phase("analyze", 3, 31_000, 32_500),
        phase("other", 4, 32_500, 40_000),
        phase("sign", 5, 40_000, 40_000),
    ]
    assert phase_sums(phases) == {"ingest": 1000, "analyze": 31_500, "sign": 0}


@pytest.mark.parametrize(
    ("tte", "expected"),
    [
        (0, ()),
        (120_000, ()),
        (120_001, ("p50",)),
        (300_000, ("p50",)),
        (300_001, ("p50", "p95")),
    ],
)
def test_slo_breaches_are_strictly_above_the_limits(tte: int, expected: tuple[str, ...]) -> None:
    assert slo_breaches(tte) == expected


# ------------------------------------------------------------------ validation


def test_workload_events_are_valid() -> None:
    for lifecycle in workload.scan_lifecycles(300, seed=4, failure_rate=0.2, replay_rate=0.2):
        for event in lifecycle:
            assert validate(event) is None


def _completed(**changes: object) -> ScanCompleted:
    return msgspec.structs.replace(scan()[1], **changes)


def test_finished_before_started_is_rejected() -> None:
    event = _completed(finished_at=scan()[1].started_at - timedelta(milliseconds=1))
    problem = validate(event)
    assert problem is not None and "is before startedAt" in problem and "(-1 ms)" in problem


def test_negative_failed_duration_is_rejected() -> None:
    _, completed = scan()
    failed = ScanFailed(
        event_id=uuid.uuid4(),
        version=1,
        tenant_id=completed.tenant_id,
        occurred_at=completed.started_at,
        source="scanner",
        scan_id=completed.scan_id,
        artifact_digest="sha256:x",
        artifact_type="oci_image",
        started_at=completed.started_at,
        failed_at=completed.started_at - timedelta(seconds=2),
        error_code="X",
    )
    problem = validate(failed)
    assert problem is not None and problem.startswith("failedAt") and "-2000 ms" in problem


def test_phase_finishing_before_it_starts_is_rejected() -> None:
    phases = [phase("ingest", 1, 0, 10), phase("analyze", 2, 10, 9.5)]
    problem = validate(_completed(phases=phases))
    assert problem is not None
    assert "phase 'analyze' (order 2) finishes before it starts" in problem


def test_duplicate_phase_order_is_rejected_but_repeated_names_are_fine() -> None:
    assert validate(_completed(phases=[phase("ingest", 1, 0, 1), phase("vex", 1, 1, 2)])) == (
        "phase order 1 appears more than once"
    )
    assert validate(_completed(phases=[phase("vex", 1, 0, 1), phase("vex", 2, 1, 2)])) is None


def test_values_that_do_not_fit_an_int_column_are_rejected() -> None:
    _, completed = scan()
    too_long = _completed(finished_at=completed.started_at + timedelta(days=25))
    assert "implausible" in (validate(too_long) or "")
    assert validate(_completed(package_count=MAX_INT)) is None


@pytest.mark.parametrize(
    ("path", "value"),
    [("packageCount", MAX_INT + 1), ("findingCount", 2**40), ("phases[0].order", 2**31)],
)
def test_counts_beyond_an_int_column_are_rejected_at_decode(path: str, value: int) -> None:
    data = json.loads(encode_entry(scan()[1])["data"])
    if path.startswith("phases"):
        data["phases"][0]["order"] = value
    else:
        data[path] = value
    with pytest.raises(DecodeError) as info:
        decode_data(ScanCompleted, json.dumps(data).encode())
    assert info.value.reason == "invalid_event"
    assert f"$.{path}" in str(info.value)


def test_nul_characters_are_rejected_anywhere_text_is_stored() -> None:
    assert "NUL" in (validate(_completed(sbom_sha256="ab\x00")) or "")
    nested = phase("sign", 1, 0, 1, metrics={"signer": ["ok", {"k": "\x00"}]})
    assert "metrics contain a NUL" in (validate(_completed(phases=[nested])) or "")
    submitted = msgspec.structs.replace(scan()[0], artifact_digest="sha256:\x00")
    assert "artifactDigest" in (validate(submitted) or "")


def test_unknown_phase_name_fails_to_decode_with_a_reason() -> None:
    data = json.loads(encode_entry(scan()[1])["data"])
    data["phases"][0]["name"] = "compile"
    with pytest.raises(DecodeError) as info:
        decode_data(ScanCompleted, json.dumps(data).encode())
    assert info.value.reason == "invalid_event"
    assert "compile" in str(info.value) and "$.phases[0].name" in str(info.value)


# ------------------------------------------------------------------ merge rules


class Variants(NamedTuple):
    """One scan's events that disagree: the later submission loses to the earlier one,
    the (later) failure loses to either completion, equal completions go by eventId."""

    submitted: ScanSubmitted
    earlier_submission: ScanSubmitted
    failed: ScanFailed
    completed: ScanCompleted
    completed_again: ScanCompleted


def _variants() -> Variants:
    submitted, completed = scan()
    return Variants(
        submitted,
        msgspec.structs.replace(
            submitted,
            event_id=uuid.uuid4(),
            submitted_at=submitted.submitted_at - timedelta(seconds=1),
            artifact_digest="sha256:first",
        ),
        ScanFailed(
            event_id=uuid.uuid4(),
            version=1,
            tenant_id=completed.tenant_id,
            occurred_at=completed.finished_at,
            source="scanner",
            scan_id=completed.scan_id,
            artifact_digest="sha256:attempt",
            artifact_type="tarball",
            started_at=completed.started_at,
            failed_at=completed.finished_at + timedelta(hours=1),  # later, still loses
            error_code="X",
            phases=completed.phases[:1],
        ),
        completed,
        msgspec.structs.replace(completed, event_id=uuid.uuid4(), package_count=1),
    )


def test_any_order_gives_the_same_row() -> None:
    v = _variants()
    events: list[ScannerEvent] = list(v)
    rows = {msgspec.json.encode(rows_for_batch(order)) for order in itertools.permutations(events)}
    assert len(rows) == 1
    (row,) = rows_for_batch(v)
    assert row.status == "completed"
    # equal finishedAt: the greater eventId decides between the two completions
    assert row.outcome_event_id == max(v.completed.event_id, v.completed_again.event_id)
    assert row.submitted_at == v.earlier_submission.submitted_at
    assert row.artifact_digest == v.completed.artifact_digest  # from the outcome
    assert row.error_code is None and row.failed_at is None


def test_completed_wins_over_failed_and_failed_over_submitted() -> None:
    submitted, _, failed, completed, _ = _variants()
    assert rows_for_batch([submitted])[0].status == "submitted"
    assert rows_for_batch([failed, submitted])[0].status == "failed"
    (row,) = rows_for_batch([completed, failed])
    assert row.status == "completed" and row.phases == completed.phases
    assert row.submitted_at is None  # nothing invented for a missing submission


def test_failed_row_keeps_error_and_the_phases_that_ran() -> None:
    failed = _variants().failed
    (row,) = rows_for_batch([failed])
    assert (row.error_code, row.failed_at, row.finished_at) == ("X", failed.failed_at, None)
    assert row.phases == failed.phases
    assert row.t_ingest_ms == duration_ms(failed.phases[0].started_at, failed.phases[0].finished_at)


def test_rows_are_sorted_by_scan_id_and_ids_are_deterministic() -> None:
    events = [e for s in workload.scan_lifecycles(50, seed=8) for e in s]
    random.Random(1).shuffle(events)
    rows = rows_for_batch(events)
    assert [r.scan_id for r in rows] == sorted({e.scan_id for e in events})
    assert all(r.metrics_id == metrics_id_for(r.scan_id) for r in rows)
    assert metrics_id_for(rows[0].scan_id) == metrics_id_for(uuid.UUID(str(rows[0].scan_id)))
    assert len({r.metrics_id for r in rows}) == 50


# ------------------------------------------------------------------ CLI window


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("24h", timedelta(hours=24)),
        ("90m", timedelta(minutes=90)),
        ("2w", timedelta(weeks=2)),
        ("1d12h", timedelta(days=1, hours=12)),
        (" 30S ", timedelta(seconds=30)),
    ],
)
def test_windows_parse(text: str, expected: timedelta) -> None:
    assert parse_window(text) == expected


@pytest.mark.parametrize(
    "text", ["", "7", "d", "7x", "-7d", "7d ago", "1.5h", "0h", "99999999999w"]
)
def test_bad_windows_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_window(text)
