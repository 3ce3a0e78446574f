"""scan-metrics end to end: every test runs on fakeredis and on real Valkey, with the
worker writing into the real PostgreSQL schema. Expected values are computed here from
the events themselves, independently of the worker's own TTE code."""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import asyncpg
import msgspec
import pytest

from contracts import Event, encode_entry
from contracts.scanner import Phase, ScanCompleted, ScanFailed, ScanSubmitted
from devkit import workload
from tests.helpers import apply_directly, metric, poll, resources, running
from workers import streams
from workers.db import Failure, classify
from workers.publishing import publish
from workers.scan_metrics import ScanMetricsWorker

STREAM = "scanner:events"
GROUP = "scan-metrics"
PHASES = ("ingest", "analyze", "reachability", "vex", "sign", "publish")


# ------------------------------------------------------------------ independent maths


def ms(start: datetime, end: datetime) -> int:
    """Whole milliseconds, rounded down, from integer microseconds."""
    delta = end - start
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return micros // 1000


def interpolate(values: Sequence[float], p: float) -> float:
    """Percentile by linear interpolation between closest ranks (R-7)."""
    xs = sorted(values)
    pos = p * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def percent(part: int | None, whole: int) -> Decimal | None:
    if part is None or whole == 0:
        return None
    return (Decimal(part) * 100 / Decimal(whole)).quantize(Decimal("0.01"), ROUND_HALF_UP)


