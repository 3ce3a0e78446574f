"""Specification of the snapshot governance core (SPEC §5.4, seed 001): ids, records, the
state machine, activation, rollback, freshness, retention, the audit chain and payloads."""

import random
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from blake3 import blake3
from hypothesis import given
from hypothesis import strategies as st

from workers.snapshot_retention.api_shapes import audit_response, rollback_response, sla_report
from workers.snapshot_retention.audit import (
    GENESIS_HASH,
    AuditDraft,
    AuditEvent,
    AuditRecord,
    audit_body,
    canonical_json,
    chain_hash,
    change_draft,
    imported_draft,
    retention_draft,
    rolled_back_draft,
    seal,
    verify_chain,
)
from workers.snapshot_retention.freshness import (
    FreshnessPolicy,
    FreshnessState,
    FreshnessThresholds,
    ReadRefused,
    evaluate_freshness,
    require_readable,
)
from workers.snapshot_retention.ids import (
    SnapshotId,
    make_snapshot_id,
    next_snapshot_id,
    object_key,
    parse_snapshot_id,
)
from workers.snapshot_retention.lifecycle import (
    ALLOWED_TRANSITIONS,
    InvalidTransition,
    RollbackRefused,
    RollbackTrigger,
    StateChange,
    activate,
    plan_rollback,
    transition,
)
from workers.snapshot_retention.payload import (
    PayloadMismatch,
    normalize_payload,
    snapshot_from_import,
    verify_payload,
)
from workers.snapshot_retention.records import Snapshot, SnapshotState
from workers.snapshot_retention.retention import (
    RetentionActionKind,
    RetentionHold,
    RetentionPolicy,
    held_retention,
    next_retention_run,
    plan_retention,
)
from workers.snapshot_retention.times import format_duration

S = SnapshotState
T0 = datetime(2025, 12, 4, tzinfo=UTC)
DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)


def b3(n: int) -> str:
    return "b3:" + f"{n:064x}"


def snap(
    tool: str = "syft",
    day: int = 0,
    *,
    seq: int = 1,
    state: SnapshotState = S.ACTIVE,
    changed: datetime | None = None,
    count: int = 100,
    key: str | None = None,
    previous: str | None = None,
) -> Snapshot:
    """A snapshot of ``tool`` imported ``day`` days after T0."""
    imported = T0 + day * DAY
    sid = make_snapshot_id(tool, imported, seq)
    return Snapshot(
        snapshot_id=sid,
        tool=tool,
        tool_version="1.0.0",
        imported_at=imported,
        source_hash=b3((day + 100_000) * 2000 + seq),
        normalized_hash=b3((day + 100_000) * 2000 + 1000 + seq),
        record_count=count,
        state=state,
        previous_snapshot=previous,
        object_key=key or f"snapshots/{tool}/{sid}.json",
        metadata={"importUser": "system", "importReason": "scheduled_sync"},
        state_changed_at=changed or imported,
    )


def apply(snapshots: list[Snapshot], changes: list[StateChange]) -> dict[str, Snapshot]:
    table = {s.snapshot_id: s for s in snapshots}
    for change in changes:
        table[change.snapshot_id] = change.snapshot
    return table


# ---------------------------------------------------------------------------------- ids


@pytest.mark.parametrize(
    ("tool", "at", "seq", "expected"),
    [
        ("syft", T0, 1, "syft-20251204T000000Z-001"),
        ("trivy", T0 + timedelta(hours=12), 1, "trivy-20251204T120000Z-001"),
        ("clair", T0 + timedelta(hours=6), 2, "clair-20251204T060000Z-002"),
        # converted to UTC and truncated to the second
        (
            "syft",
            datetime(2025, 12, 4, 2, 0, 0, 500_000, tzinfo=timezone(timedelta(hours=2))),
            999,
            "syft-20251204T000000Z-999",
        ),
        ("my-custom_feed-2", T0, 10, "my-custom_feed-2-20251204T000000Z-010"),
    ],
)
def test_make_snapshot_id(tool: str, at: datetime, seq: int, expected: str) -> None:
    assert make_snapshot_id(tool, at, seq) == expected


def test_parse_snapshot_id_reads_hyphenated_tools_from_the_right() -> None:
    parsed = parse_snapshot_id("my-feed-20251204-002-20251205T063000Z-003")
    assert parsed == SnapshotId(
        tool="my-feed-20251204-002",
        at=datetime(2025, 12, 5, 6, 30, tzinfo=UTC),
        seq=3,
    )


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "syft",
        "syft-20251204T000000Z",
        "-20251204T000000Z-001",
        "Syft-20251204T000000Z-001",
        "syft_-20251204T000000Z-001",
        "syft-20251204T000000-001",
        "syft-2025124T000000Z-001",
        "syft-20251304T000000Z-001",
        "syft-20250230T000000Z-001",
        "syft-20251204T246000Z-001",
        "syft-20251204T000000Z-1",
        "syft-20251204T000000Z-0001",
        "syft-20251204T000000Z-000",
        "syft-20251204T000000Z-00a",
        "syft-\u0662\u0660\u0662\u06651204T000000Z-001",  # non-ASCII digits
        "syft-20251204T000000Z-001 ",
        "../x-20251204T000000Z-001",
    ],
)
def test_parse_snapshot_id_refuses_malformed_ids(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid snapshot id"):
        parse_snapshot_id(bad)


@pytest.mark.parametrize("tool", ["", "Syft", "a b", "../x", "-x", "x-", "x_", "a" * 65, "ü"])
def test_make_snapshot_id_refuses_unsafe_tool_names(tool: str) -> None:
    with pytest.raises(ValueError, match="invalid tool name"):
        make_snapshot_id(tool, T0, 1)


@pytest.mark.parametrize("seq", [0, -1, 1000])
def test_make_snapshot_id_refuses_sequences_outside_001_to_999(seq: int) -> None:
    with pytest.raises(ValueError, match=r"1\.\.999"):
        make_snapshot_id("syft", T0, seq)


def test_make_snapshot_id_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        make_snapshot_id("syft", T0.replace(tzinfo=None), 1)


_OFFSETS = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
)


