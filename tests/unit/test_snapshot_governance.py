"""The pure parts of seed 001's completion (docs/snapshots.md): ISO 8601 thresholds, manual
expiry, retention ages from settings, and audit pruning anchors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from tests.unit.test_snapshot_core import DAY, T0, build_chain, snap
from workers.errors import ConfigError
from workers.settings import load_settings
from workers.snapshot_retention.audit import (
    AuditAnchor,
    AuditRecord,
    plan_prune,
    verify_anchors,
    verify_chain,
)
from workers.snapshot_retention.base import retention_policy
from workers.snapshot_retention.freshness import (
    FreshnessPolicy,
    FreshnessState,
    FreshnessThresholds,
    evaluate_freshness,
    thresholds_from_durations,
)
from workers.snapshot_retention.lifecycle import ExpiryRefused, plan_expiry
from workers.snapshot_retention.records import SnapshotState
from workers.snapshot_retention.retention import plan_retention
from workers.snapshot_retention.times import format_duration, parse_duration

S = SnapshotState


# ------------------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("P7D", timedelta(days=7)),
        ("p14d", timedelta(days=14)),
        ("PT36H", timedelta(hours=36)),
        ("P1DT12H30M", timedelta(days=1, hours=12, minutes=30)),
        ("PT90S", timedelta(seconds=90)),
        ("PT0.5S", timedelta(seconds=0.5)),
        ("P2W", timedelta(weeks=2)),
    ],
)
def test_iso_8601_durations_parse(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "P", "PT", "P1DT", "7D", "P1M", "P1Y", "P-1D", "14 days"])
def test_malformed_durations_are_one_line_errors(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration") as info:
        parse_duration(text)
    assert "\n" not in str(info.value)


def test_durations_round_trip_through_format() -> None:
    for text in ("P7D", "PT5M", "P1DT2H3M4S", "PT0S"):
        assert format_duration(parse_duration(text)) == text
    assert format_duration(parse_duration("PT36H")) == "P1DT12H"


def test_thresholds_from_durations_keep_omitted_values_and_check_the_order() -> None:
    base = FreshnessThresholds()
    assert thresholds_from_durations(base, max_age="P1D") == FreshnessThresholds(
        max_age=DAY, stale_warning=14 * DAY, critical=30 * DAY
    )
    with pytest.raises(ValueError, match="max_age <= stale <= critical"):
        thresholds_from_durations(base, critical="P10D")
    with pytest.raises(ValueError, match="--stale: invalid duration"):
        thresholds_from_durations(base, stale="two weeks")


def test_a_tools_own_thresholds_decide_its_freshness() -> None:
    policy = FreshnessPolicy(
        tools={"inhouse": FreshnessThresholds(max_age=DAY, stale_warning=DAY, critical=2 * DAY)}
    )
    assert evaluate_freshness(snap("inhouse"), policy, T0 + 3 * DAY).state is (
        FreshnessState.CRITICAL
    )
    assert evaluate_freshness(snap("syft"), policy, T0 + 3 * DAY).state is FreshnessState.FRESH


# ------------------------------------------------------------------------------ expiry


@pytest.mark.parametrize("state", [S.ACTIVE, S.PREVIOUS, S.ARCHIVED])
def test_expiry_moves_a_snapshot_with_data_to_expired(state: SnapshotState) -> None:
    change = plan_expiry(snap(state=state), T0 + DAY)
    assert (change.from_state, change.to_state, change.at) == (state, S.EXPIRED, T0 + DAY)


@pytest.mark.parametrize("state", [S.EXPIRED, S.DELETED])
def test_expiry_is_refused_once_the_data_is_gone(state: SnapshotState) -> None:
    with pytest.raises(ExpiryRefused, match="only active, previous or archived"):
        plan_expiry(snap(state=state), T0 + DAY)


def test_an_expired_active_snapshot_makes_the_tool_unreadable() -> None:
    expired = plan_expiry(snap(), T0 + DAY).snapshot
    report = evaluate_freshness(expired, FreshnessPolicy(), T0 + DAY)
    assert (report.state, report.readable) == (FreshnessState.EXPIRED, False)
    assert "data unavailable" in report.reason


# ------------------------------------------------------------------------------ retention ages


def test_retention_ages_come_from_settings() -> None:
    settings = load_settings(
        {
            "FLEET_SNAPSHOT_PREVIOUS_RETENTION_DAYS": "10",
            "FLEET_SNAPSHOT_ARCHIVED_RETENTION_DAYS": "20",
            "FLEET_SNAPSHOT_AUDIT_RETENTION_DAYS": "400",
        }
    )
    policy = retention_policy(settings)
    assert (policy.previous_max_age, policy.archived_max_age) == (10 * DAY, 20 * DAY)
    assert settings.snapshot_audit_retention_days == 400
    [archive] = plan_retention([snap(day=-11, state=S.PREVIOUS)], [], T0, policy)
    assert archive.change.to_state is S.ARCHIVED
    assert plan_retention([snap(day=-9, state=S.PREVIOUS)], [], T0, policy) == []


def test_default_retention_ages_are_the_seeds() -> None:
    defaults = load_settings({})
    policy = retention_policy(defaults)
    assert (policy.previous_max_age, policy.archived_max_age) == (30 * DAY, 90 * DAY)
    assert defaults.snapshot_audit_retention_days == 365


@pytest.mark.parametrize(
    "variable",
    [
        "FLEET_SNAPSHOT_PREVIOUS_RETENTION_DAYS",
        "FLEET_SNAPSHOT_ARCHIVED_RETENTION_DAYS",
        "FLEET_SNAPSHOT_AUDIT_RETENTION_DAYS",
    ],
)
@pytest.mark.parametrize("value", ["0", "-3", "a month"])
def test_bad_retention_ages_stop_the_start_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable) as info:
        load_settings({variable: value})
    assert "\n" not in str(info.value)


def test_a_bad_retention_schedule_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="FLEET_RETENTION_SCHEDULE"):
        retention_policy(load_settings({"FLEET_RETENTION_SCHEDULE": "every night"}))


# ------------------------------------------------------------------------------ audit pruning


def dated(chain: list[AuditRecord]) -> list[AuditRecord]:
    """The chain of build_chain() with record i dated i * 100 days after T0 (re-sealed)."""
    from workers.snapshot_retention.audit import audit_body, chain_hash

    records: list[AuditRecord] = []
    previous = chain[0].prev_hash
    for i, record in enumerate(chain):
        moved = msgspec.structs.replace(record, occurred_at=T0 + i * 100 * DAY, prev_hash=previous)
        sealed = msgspec.structs.replace(
            moved, hash=chain_hash(previous, audit_body(moved.seq, moved))
        )
        records.append(sealed)
        previous = sealed.hash
    return records


def test_prune_plans_the_oldest_prefix_and_an_anchor_the_rest_verifies_from() -> None:
    chain = dated(build_chain())
    plan = plan_prune(chain, T0 + 250 * DAY, previous_anchor=None, actor="ops", at=T0)
    assert plan is not None and plan.records == 3 and plan.last == chain[2]
    anchor = plan.anchor
    assert (anchor.anchor_seq, anchor.last_seq, anchor.last_hash) == (1, 3, chain[2].hash)
    assert verify_anchors([anchor]) is None
    kept = chain[3:]
    assert verify_chain(kept, start_hash=anchor.last_hash, start_seq=anchor.last_seq) is None
    # tampering with a kept record is still caught
    forged = [msgspec.structs.replace(kept[0], actor="mallory"), *kept[1:]]
    broken = verify_chain(forged, start_hash=anchor.last_hash, start_seq=anchor.last_seq)
    assert broken is not None and broken.seq == kept[0].seq
    # and so is a kept record removed right after the anchor
    gap = verify_chain(kept[1:], start_hash=anchor.last_hash, start_seq=anchor.last_seq)
    assert gap is not None and "anchor" in gap.reason


def test_prune_never_removes_the_newest_record_nor_prunes_nothing() -> None:
    chain = dated(build_chain())
    everything = plan_prune(chain, T0 + 10_000 * DAY, previous_anchor=None, actor="ops", at=T0)
    assert everything is not None and everything.records == len(chain) - 1
    assert plan_prune(chain, T0, previous_anchor=None, actor="ops", at=T0) is None


def test_prune_refuses_a_broken_chain() -> None:
    chain = dated(build_chain())
    chain[1] = msgspec.structs.replace(chain[1], actor="mallory")
    with pytest.raises(ValueError, match="broken at audit-2"):
        plan_prune(chain, T0 + 250 * DAY, previous_anchor=None, actor="ops", at=T0)


def test_anchors_chain_and_tampering_with_one_is_detected() -> None:
    chain = dated(build_chain())
    first = plan_prune(chain, T0 + 150 * DAY, previous_anchor=None, actor="ops", at=T0)
    assert first is not None
    second = plan_prune(
        chain[first.records :], T0 + 350 * DAY, previous_anchor=first.anchor, actor="ops", at=T0
    )
    assert second is not None and second.anchor.anchor_seq == 2
    assert second.anchor.prev_hash == first.anchor.hash
    anchors: list[AuditAnchor] = [first.anchor, second.anchor]
    assert verify_anchors(anchors) is None
    edited = msgspec.structs.replace(first.anchor, last_hash=chain[0].hash)
    assert "anchor 1: hash does not match" in (verify_anchors([edited, second.anchor]) or "")
    assert "out of order" in (verify_anchors([second.anchor]) or "")
    at = datetime(2030, 1, 1, tzinfo=UTC)
    assert plan_prune(chain, at, previous_anchor=None, actor="ops", at=at) is not None