def hour_of(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


# ------------------------------------------------------------------ stream helpers


async def drained(redis: Any) -> bool:
    for st in await streams.group_statuses(redis, STREAM):
        if st.group == GROUP and not st.pending and not (st.lag or 0):
            return True
    return False


def outcome_counts() -> dict[str, float]:
    values = {o: metric("fleet_scans_total", outcome=o) for o in ("completed", "failed", "replay")}
    values["tte_count"] = metric("fleet_scan_tte_seconds_count")
    values["tte_sum"] = metric("fleet_scan_tte_seconds_sum")
    values["le_120"] = metric("fleet_scan_tte_seconds_bucket", le="120.0")
    values["le_300"] = metric("fleet_scan_tte_seconds_bucket", le="300.0")
    for slo in ("p50", "p95"):
        values[f"breach_{slo}"] = metric("fleet_scan_slo_breaches_total", slo=slo)
    for phase in PHASES:
        values[f"phase_{phase}"] = metric("fleet_scan_phase_duration_seconds_count", phase=phase)
    return values


def duplicate_count() -> float:
    return sum(
        metric("fleet_events_total", stream=STREAM, group=GROUP, type=t, outcome="duplicate")
        for t in ("scan.submitted", "scan.completed", "scan.failed")
    )


def with_extra_phases(
    event: ScanCompleted | ScanFailed, rng: random.Random
) -> ScanCompleted | ScanFailed:
    """A second ``analyze`` pass and an ``other`` phase: sums add up repeated names, and
    ``other`` has no t_<phase>_ms column."""
    if not isinstance(event, ScanCompleted) or rng.random() > 0.1:
        return event
    last = event.phases[-1].finished_at
    extra = [
        Phase(
            name="analyze",
            order=100,
            started_at=last,
            finished_at=last + timedelta(milliseconds=rng.randrange(1, 5000)),
        ),
        Phase(
            name="other",
            order=101,
            started_at=last,
            finished_at=last + timedelta(milliseconds=rng.randrange(1, 5000)),
        ),
    ]
    return msgspec.structs.replace(event, phases=[*event.phases, *extra])


# ------------------------------------------------------------------ the big run


async def test_5000_shuffled_duplicated_scans_match_independent_figures(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    lifecycles = workload.scan_lifecycles(5000, seed=20261101, failure_rate=0.06)
    rng = random.Random(5)
    pairs = [(s, with_extra_phases(o, rng)) for s, o in lifecycles]
    events: list[Event] = [e for pair in pairs for e in pair]
    entries = events + rng.sample(events, len(events) // 5)  # 20 % published twice
    rng.shuffle(entries)

    before = outcome_counts()
    duplicates_before = duplicate_count()
    worker = ScanMetricsWorker(resources(settings_for(batch_size=500), redis, db))
    async with running(worker):
        await publish(redis, STREAM, entries)
        await poll(lambda: drained(redis), timeout=90, what="every entry handled")
    after = outcome_counts()
    assert await redis.xlen(f"{STREAM}:dlq") == 0

    outcomes = {o.scan_id: o for _, o in pairs}
    submissions = {s.scan_id: s for s, _ in pairs}
    completed = [e for e in outcomes.values() if isinstance(e, ScanCompleted)]
    failed = [e for e in outcomes.values() if isinstance(e, ScanFailed)]
    assert len(completed) > 4000 and len(failed) > 200  # the workload has both

    # -- scan_metrics rows
    rows = {r["scan_id"]: r for r in await db.fetch("SELECT * FROM scanner.scan_metrics")}
    assert len(rows) == 5000
    for scan_id, event in outcomes.items():
        row = rows[scan_id]
        sums: dict[str, int] = {}
        for phase in event.phases:
            sums[phase.name] = sums.get(phase.name, 0) + ms(phase.started_at, phase.finished_at)
        assert row["tenant_id"] == event.tenant_id
        assert row["artifact_digest"] == event.artifact_digest
        assert row["is_replay"] is event.is_replay
        assert row["started_at"] == event.started_at
        assert row["submitted_at"] == submissions[scan_id].submitted_at
        for name in PHASES:
            assert row[f"t_{name}_ms"] == sums.get(name), (scan_id, name)
        if isinstance(event, ScanCompleted):
            assert row["status"] == "completed"
            assert row["finished_at"] == event.finished_at
            assert row["total_duration_ms"] == ms(event.started_at, event.finished_at)
            assert (row["package_count"], row["sbom_sha256"]) == (
                event.package_count,
                event.sbom_sha256,
            )
            assert row["error_code"] is None
        else:
            assert row["status"] == "failed"
            assert row["finished_at"] is None and row["total_duration_ms"] is None
            assert row["failed_at"] == event.failed_at
            assert (row["error_code"], row["error_message"], row["failed_phase"]) == (
                event.error_code,
                event.error_message,
                event.failed_phase,
            )

    # -- execution_phases: one row per phase that ran, failed phases with their error
    phase_rows = await db.fetch(
        "SELECT m.scan_id, e.phase_order, e.phase_name, e.duration_ms, e.success, "
        "e.error_code, e.error_message, e.phase_metrics "
        "FROM scanner.execution_phases e JOIN scanner.scan_metrics m USING (metrics_id)"
    )
    assert len(phase_rows) == sum(len(o.phases) for o in outcomes.values())
    expected_phases = {
        (e.scan_id, p.order): (p.name, ms(p.started_at, p.finished_at), p.success, p.error_code)
        for e in outcomes.values()
        for p in e.phases
    }
    for r in phase_rows:
        assert (r["phase_name"], r["duration_ms"], r["success"], r["error_code"]) == (
            expected_phases[(r["scan_id"], r["phase_order"])]
        )

    # -- scanner.scan_tte: completed scans only, TTE and each phase's percent
    tte_rows = {r["scan_id"]: r for r in await db.fetch("SELECT * FROM scanner.scan_tte")}
    assert set(tte_rows) == {e.scan_id for e in completed}
    for event in completed:
        r = tte_rows[event.scan_id]
        tte = ms(event.started_at, event.finished_at)
        assert r["tte_ms"] == tte
        assert r["tte_seconds"] == Decimal(tte) / 1000
        for name in PHASES:
            spent = [ms(p.started_at, p.finished_at) for p in event.phases if p.name == name]
            assert r[f"{name}_percent"] == percent(sum(spent) if spent else None, tte)

    # -- scanner.tte_stats: hourly per tenant, completed non-replay scans only
    buckets: dict[tuple[uuid.UUID, datetime], list[int]] = defaultdict(list)
    for event in completed:
        if not event.is_replay:
            buckets[(event.tenant_id, hour_of(event.started_at))].append(
                ms(event.started_at, event.finished_at)
            )
    stats = {
        (r["tenant_id"], r["hour_bucket"]): r
        for r in await db.fetch("SELECT * FROM scanner.tte_stats")
    }
    assert set(stats) == set(buckets)
    for key, ttes in buckets.items():
        r = stats[key]
        assert r["scan_count"] == len(ttes)
        assert abs(float(r["tte_avg_ms"]) - sum(ttes) / len(ttes)) <= 0.005 + 1e-9
        assert abs(r["tte_p50_ms"] - interpolate(ttes, 0.5)) < 1
        assert abs(r["tte_p95_ms"] - interpolate(ttes, 0.95)) < 1
        assert r["slo_p50_compliance_percent"] == percent(
            sum(t <= 120_000 for t in ttes), len(ttes)
        )
        assert r["slo_p95_compliance_percent"] == percent(
            sum(t <= 300_000 for t in ttes), len(ttes)
        )

    # -- scanner.tte_percentile per tenant, whole range and from the second hour on
    since = workload.BASE_TIME + timedelta(hours=1)
    for tenant in workload.TENANTS:
        mine = [e for e in completed if e.tenant_id == tenant and not e.is_replay]
        for cutoff in (None, since):
            ttes = [
                ms(e.started_at, e.finished_at)
                for e in mine
                if cutoff is None or e.started_at >= cutoff
            ]
            for p in (0.5, 0.95, 0.99):
                got = await db.fetchval(
                    "SELECT scanner.tte_percentile($1, $2, $3)", tenant, p, cutoff
                )
                assert abs(got - interpolate(ttes, p)) < 1, (tenant, p, cutoff)
    overall = [ms(e.started_at, e.finished_at) for e in completed if not e.is_replay]
    cut = statistics.quantiles(overall, n=100, method="inclusive")
    assert abs(interpolate(overall, 0.95) - cut[94]) < 1e-6  # our helper is Python's method
    assert abs(await db.fetchval("SELECT scanner.tte_percentile(NULL, 0.95, NULL)") - cut[94]) < 1

    # -- Prometheus: each outcome event counted once, duplicates not at all
    fresh = [e for e in completed if not e.is_replay]
    ttes = [ms(e.started_at, e.finished_at) for e in fresh]
    delta = {k: after[k] - before[k] for k in after}
    assert delta["completed"] == len(fresh)
    assert delta["failed"] == sum(not e.is_replay for e in failed)
    assert delta["replay"] == sum(e.is_replay for e in outcomes.values())
    assert delta["tte_count"] == len(fresh)
    assert delta["tte_sum"] == pytest.approx(sum(ttes) / 1000)
    assert delta["le_120"] == sum(t <= 120_000 for t in ttes)
    assert delta["le_300"] == sum(t <= 300_000 for t in ttes)
    assert delta["breach_p50"] == sum(t > 120_000 for t in ttes) > 0
    assert delta["breach_p95"] == sum(t > 300_000 for t in ttes) > 0
    for name in PHASES:
        assert delta[f"phase_{name}"] == sum(1 for e in fresh for p in e.phases if p.name == name)
    assert duplicate_count() - duplicates_before == len(events) // 5


# ------------------------------------------------------------------ bad events


def _mutated(event: Event, change: Any) -> dict[str, bytes]:
    data = json.loads(encode_entry(event)["data"])
    change(data)
    return {"type": data["type"].encode(), "data": json.dumps(data).encode()}


def _iso(text: str, seconds: float) -> str:
    at = datetime.fromisoformat(text) + timedelta(seconds=seconds)
    return at.isoformat()


def _finish_before_start(d: dict[str, Any]) -> None:
    d["finishedAt"] = _iso(d["startedAt"], -1)


def _phase_finishes_before_it_starts(d: dict[str, Any]) -> None:
    d["phases"][2]["finishedAt"] = _iso(d["phases"][2]["startedAt"], -0.005)


def _unknown_phase_name(d: dict[str, Any]) -> None:
    d["phases"][1]["name"] = "compile"


def _negative_failed_duration(d: dict[str, Any]) -> None:
    d.update(
        type="scan.failed",
        failedAt=_iso(d["startedAt"], -30),
        errorCode="ANALYZER_TIMEOUT",
        failedPhase="analyze",
    )
    d.pop("finishedAt")


def _duplicate_phase_order(d: dict[str, Any]) -> None:
    d["phases"][3]["order"] = d["phases"][2]["order"]


def _nul_in_error(d: dict[str, Any]) -> None:
    d["phases"][0]["errorMessage"] = "bad\u0000byte"


BAD = [
    (_finish_before_start, "is before startedAt", "negative duration (-1000 ms)"),
    (_phase_finishes_before_it_starts, "phase 'reachability' (order 3)", "finishes before"),
    (_unknown_phase_name, "compile", "$.phases[1].name"),
    (_negative_failed_duration, "failedAt", "negative duration (-30000 ms)"),
    (_duplicate_phase_order, "phase order 3", "more than once"),
    (_nul_in_error, "phase 'ingest' (order 1) error", "NUL character"),
]


async def test_bad_events_are_dead_lettered_with_a_reason_and_write_nothing(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    scans = workload.scan_lifecycles(len(BAD) + 3, seed=77, failure_rate=0.0, replay_rate=0.0)
    worker = ScanMetricsWorker(resources(settings_for(), redis, db))
    async with running(worker):
        for (change, _, _), (submitted, completed) in zip(BAD, scans, strict=False):
            # The submission is valid and recorded; the bad outcome must add nothing to it.
            await publish(redis, STREAM, [submitted])
            await redis.xadd(STREAM, _mutated(completed, change))
        good = [e for scan in scans[len(BAD) :] for e in scan]
        await publish(redis, STREAM, good)
        await poll(
            lambda: _length_is(redis, f"{STREAM}:dlq", len(BAD)), what="bad entries dead-lettered"
        )
        await poll(lambda: drained(redis), what="stream drained")
    dead = await streams.dlq_entries(redis, STREAM, count=100)
    # Batches are handled concurrently: the original entry id restores publishing order.
    dead.sort(key=lambda d: tuple(int(p) for p in d.fields["dlq.source_id"].split(b"-")))
    assert [d.reason for d in dead] == ["invalid_event"] * len(BAD)
    for d, (_, *phrases) in zip(dead, BAD, strict=True):
        error = d.fields["dlq.error"].decode()
        assert all(p in error for p in phrases), error
        assert d.fields["dlq.group"] == GROUP.encode()
    bad_ids = [submitted.scan_id for submitted, _ in scans[: len(BAD)]]
    rows = await db.fetch(
        "SELECT status, started_at, finished_at, outcome_event_id, t_analyze_ms, "
        "(SELECT count(*) FROM scanner.execution_phases e WHERE e.metrics_id = m.metrics_id) "
        "AS phases FROM scanner.scan_metrics m WHERE scan_id = ANY($1::uuid[])",
        bad_ids,
    )
    assert [tuple(r.values()) for r in rows] == [("submitted", None, None, None, None, 0)] * len(
        BAD
    )
    assert await db.fetchval(
        "SELECT count(*) FROM scanner.scan_metrics WHERE status = 'completed'"
    ) == len(scans) - len(BAD)


async def _length_is(redis: Any, key: str, n: int) -> bool:
    return int(await redis.xlen(key)) == n


# ------------------------------------------------------------------ order and duplication


def _variants() -> tuple[list[Event], ScanCompleted, ScanSubmitted]:
    """One scan's events that disagree on purpose: two submissions, a failed attempt,
    and two completions (the later one must win), each with its own artifact fields."""
    (submitted, completed), *_ = workload.scan_lifecycles(
        1, seed=9, failure_rate=0.0, replay_rate=0.0
    )
    assert isinstance(completed, ScanCompleted)
    resubmitted = msgspec.structs.replace(
        submitted,
        event_id=uuid.uuid4(),
        submitted_at=submitted.submitted_at + timedelta(seconds=5),
        artifact_digest="sha256:resubmitted",
        surface_id=uuid.uuid4(),
    )
    failed = ScanFailed(
        event_id=uuid.uuid4(),
        version=1,
        tenant_id=completed.tenant_id,
        occurred_at=completed.started_at + timedelta(seconds=20),
        source="scanner-worker",
        scan_id=completed.scan_id,
        artifact_digest="sha256:attempt-1",
        artifact_type="tarball",
        started_at=completed.started_at,
        phases=completed.phases[:2],
        failed_at=completed.started_at + timedelta(seconds=20),
        failed_phase="analyze",
        error_code="ANALYZER_TIMEOUT",
        error_message="analyzer exceeded its time budget",
        retryable=True,
    )
    later = msgspec.structs.replace(
        completed,
        event_id=uuid.uuid4(),
        finished_at=completed.finished_at + timedelta(seconds=1),
        phases=completed.phases[:4],
        surface_id=None,
        package_count=completed.package_count + 1,
    )
    return [submitted, resubmitted, failed, completed, later], later, submitted


_COMPARED = (
    "status, tenant_id, surface_id, artifact_digest, artifact_type, is_replay, started_at, "
    "finished_at, total_duration_ms, failed_at, error_code, error_message, submitted_at, "
    "submitted_event_id, outcome_event_id, package_count, t_ingest_ms, t_analyze_ms, "
    "t_reachability_ms, t_vex_ms, t_sign_ms, t_publish_ms"
)


async def _state(db: asyncpg.Pool, scan_id: uuid.UUID) -> tuple[Any, ...]:
    row = await db.fetchrow(
        f"SELECT metrics_id, {_COMPARED} FROM scanner.scan_metrics WHERE scan_id = $1", scan_id
    )
    assert row is not None
    phases = await db.fetch(
        "SELECT phase_order, phase_name, duration_ms, success FROM scanner.execution_phases "
        "WHERE metrics_id = $1 ORDER BY phase_order",
        row["metrics_id"],
    )
    return (tuple(row.values())[1:], [tuple(p.values()) for p in phases])


async def test_every_order_and_batching_converges_to_the_same_row(
    db: asyncpg.Pool, settings_for: Any
) -> None:
    events, winner, first_submission = _variants()
    worker = ScanMetricsWorker(resources(settings_for(), None, db))
    rng = random.Random(3)
    states = set()
    for n, order in enumerate(itertools.permutations(events)):
        scan_id = uuid.UUID(int=n + 1)
        mine = [msgspec.structs.replace(e, scan_id=scan_id) for e in order]
        cuts = sorted(rng.sample(range(1, len(mine)), rng.randrange(0, len(mine))))
        for start, end in itertools.pairwise([0, *cuts, len(mine)]):
            await apply_directly(worker, db, mine[start:end])
        (row, phases) = await _state(db, scan_id)
        states.add((row, tuple(phases)))
    assert len(states) == 1, "different orders gave different rows"
    ((row, phases),) = states
    stored = dict(zip([c.strip() for c in _COMPARED.split(",")], row, strict=True))
    # The later completion wins over the earlier one and over the failed attempt; the
    # earliest submission is kept; artifact fields come from the winning outcome.
    assert stored["status"] == "completed"
    assert stored["outcome_event_id"] == winner.event_id
    assert stored["finished_at"] == winner.finished_at
    assert (stored["error_code"], stored["failed_at"]) == (None, None)
    assert stored["artifact_digest"] == winner.artifact_digest
    assert stored["surface_id"] is None
    assert stored["package_count"] == winner.package_count
    assert stored["submitted_at"] == first_submission.submitted_at
    assert stored["submitted_event_id"] == first_submission.event_id
    assert [p[0] for p in phases] == [p.order for p in winner.phases]
    assert (stored["t_vex_ms"], stored["t_sign_ms"], stored["t_publish_ms"]) == (
        sum(ms(p.started_at, p.finished_at) for p in winner.phases if p.name == "vex"),
        None,
        None,
    )
    expected_metrics_ids = {
        r["metrics_id"]: r["scan_id"]
        for r in await db.fetch("SELECT metrics_id, scan_id FROM scanner.scan_metrics")
    }
    assert all(
        m == uuid.uuid5(uuid.UUID("6d1c5f3e-1f0a-5b7e-9c2d-7a4e8b0c3f51"), str(s))
        for m, s in expected_metrics_ids.items()
    )


async def test_completed_before_submitted_and_late_events_converge_through_the_stream(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    (submitted, completed), (submitted_b, failed_b), *_ = workload.scan_lifecycles(
        2, seed=13, failure_rate=0.0, replay_rate=0.0
    )
    assert isinstance(completed, ScanCompleted) and isinstance(submitted, ScanSubmitted)
    late_submitted = msgspec.structs.replace(
        submitted, artifact_digest="sha256:other", is_replay=True, surface_id=uuid.uuid4()
    )
    late_failure = ScanFailed(
        event_id=uuid.uuid4(),
        version=1,
        tenant_id=completed.tenant_id,
        occurred_at=completed.finished_at,
        source="scanner-worker",
        scan_id=completed.scan_id,
        artifact_digest=completed.artifact_digest,
        artifact_type=completed.artifact_type,
        started_at=completed.started_at,
        failed_at=completed.finished_at + timedelta(minutes=5),
        error_code="LATE",
        phases=completed.phases[:1],
    )
    worker = ScanMetricsWorker(resources(settings_for(), redis, db))
    async with running(worker):
        await publish(redis, STREAM, [completed])
        await poll(lambda: _status_is(db, completed.scan_id, "completed"), what="completed row")
        reference = await _state(db, completed.scan_id)
        await publish(redis, STREAM, [late_submitted, late_failure, completed])
        await publish(redis, STREAM, [failed_b, submitted_b])
        await poll(lambda: drained(redis), what="drained")
    (row, phases) = await _state(db, completed.scan_id)
    stored = dict(zip([c.strip() for c in _COMPARED.split(",")], row, strict=True))
    # Only the submission time was added: nothing completion set has changed.
    assert stored["submitted_at"] == late_submitted.submitted_at
    assert (stored["artifact_digest"], stored["is_replay"], stored["surface_id"]) == (
        completed.artifact_digest,
        completed.is_replay,
        completed.surface_id,
    )
    assert (stored["status"], stored["error_code"]) == ("completed", None)
    assert phases == reference[1] and len(phases) == 6
    unchanged = [k for k in stored if k not in {"submitted_at", "submitted_event_id"}]
    before = dict(zip([c.strip() for c in _COMPARED.split(",")], reference[0], strict=True))
    assert {k: stored[k] for k in unchanged} == {k: before[k] for k in unchanged}
    assert await _status_is(db, submitted_b.scan_id, "completed")


async def _status_is(db: asyncpg.Pool, scan_id: uuid.UUID, status: str) -> bool:
    found = await db.fetchval("SELECT status FROM scanner.scan_metrics WHERE scan_id = $1", scan_id)
    return bool(found == status)


async def test_a_failed_scan_keeps_its_error_and_phases_and_stays_out_of_tte(
    redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    scans = workload.scan_lifecycles(40, seed=31, failure_rate=0.0, replay_rate=0.0)
    (_, template), *rest = scans
    assert isinstance(template, ScanCompleted)
    ran = template.phases[:3]
    broken = msgspec.structs.replace(
        ran[2], success=False, error_code="CALLGRAPH_TOO_LARGE", error_message="node limit"
    )
    failed = ScanFailed(
        event_id=uuid.uuid4(),
        version=1,
        tenant_id=template.tenant_id,
        occurred_at=broken.finished_at,
        source="scanner-worker",
        scan_id=template.scan_id,
        artifact_digest=template.artifact_digest,
        artifact_type=template.artifact_type,
        started_at=template.started_at,
        phases=[*ran[:2], broken],
        failed_at=broken.finished_at,
        failed_phase="reachability",
        error_code="CALLGRAPH_TOO_LARGE",
        error_message="call graph exceeds the node limit",
        retryable=False,
    )
    others = [e for scan in rest for e in scan]
    before = outcome_counts()
    worker = ScanMetricsWorker(resources(settings_for(), redis, db))
    async with running(worker):
        await publish(redis, STREAM, [scans[0][0], failed, *others])
        await poll(lambda: drained(redis), what="drained")
    row = await db.fetchrow(
        "SELECT status, error_code, error_message, failed_phase, failed_at, total_duration_ms, "
        "t_reachability_ms, t_vex_ms FROM scanner.scan_metrics WHERE scan_id = $1",
        failed.scan_id,
    )
    assert row is not None
    assert tuple(row.values()) == (
        "failed",
        "CALLGRAPH_TOO_LARGE",
        "call graph exceeds the node limit",
        "reachability",
        failed.failed_at,
        None,
        ms(broken.started_at, broken.finished_at),
        None,
    )
    phases = await db.fetch(
        "SELECT e.phase_name, e.success, e.error_code, e.error_message "
        "FROM scanner.execution_phases e JOIN scanner.scan_metrics m USING (metrics_id) "
        "WHERE m.scan_id = $1 ORDER BY e.phase_order",
        failed.scan_id,
    )
    assert [tuple(p.values()) for p in phases] == [
        ("ingest", True, None, None),
        ("analyze", True, None, None),
        ("reachability", False, "CALLGRAPH_TOO_LARGE", "node limit"),
    ]
    assert not await db.fetchval(
        "SELECT count(*) FROM scanner.scan_tte WHERE scan_id = $1", failed.scan_id
    )
    completed = [e for e in others if isinstance(e, ScanCompleted)]
    assert await db.fetchval("SELECT sum(scan_count) FROM scanner.tte_stats") == len(completed)
    ttes = [ms(e.started_at, e.finished_at) for e in completed]
    got = await db.fetchval("SELECT scanner.tte_percentile($1, 0.5, NULL)", None)
    assert abs(got - interpolate(ttes, 0.5)) < 1
    after = outcome_counts()
    assert (after["failed"] - before["failed"], after["completed"] - before["completed"]) == (
        1,
        len(completed),
    )


@pytest.mark.parametrize("replay_rate", [1.0])
async def test_replays_are_flagged_and_excluded_from_slo_figures(
    redis: Any, db: asyncpg.Pool, settings_for: Any, replay_rate: float
) -> None:
    scans = workload.scan_lifecycles(30, seed=41, failure_rate=0.0, replay_rate=replay_rate)
    before = outcome_counts()
    worker = ScanMetricsWorker(resources(settings_for(), redis, db))
    async with running(worker):
        await publish(redis, STREAM, [e for scan in scans for e in scan])
        await poll(lambda: drained(redis), what="drained")
    assert await db.fetchval("SELECT count(*) FROM scanner.scan_tte WHERE is_replay") == 30
    assert await db.fetchval("SELECT count(*) FROM scanner.tte_stats") == 0
    assert await db.fetchval("SELECT scanner.tte_percentile(NULL, 0.5, NULL)") is None
    after = outcome_counts()
    assert after["replay"] - before["replay"] == 30
    assert after["tte_count"] == before["tte_count"]


async def test_an_unstorable_value_validate_missed_is_dead_lettered_not_retried(
    db: asyncpg.Pool, settings_for: Any
) -> None:
    (_, completed), *_ = workload.scan_lifecycles(1, seed=5, failure_rate=0.0)
    assert isinstance(completed, ScanCompleted)
    bad_phase = msgspec.structs.replace(completed.phases[0], metrics={"note": "a\u0000b"})
    bad = msgspec.structs.replace(completed, phases=[bad_phase, *completed.phases[1:]])
    worker = ScanMetricsWorker(resources(settings_for(), None, db))
    assert worker.validate(bad) is not None  # validate does catch this one...
    # ...and the database is the safety net: a data exception the kernel dead-letters at
    # once as rejected_by_database.
    with pytest.raises(asyncpg.UntranslatableCharacterError) as info:
        await apply_directly(worker, db, [bad])
    assert classify(info.value) is Failure.REJECTED
    assert await db.fetchval("SELECT count(*) FROM scanner.scan_metrics") == 0