@given(
    tool=st.from_regex(r"[a-z0-9](?:[a-z0-9_-]{0,20}[a-z0-9])?", fullmatch=True),
    at=st.datetimes(
        min_value=datetime(1970, 1, 2),  # noqa: DTZ001  # hypothesis takes naive bounds
        max_value=datetime(9998, 12, 30),  # noqa: DTZ001  # and applies `timezones` itself
        timezones=_OFFSETS,
    ),
    seq=st.integers(min_value=1, max_value=999),
)
def test_snapshot_id_round_trip(tool: str, at: datetime, seq: int) -> None:
    text = make_snapshot_id(tool, at, seq)
    parsed = parse_snapshot_id(text)
    assert parsed == SnapshotId(tool=tool, at=at.astimezone(UTC).replace(microsecond=0), seq=seq)
    assert str(parsed) == text


def test_next_snapshot_id_continues_the_sequence_of_the_same_second() -> None:
    existing = [
        "syft-20251204T000000Z-001",
        "syft-20251204T000000Z-002",
        "syft-20251204T000001Z-007",  # another second
        "syft-x-20251204T000000Z-009",  # another tool sharing the prefix
    ]
    assert next_snapshot_id("syft", T0, existing) == "syft-20251204T000000Z-003"
    assert next_snapshot_id("trivy", T0, existing) == "trivy-20251204T000000Z-001"
    full = [make_snapshot_id("syft", T0, 999)]
    with pytest.raises(ValueError, match="999"):
        next_snapshot_id("syft", T0, full)


# ---------------------------------------------------------------------------------- records


def test_snapshot_encodes_as_the_seed_record() -> None:
    record = snap(previous="syft-20251203T000000Z-001")
    encoded = msgspec.json.decode(msgspec.json.encode(record))
    assert encoded["id"] == "syft-20251204T000000Z-001"
    assert encoded["toolVersion"] == "1.0.0"
    assert encoded["importedAt"] == "2025-12-04T00:00:00Z"
    assert encoded["previousSnapshot"] == "syft-20251203T000000Z-001"
    assert encoded["state"] == "active"
    assert encoded["metadata"] == {"importUser": "system", "importReason": "scheduled_sync"}
    assert {"sourceHash", "normalizedHash", "recordCount", "objectKey", "stateChangedAt"} <= set(
        encoded
    )
    assert msgspec.json.decode(msgspec.json.encode(record), type=Snapshot) == record


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tool": "trivy"}, "differs from the id's tool"),
        ({"source_hash": "sha256:abc"}, "source_hash"),
        ({"normalized_hash": "b3:" + "A" * 64}, "normalized_hash"),
        ({"record_count": -1}, "negative"),
        ({"imported_at": T0.replace(tzinfo=None)}, "timezone-aware"),
        ({"previous_snapshot": "trivy-20251203T000000Z-001"}, "same tool"),
        ({"previous_snapshot": "syft-20251204T000000Z-001"}, "same tool"),
        ({"tool_version": ""}, "tool_version"),
        ({"object_key": ""}, "object_key"),
    ],
)
def test_snapshot_refuses_inconsistent_records(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        msgspec.structs.replace(snap(), **change)


# ---------------------------------------------------------------------------------- state machine

EXPECTED_ALLOWED = {
    (S.ACTIVE, S.PREVIOUS),
    (S.ACTIVE, S.EXPIRED),
    (S.PREVIOUS, S.ACTIVE),
    (S.PREVIOUS, S.ARCHIVED),
    (S.PREVIOUS, S.EXPIRED),
    (S.ARCHIVED, S.ACTIVE),
    (S.ARCHIVED, S.DELETED),
    (S.ARCHIVED, S.EXPIRED),
    (S.EXPIRED, S.DELETED),
}
ALL_PAIRS = [(a, b) for a in S for b in S]


def test_transition_table_is_the_documented_one() -> None:
    table = {(a, b) for a, targets in ALLOWED_TRANSITIONS.items() for b in targets}
    assert table == EXPECTED_ALLOWED
    assert set(ALLOWED_TRANSITIONS) == set(S)


@pytest.mark.parametrize(("from_state", "to_state"), sorted(EXPECTED_ALLOWED))
def test_allowed_transitions(from_state: SnapshotState, to_state: SnapshotState) -> None:
    later = T0 + 3 * DAY
    moved = transition(snap(state=from_state), to_state, later)
    assert moved.state is to_state
    assert moved.state_changed_at == later
    assert moved.snapshot_id == snap().snapshot_id


@pytest.mark.parametrize(("from_state", "to_state"), sorted(set(ALL_PAIRS) - EXPECTED_ALLOWED))
def test_refused_transitions(from_state: SnapshotState, to_state: SnapshotState) -> None:
    with pytest.raises(InvalidTransition) as caught:
        transition(snap(state=from_state), to_state, T0 + DAY)
    assert caught.value.from_state is from_state
    assert caught.value.to_state is to_state
    assert f"cannot go from {from_state} to {to_state}" in str(caught.value)


def test_transition_needs_an_aware_instant() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        transition(snap(), S.PREVIOUS, T0.replace(tzinfo=None))


# ---------------------------------------------------------------------------------- activation


def test_first_activation_inserts_the_snapshot_as_active() -> None:
    new = snap(state=S.PREVIOUS)  # the planner owns the state of a new record
    changes = activate([], new, T0 + SECOND)
    assert len(changes) == 1
    assert changes[0].from_state is None
    assert changes[0].to_state is S.ACTIVE
    assert changes[0].snapshot.previous_snapshot is None
    assert changes[0].at == T0 + SECOND


def test_activation_demotes_the_current_active_first() -> None:
    old = snap(day=0)
    older = snap(day=-5, state=S.PREVIOUS)
    new = snap(day=1)
    at = T0 + DAY + SECOND
    changes = activate([older, old], new, at)
    assert [(c.snapshot_id, c.from_state, c.to_state) for c in changes] == [
        (old.snapshot_id, S.ACTIVE, S.PREVIOUS),
        (new.snapshot_id, None, S.ACTIVE),
    ]
    assert changes[1].snapshot.previous_snapshot == old.snapshot_id
    table = apply([older, old], changes)
    assert [s.snapshot_id for s in table.values() if s.state is S.ACTIVE] == [new.snapshot_id]
    assert table[old.snapshot_id].state_changed_at == at


def test_activation_refuses_inconsistent_input() -> None:
    current = snap(day=0)
    with pytest.raises(ValueError, match="already stored"):
        activate([current], current, T0)
    with pytest.raises(ValueError, match="belongs to trivy"):
        activate([snap("trivy")], snap(day=1), T0)
    with pytest.raises(ValueError, match="several active"):
        activate([snap(day=0), snap(day=1)], snap(day=2), T0)


def test_snapshot_from_import_is_content_addressed() -> None:
    payload = normalize_payload(b'[{"b": 1, "a": 2}, {"c": 3}]')
    record = snapshot_from_import(
        tool="syft",
        tool_version="1.0.0",
        imported_at=T0,
        seq=1,
        payload=payload,
        metadata={"sourceUri": "https://example.com/sbom.json"},
    )
    assert record.snapshot_id == "syft-20251204T000000Z-001"
    assert record.object_key == object_key("syft", payload.normalized_hash)
    assert record.record_count == 2
    assert record.normalized_hash == payload.normalized_hash


# ---------------------------------------------------------------------------------- rollback


def lineage() -> list[Snapshot]:
    """s1..s3 previous, s4 active (newest), an archived, an expired and a deleted one."""
    return [
        snap(day=-40, state=S.DELETED, count=10),
        snap(day=-35, state=S.ARCHIVED, count=20),
        snap(day=-30, state=S.EXPIRED, count=30),
        snap(day=-3, state=S.PREVIOUS, count=1100),
        snap(day=-2, state=S.PREVIOUS, count=1150),
        snap(day=-1, state=S.PREVIOUS, count=1200),
        snap(day=0, state=S.ACTIVE, count=1234),
    ]


def test_rollback_defaults_to_the_most_recent_previous() -> None:
    at = T0 + timedelta(hours=12)
    plan = plan_rollback(lineage(), None, at)
    assert plan.target.snapshot_id == "syft-20251203T000000Z-001"
    assert plan.current is not None
    assert plan.current.snapshot_id == "syft-20251204T000000Z-001"
    assert [(c.snapshot_id, c.from_state, c.to_state) for c in plan.changes] == [
        ("syft-20251204T000000Z-001", S.ACTIVE, S.PREVIOUS),
        ("syft-20251203T000000Z-001", S.PREVIOUS, S.ACTIVE),
    ]
    assert all(c.at == at for c in plan.changes)
    assert plan.records_affected == 34


def test_a_second_default_rollback_walks_further_back() -> None:
    snapshots = lineage()
    first = plan_rollback(snapshots, None, T0 + DAY)
    after = list(apply(snapshots, list(first.changes)).values())
    second = plan_rollback(after, None, T0 + 2 * DAY)
    assert second.target.snapshot_id == "syft-20251202T000000Z-001"


def test_rollback_to_a_named_previous_or_archived_snapshot() -> None:
    to_previous = plan_rollback(
        lineage(), "syft-20251201T000000Z-001", T0, trigger=RollbackTrigger.DATA_CORRUPTION
    )
    assert to_previous.target.snapshot_id == "syft-20251201T000000Z-001"
    to_archived = plan_rollback(lineage(), "syft-20251030T000000Z-001", T0)
    assert to_archived.changes[-1].from_state is S.ARCHIVED
    assert to_archived.changes[-1].to_state is S.ACTIVE


@pytest.mark.parametrize(
    ("target", "trigger", "message"),
    [
        ("syft-20251204T000000Z-001", RollbackTrigger.USER_REQUEST, "already active"),
        ("syft-20251104T000000Z-001", RollbackTrigger.USER_REQUEST, "is expired"),
        ("syft-20251025T000000Z-001", RollbackTrigger.USER_REQUEST, "is deleted"),
        ("syft-20240101T000000Z-001", RollbackTrigger.COMPLIANCE, "does not exist"),
        ("trivy-20251203T000000Z-001", RollbackTrigger.USER_REQUEST, "belongs to trivy"),
        ("not-an-id", RollbackTrigger.USER_REQUEST, "invalid snapshot id"),
        ("syft-20251203T000000Z-001", RollbackTrigger.VALIDATION_FAILURE, "previous snapshot"),
        ("syft-20251203T000000Z-001", RollbackTrigger.IMPORT_FAILURE, "previous snapshot"),
    ],
)
def test_rollback_refuses_bad_targets(target: str, trigger: RollbackTrigger, message: str) -> None:
    with pytest.raises(RollbackRefused, match=message):
        plan_rollback(lineage(), target, T0, trigger=trigger)


def test_rollback_refuses_when_there_is_nothing_to_go_back_to() -> None:
    with pytest.raises(RollbackRefused, match="no snapshots"):
        plan_rollback([], None, T0)
    with pytest.raises(RollbackRefused, match="no previous snapshot older than"):
        plan_rollback([snap(day=0), snap(day=1, state=S.PREVIOUS)], None, T0)


def test_rollback_without_an_active_snapshot_only_activates_the_target() -> None:
    snapshots = [snap(day=-1, state=S.PREVIOUS, count=7), snap(day=0, state=S.EXPIRED)]
    plan = plan_rollback(snapshots, None, T0, trigger=RollbackTrigger.VALIDATION_FAILURE)
    assert plan.current is None
    assert [(c.from_state, c.to_state) for c in plan.changes] == [(S.PREVIOUS, S.ACTIVE)]
    assert plan.records_affected == 7


def test_rollback_response_has_the_seed_shape() -> None:
    plan = plan_rollback(lineage(), None, T0 + timedelta(hours=12))
    body = msgspec.json.decode(
        msgspec.json.encode(
            rollback_response(
                plan,
                status="completed",
                executed_by="admin@example.com",
                reason="Data corruption detected",
            )
        )
    )
    assert body == {
        "rollback": {
            "status": "completed",
            "tool": "syft",
            "from": {"snapshotId": "syft-20251204T000000Z-001", "recordCount": 1234},
            "to": {"snapshotId": "syft-20251203T000000Z-001", "recordCount": 1200},
            "executedAt": "2025-12-04T12:00:00Z",
            "executedBy": "admin@example.com",
            "reason": "Data corruption detected",
            "trigger": "user_request",
            "recordsAffected": 34,
        }
    }


# ---------------------------------------------------------------------------------- freshness


@pytest.mark.parametrize(
    ("age", "state", "warning", "readable", "next_check"),
    [
        (timedelta(0), FreshnessState.FRESH, False, True, T0 + 7 * DAY),
        (7 * DAY - SECOND, FreshnessState.FRESH, False, True, T0 + 7 * DAY),
        (7 * DAY, FreshnessState.STALE, False, True, T0 + 14 * DAY),
        (14 * DAY - SECOND, FreshnessState.STALE, False, True, T0 + 14 * DAY),
        (14 * DAY, FreshnessState.STALE, True, True, T0 + 30 * DAY),
        (30 * DAY - SECOND, FreshnessState.STALE, True, True, T0 + 30 * DAY),
        (30 * DAY, FreshnessState.CRITICAL, True, False, None),
        (400 * DAY, FreshnessState.CRITICAL, True, False, None),
    ],
)
def test_freshness_boundaries(
    age: timedelta,
    state: FreshnessState,
    warning: bool,
    readable: bool,
    next_check: datetime | None,
) -> None:
    report = evaluate_freshness(snap(), FreshnessThresholds(), T0 + age)
    assert (report.state, report.warning, report.readable) == (state, warning, readable)
    assert report.age == age
    assert report.next_check == next_check
    assert report.snapshot_id == "syft-20251204T000000Z-001"


def test_custom_tool_thresholds_override_the_default() -> None:
    policy = FreshnessPolicy(
        tools={
            "custom-feed": FreshnessThresholds(
                max_age=timedelta(hours=12), stale_warning=DAY, critical=2 * DAY
            )
        }
    )
    now = T0 + DAY
    custom = evaluate_freshness(snap("custom-feed"), policy, now)
    assert (custom.state, custom.warning) == (FreshnessState.STALE, True)
    assert evaluate_freshness(snap("custom-feed"), policy, T0 + 2 * DAY).state is (
        FreshnessState.CRITICAL
    )
    assert evaluate_freshness(snap("syft"), policy, now).state is FreshnessState.FRESH


def test_thresholds_decode_from_the_seed_shape_and_validate() -> None:
    decoded = msgspec.convert(
        {"maxAge": "P3D", "stale": "P5D", "critical": "P10D"}, FreshnessThresholds
    )
    assert decoded == FreshnessThresholds(max_age=3 * DAY, stale_warning=5 * DAY, critical=10 * DAY)
    with pytest.raises(ValueError, match="max_age <= stale <= critical"):
        FreshnessThresholds(max_age=10 * DAY, stale_warning=5 * DAY, critical=20 * DAY)
    with pytest.raises(ValueError, match="0 < max_age"):
        FreshnessThresholds(max_age=timedelta(0))
    with pytest.raises(ValueError, match="invalid tool name"):
        FreshnessPolicy(tools={"Custom": FreshnessThresholds()})


def test_a_tool_without_an_active_snapshot_is_expired() -> None:
    report = evaluate_freshness(None, FreshnessThresholds(), T0, tool="syft")
    assert (report.state, report.readable, report.snapshot_id) == (
        FreshnessState.EXPIRED,
        False,
        None,
    )
    with pytest.raises(ValueError, match="tool is required"):
        evaluate_freshness(None, FreshnessThresholds(), T0)


def test_a_manually_expired_snapshot_is_expired_at_any_age() -> None:
    expired = snap(state=S.EXPIRED, changed=T0 + SECOND)
    report = evaluate_freshness(expired, FreshnessThresholds(), T0 + DAY)
    assert report.state is FreshnessState.EXPIRED
    assert not report.readable


def test_freshness_is_only_for_the_current_snapshot() -> None:
    with pytest.raises(ValueError, match="is previous"):
        evaluate_freshness(snap(state=S.PREVIOUS), FreshnessThresholds(), T0)
    with pytest.raises(ValueError, match="does not belong"):
        evaluate_freshness(snap(), FreshnessThresholds(), T0, tool="trivy")


def test_an_import_from_a_clock_slightly_ahead_is_fresh() -> None:
    report = evaluate_freshness(snap(), FreshnessThresholds(), T0 - timedelta(minutes=2))
    assert (report.state, report.age) == (FreshnessState.FRESH, timedelta(0))


def test_reading_is_refused_when_critical_unless_overridden_and_always_when_expired() -> None:
    thresholds = FreshnessThresholds()
    require_readable(evaluate_freshness(snap(), thresholds, T0 + 20 * DAY))
    critical = evaluate_freshness(snap(), thresholds, T0 + 30 * DAY)
    with pytest.raises(ReadRefused, match="critical"):
        require_readable(critical)
    require_readable(critical, override=True)
    expired = evaluate_freshness(None, thresholds, T0, tool="syft")
    with pytest.raises(ReadRefused, match="expired"):
        require_readable(expired, override=True)


def test_sla_report_for_one_tool_has_the_seed_shape() -> None:
    snapshots = [snap(day=-1, state=S.PREVIOUS), snap(day=0), snap("trivy")]
    body = msgspec.json.decode(
        msgspec.json.encode(sla_report(snapshots, FreshnessPolicy(), T0 + 2 * DAY, tool="syft"))
    )
    assert set(body) == {"sla"}
    sla = body["sla"]
    assert {k: sla[k] for k in ("tool", "snapshotId", "importedAt", "age", "state")} == {
        "tool": "syft",
        "snapshotId": "syft-20251204T000000Z-001",
        "importedAt": "2025-12-04T00:00:00Z",
        "age": "P2D",
        "state": "fresh",
    }
    assert sla["nextCheck"] == "2025-12-11T00:00:00Z"
    assert sla["thresholds"] == {"maxAge": "P7D", "stale": "P14D", "critical": "P30D"}
    assert sla["ageSeconds"] == 2 * 86_400


def test_sla_report_lists_every_known_tool_sorted() -> None:
    policy = FreshnessPolicy(tools={"custom-feed": FreshnessThresholds(max_age=DAY)})
    snapshots = [snap("trivy"), snap("syft", day=-20), snap("clair", state=S.EXPIRED)]
    report = sla_report(snapshots, policy, T0 + DAY)
    assert [(e.tool, e.state, e.warning) for e in report.sla] == [
        ("clair", FreshnessState.EXPIRED, True),
        ("custom-feed", FreshnessState.EXPIRED, True),
        ("syft", FreshnessState.STALE, True),
        ("trivy", FreshnessState.FRESH, False),
    ]
    assert report.sla[1].thresholds.max_age == "P1D"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(0), "PT0S"),
        (timedelta(milliseconds=999), "PT0S"),
        (2 * DAY, "P2D"),
        (timedelta(days=1, hours=2, minutes=30), "P1DT2H30M"),
        (timedelta(seconds=61), "PT1M1S"),
    ],
)
def test_format_duration(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


# ---------------------------------------------------------------------------------- retention


def test_previous_is_archived_30_days_after_it_became_previous() -> None:
    demoted = T0 - 5 * DAY
    # imported long ago: the clock starts when it became previous, not at import
    old = snap(day=-100, state=S.PREVIOUS, changed=demoted)
    assert plan_retention([old], [], demoted + 30 * DAY - SECOND) == []
    [action] = plan_retention([old], [], demoted + 30 * DAY)
    assert action.kind is RetentionActionKind.ARCHIVE
    assert (action.change.from_state, action.change.to_state) == (S.PREVIOUS, S.ARCHIVED)
    assert action.change.snapshot.state_changed_at == demoted + 30 * DAY
    assert action.due_at == demoted + 30 * DAY
    assert not action.remove_object
    assert "archive" in action.reason
    assert old.snapshot_id in action.reason


def test_archived_is_deleted_90_days_after_archiving_keeping_the_record() -> None:
    archived_at = T0 + DAY
    old = snap(day=-200, state=S.ARCHIVED, changed=archived_at)
    assert plan_retention([old], [], archived_at + 90 * DAY - SECOND) == []
    [action] = plan_retention([old], [], archived_at + 90 * DAY)
    assert action.kind is RetentionActionKind.DELETE
    assert action.change.to_state is S.DELETED
    assert action.remove_object
    assert action.object_key == old.object_key
    # the record survives, only its state changes
    assert action.change.snapshot.snapshot_id == old.snapshot_id
    assert action.change.snapshot.normalized_hash == old.normalized_hash


def test_a_long_previous_snapshot_is_only_archived_in_one_run() -> None:
    old = snap(day=-300, state=S.PREVIOUS)
    [action] = plan_retention([old], [], T0)
    assert action.kind is RetentionActionKind.ARCHIVE


@pytest.mark.parametrize("state", [S.ACTIVE, S.EXPIRED, S.DELETED])
def test_active_expired_and_deleted_snapshots_are_never_touched(state: SnapshotState) -> None:
    ancient = snap(day=-3000, state=state)
    assert plan_retention([ancient], [], T0 + 10_000 * DAY) == []
    assert held_retention([ancient], [], T0 + 10_000 * DAY) == []


def test_retention_policy_is_configurable() -> None:
    policy = RetentionPolicy(previous_max_age=DAY, archived_max_age=2 * DAY, schedule="0 3 * * *")
    previous = snap(day=-1, state=S.PREVIOUS)
    archived = snap(day=-2, state=S.ARCHIVED, seq=2)
    kinds = [a.kind for a in plan_retention([previous, archived], [], T0, policy)]
    # ordered by (tool, id): the older archived snapshot comes first
    assert kinds == [RetentionActionKind.DELETE, RetentionActionKind.ARCHIVE]
    assert next_retention_run(policy, T0) == T0 + timedelta(hours=3)
    assert next_retention_run(RetentionPolicy(), T0) == T0 + DAY
    with pytest.raises(ValueError, match="cron"):
        RetentionPolicy(schedule="every day")
    with pytest.raises(ValueError, match="positive"):
        RetentionPolicy(previous_max_age=timedelta(0))


def due_pair() -> list[Snapshot]:
    return [
        snap(day=-40, state=S.PREVIOUS),  # archive due
        snap(day=-100, state=S.ARCHIVED),  # delete due
        snap(day=0),
    ]


@pytest.mark.parametrize(
    "hold",
    [
        RetentionHold(snapshot_id="syft-20251025T000000Z-001", reason="Audit hold"),
        RetentionHold(tool="syft", reason="Litigation", expires_at=T0 + SECOND),
    ],
    ids=["snapshot-hold", "tool-hold"],
)
def test_holds_block_every_action_they_cover(hold: RetentionHold) -> None:
    snapshots = due_pair()
    planned = plan_retention(snapshots, [hold], T0)
    held = held_retention(snapshots, [hold], T0)
    assert "syft-20251025T000000Z-001" not in [a.snapshot_id for a in planned]
    assert "syft-20251025T000000Z-001" in [h.action.snapshot_id for h in held]
    assert all(not h.action.remove_object for h in held)
    assert all(hold.reason in h.reason for h in held)
    if hold.tool is not None:
        assert planned == []
        assert len(held) == 2


def test_holds_on_other_snapshots_or_tools_do_not_block() -> None:
    holds = [
        RetentionHold(snapshot_id="syft-20251203T000000Z-001", reason="other snapshot"),
        RetentionHold(tool="trivy", reason="other tool"),
    ]
    assert len(plan_retention(due_pair(), holds, T0)) == 2
    assert held_retention(due_pair(), holds, T0) == []


@pytest.mark.parametrize(
    ("expires_at", "blocks"),
    [
        (None, True),
        (T0 + SECOND, True),
        (T0, False),  # a hold ends at its expiry instant
        (T0 - DAY, False),
    ],
)
def test_a_hold_blocks_until_it_expires(expires_at: datetime | None, blocks: bool) -> None:
    hold = RetentionHold(tool="syft", reason="Audit hold", expires_at=expires_at)
    planned = plan_retention(due_pair(), [hold], T0)
    assert (planned == []) is blocks
    assert (len(held_retention(due_pair(), [hold], T0)) == 2) is blocks


def test_holds_are_validated() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        RetentionHold(reason="x")
    with pytest.raises(ValueError, match="exactly one"):
        RetentionHold(reason="x", tool="syft", snapshot_id="syft-20251204T000000Z-001")
    with pytest.raises(ValueError, match="reason"):
        RetentionHold(reason="  ", tool="syft")
    with pytest.raises(ValueError, match="timezone-aware"):
        RetentionHold(reason="x", tool="syft", expires_at=T0.replace(tzinfo=None))
    seed_exception = msgspec.convert(
        {
            "snapshotId": "syft-20251101T000000Z-001",
            "reason": "Audit hold",
            "expiresAt": "2026-12-01T00:00:00Z",
        },
        RetentionHold,
    )
    assert seed_exception.expires_at == datetime(2026, 12, 1, tzinfo=UTC)


@given(order=st.permutations(range(6)))
def test_retention_plans_are_deterministic(order: list[int]) -> None:
    snapshots = [
        snap("trivy", day=-50, state=S.PREVIOUS),
        snap("syft", day=-95, state=S.ARCHIVED),
        snap("syft", day=-45, state=S.PREVIOUS, seq=2),
        snap("syft", day=-45, state=S.PREVIOUS, seq=1),
        snap("clair", day=-200, state=S.ARCHIVED),
        snap("syft", day=0),
    ]
    planned = plan_retention([snapshots[i] for i in order], [], T0)
    assert [a.snapshot_id for a in planned] == [
        "clair-20250518T000000Z-001",
        "syft-20250831T000000Z-001",
        "syft-20251020T000000Z-001",
        "syft-20251020T000000Z-002",
        "trivy-20251015T000000Z-001",
    ]


def test_a_shared_object_is_removed_only_when_nothing_else_uses_it() -> None:
    shared = "snapshots/syft/ab/shared.json"
    first = snap(day=-200, state=S.ARCHIVED, key=shared)
    second = snap(day=-150, state=S.ARCHIVED, key=shared)
    [one, two] = plan_retention([first, second], [], T0)
    assert (one.remove_object, two.remove_object) == (True, False)
    assert "earlier action" in two.reason

    active_user = snap(day=0, key=shared)
    [only] = plan_retention([first, active_user], [], T0)
    assert not only.remove_object
    assert active_user.snapshot_id in only.reason

    held_user = RetentionHold(snapshot_id=second.snapshot_id, reason="Audit hold")
    [kept] = plan_retention([first, second], [held_user], T0)
    assert kept.snapshot_id == first.snapshot_id
    assert not kept.remove_object


def test_retention_refuses_duplicate_records() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        plan_retention([snap(), snap()], [], T0)


# ---------------------------------------------------------------------------------- audit chain


def test_seed_audit_events_plus_archived() -> None:
    assert {e.value for e in AuditEvent} == {
        "snapshot_imported",
        "snapshot_activated",
        "snapshot_rolled_back",
        "snapshot_archived",
        "snapshot_expired",
        "snapshot_deleted",
    }


def test_canonical_json_is_sorted_compact_and_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    record = {
        "b": [1, {"z": True, "a": None}],
        "a": datetime(2025, 12, 4, 2, 0, tzinfo=plus_two),
        "c": datetime(2025, 12, 4, 0, 0, 0, 5, tzinfo=UTC),
        "é": S.ACTIVE,
    }
    assert (
        canonical_json(record)
        == (
            '{"a":"2025-12-04T00:00:00Z","b":[1,{"a":null,"z":true}],'
            '"c":"2025-12-04T00:00:00.000005Z","é":"active"}'
        ).encode()
    )


@pytest.mark.parametrize(
    ("record", "error"),
    [
        ({"x": 1.5}, TypeError),
        ({"x": {1: "a"}}, TypeError),
        ({"x": b"bytes"}, TypeError),
        ({"x": T0.replace(tzinfo=None)}, ValueError),
    ],
)
def test_canonical_json_refuses_values_without_a_canonical_form(
    record: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        canonical_json(record)


def test_chain_hash_is_blake3_over_previous_hash_and_canonical_record() -> None:
    record = {"event": "snapshot_imported", "seq": 1}
    expected = blake3(GENESIS_HASH.encode() + b"\n" + canonical_json(record)).hexdigest()
    assert chain_hash(None, record) == "b3:" + expected
    assert chain_hash(GENESIS_HASH, record) == chain_hash(None, record)
    assert chain_hash(b3(1), record) != chain_hash(None, record)
    with pytest.raises(ValueError, match="prev_hash"):
        chain_hash("sha256:00", record)


def build_chain() -> list[AuditRecord]:
    old, new = snap(day=-1, count=1200), snap(day=0, count=1234)
    activation = activate([old], new, T0 + SECOND)
    rollback = plan_rollback(
        list(apply([old], activation).values()), None, T0 + DAY, trigger=RollbackTrigger.COMPLIANCE
    )
    expiry = StateChange(
        snapshot=transition(snap(day=-60, state=S.PREVIOUS), S.EXPIRED, T0 + DAY),
        from_state=S.PREVIOUS,
    )
    [archive] = plan_retention([snap(day=-90, state=S.PREVIOUS)], [], T0 + DAY)
    drafts: list[AuditDraft] = [
        imported_draft(new, actor="system", at=T0),
        change_draft(activation[-1], actor="system"),
        rolled_back_draft(rollback, actor="admin@example.com", reason="Data corruption detected"),
        change_draft(expiry, actor="admin@example.com", reason="bad upstream data"),
        retention_draft(archive, actor="retention"),
    ]
    chain: list[AuditRecord] = []
    for seq, draft in enumerate(drafts, start=1):
        chain.append(seal(draft, seq=seq, prev_hash=chain[-1].hash if chain else None))
    return chain


def test_an_untouched_chain_verifies() -> None:
    chain = build_chain()
    assert chain[0].prev_hash == GENESIS_HASH
    assert [r.event for r in chain] == [
        AuditEvent.IMPORTED,
        AuditEvent.ACTIVATED,
        AuditEvent.ROLLED_BACK,
        AuditEvent.EXPIRED,
        AuditEvent.ARCHIVED,
    ]
    assert verify_chain(chain) is None
    assert verify_chain([]) is None
    # a tail verifies from the last hash verified before it
    assert verify_chain(chain[2:], start_hash=chain[1].hash) is None
    assert verify_chain(chain[2:]) is not None


def _tampered(record: AuditRecord, field: str) -> AuditRecord:
    alterations: dict[str, object] = {
        "seq": record.seq + 1000,
        "event": AuditEvent.DELETED if record.event is not AuditEvent.DELETED else "x",
        "snapshot_id": "syft-20200101T000000Z-001",
        "tool": record.tool + "x",
        "actor": record.actor + " ",
        "reason": "rewritten" if record.reason != "rewritten" else None,
        "details": {**record.details, "recordCount": 1},
        "occurred_at": record.occurred_at + timedelta(microseconds=1),
        "prev_hash": b3(42),
        "hash": b3(43),
    }
    return msgspec.structs.replace(record, **{field: alterations[field]})


AUDIT_FIELDS = [
    "seq",
    "event",
    "snapshot_id",
    "tool",
    "actor",
    "reason",
    "details",
    "occurred_at",
    "prev_hash",
    "hash",
]


def test_seal_refuses_a_non_positive_seq() -> None:
    draft = imported_draft(snap(), actor="system", at=T0)
    with pytest.raises(ValueError, match="positive"):
        seal(draft, seq=0, prev_hash=None)


def test_every_audit_column_is_covered() -> None:
    assert set(AUDIT_FIELDS) == set(AuditRecord.__struct_fields__)
    assert set(audit_body(1, build_chain()[0])) == set(AUDIT_FIELDS) - {"prev_hash", "hash"}


@pytest.mark.parametrize("field", AUDIT_FIELDS)
def test_altering_any_field_of_any_record_names_that_record(field: str) -> None:
    chain = build_chain()
    for index in range(len(chain)):
        forged = list(chain)
        forged[index] = _tampered(chain[index], field)
        found = verify_chain(forged)
        assert found is not None, (field, index)
        assert (found.index, found.seq) == (index, forged[index].seq), (field, index, found)


def test_removed_or_reordered_records_are_named() -> None:
    chain = build_chain()
    removed = verify_chain(chain[:2] + chain[3:])
    assert removed is not None
    assert (removed.index, removed.seq) == (2, 4)
    swapped = verify_chain([chain[0], chain[2], chain[1], *chain[3:]])
    assert swapped is not None
    assert swapped.index == 1


def test_audit_drafts_carry_the_seed_fields() -> None:
    chain = build_chain()
    imported, activated, rolled_back, expired, archived = chain
    assert imported.details["normalizedHash"] == snap(day=0).normalized_hash
    assert imported.reason == "scheduled_sync"
    assert activated.details["previousSnapshot"] == "syft-20251203T000000Z-001"
    assert rolled_back.details == {
        "fromSnapshot": "syft-20251204T000000Z-001",
        "toSnapshot": "syft-20251203T000000Z-001",
        "reason": "Data corruption detected",
        "recordsAffected": 34,
        "trigger": "compliance",
    }
    assert expired.reason == "bad upstream data"
    assert archived.details["toState"] == "archived"
    [delete] = plan_retention([snap(day=-200, state=S.ARCHIVED)], [], T0)
    deleted = retention_draft(delete, actor="retention")
    assert deleted.event is AuditEvent.DELETED
    assert deleted.details["objectRemoved"] is True
    demotion = activate([snap(day=-1)], snap(day=0), T0)[0]
    with pytest.raises(ValueError, match="recorded by the activation or rollback"):
        change_draft(demotion, actor="system")


def test_audit_response_has_the_seed_shape() -> None:
    record = build_chain()[2]
    body = msgspec.json.decode(msgspec.json.encode(audit_response(record)))["audit"]
    assert body["id"] == "audit-3"
    assert body["event"] == "snapshot_rolled_back"
    assert body["timestamp"] == "2025-12-05T00:00:00Z"
    assert body["user"] == "admin@example.com"
    assert body["details"]["fromSnapshot"] == "syft-20251204T000000Z-001"
    assert body["details"]["reason"] == "Data corruption detected"
    assert body["hash"] == record.hash


# ---------------------------------------------------------------------------------- payloads


def test_normalization_ignores_key_order_and_whitespace() -> None:
    a = normalize_payload(b'[{"name": "openssl", "version": "3.0.1"}]')
    b = normalize_payload(b'[\n  {"version":"3.0.1",\n   "name":"openssl"}\n]\n')
    assert a.normalized == b.normalized == b'[{"name":"openssl","version":"3.0.1"}]'
    assert a.normalized_hash == b.normalized_hash == "b3:" + blake3(a.normalized).hexdigest()
    assert a.source_hash != b.source_hash
    assert a.record_count == 1


def test_an_object_holding_one_list_of_records_is_accepted() -> None:
    payload = normalize_payload(b'{"schema": "v1", "artifacts": [{"a": 1}, {"a": 2}]}')
    assert payload.record_count == 2
    several = b'{"artifacts": [{"a": 1}], "files": [{"f": 1}]}'
    with pytest.raises(ValueError, match="several arrays"):
        normalize_payload(several)
    assert normalize_payload(several, records_key="files").record_count == 1
    with pytest.raises(ValueError, match="no array under 'missing'"):
        normalize_payload(several, records_key="missing")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'"text"', "payload is a string"),
        (b"42", "payload is a number"),
        (b'{"schema": "v1"}', "no array of records"),
        (b'[{"a": 1}, 2]', "record 1 is a number"),
        (b'[{"a": 1}, null]', "record 1 is null"),
        (b"[]", "no records"),
    ],
)
def test_payloads_that_are_not_feed_records_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_payload(data)


def test_an_empty_payload_can_be_allowed_explicitly() -> None:
    assert normalize_payload(b"[]", allow_empty=True).record_count == 0


def test_object_keys_are_content_addressed() -> None:
    digest = "ab" + "c" * 62
    assert object_key("syft", "b3:" + digest) == f"snapshots/syft/ab/{digest}.json"
    with pytest.raises(ValueError, match="normalized_hash"):
        object_key("syft", "sha256:" + digest)
    with pytest.raises(ValueError, match="invalid tool name"):
        object_key("../etc", "b3:" + digest)


def test_a_restored_payload_is_verified_by_hash() -> None:
    payload = normalize_payload(b'[{"a": 1}]')
    record = snapshot_from_import(
        tool="syft", tool_version="1", imported_at=T0, seq=1, payload=payload
    )
    verify_payload(record, payload.normalized)
    with pytest.raises(PayloadMismatch, match="expects"):
        verify_payload(record, payload.normalized + b" ")


def test_retention_actions_are_state_machine_changes() -> None:
    for action in plan_retention(due_pair(), [], T0):
        change = action.change
        assert change.from_state is not None
        assert (change.from_state, change.to_state) in EXPECTED_ALLOWED


def test_activation_order_keeps_one_active_for_any_history() -> None:
    rng = random.Random(7)
    snapshots: list[Snapshot] = []
    for day in range(20):
        new = snap(day=day)
        snapshots = list(apply(snapshots, activate(snapshots, new, new.imported_at)).values())
        if day > 0 and rng.random() < 0.3:
            plan = plan_rollback(snapshots, None, new.imported_at + SECOND)
            snapshots = list(apply(snapshots, list(plan.changes)).values())
        assert sum(s.state is S.ACTIVE for s in snapshots) == 1
