"""Freshness of a tool's data: thresholds (fleet defaults plus per-tool overrides), the
``fresh``/``stale``/``critical``/``expired`` states and the read rule (docs/snapshots.md).
Pure; instants are passed in."""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import msgspec

from workers.snapshot_retention.ids import validate_tool
from workers.snapshot_retention.lifecycle import current_active
from workers.snapshot_retention.records import Snapshot, SnapshotState
from workers.snapshot_retention.times import format_duration, rfc3339, utc

_S = SnapshotState


class FreshnessState(StrEnum):
    FRESH = "fresh"
    STALE = "stale"
    CRITICAL = "critical"
    EXPIRED = "expired"


class FreshnessThresholds(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Ages measured from ``imported_at``: ``fresh`` below ``max_age``; ``stale`` from it, with a
    warning from ``stale_warning``; ``critical`` from ``critical``. Decodes from the seed's
    ``{"maxAge": "P7D", "stale": "P14D", "critical": "P30D"}``."""

    max_age: timedelta = timedelta(days=7)
    stale_warning: timedelta = msgspec.field(default=timedelta(days=14), name="stale")
    critical: timedelta = timedelta(days=30)

    def __post_init__(self) -> None:
        if not timedelta(0) < self.max_age <= self.stale_warning <= self.critical:
            raise ValueError(
                "freshness thresholds need 0 < max_age <= stale <= critical, got "
                f"{format_duration(abs(self.max_age))}, {format_duration(abs(self.stale_warning))}"
                f", {format_duration(abs(self.critical))}"
            )


class FreshnessPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Default thresholds plus per-tool overrides (built-in and custom tools alike)."""

    default: FreshnessThresholds = msgspec.field(default_factory=FreshnessThresholds)
    tools: dict[str, FreshnessThresholds] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        for tool in self.tools:
            validate_tool(tool)

    def for_tool(self, tool: str) -> FreshnessThresholds:
        return self.tools.get(tool, self.default)


class FreshnessReport(msgspec.Struct, frozen=True, kw_only=True):
    """Freshness of one tool's data at ``evaluated_at``.

    ``warning``: an alert should fire (stale past the warning threshold, critical, expired).
    ``readable``: the active snapshot may be read without an override (fresh or stale).
    ``next_check``: when the state or warning flag next changes by ageing alone (None once
    nothing more can change).
    """

    tool: str
    state: FreshnessState
    warning: bool
    readable: bool
    reason: str
    thresholds: FreshnessThresholds
    evaluated_at: datetime
    snapshot_id: str | None = None
    imported_at: datetime | None = None
    age: timedelta | None = None
    next_check: datetime | None = None


class ReadRefused(Exception):
    """Reading the tool's data is not allowed in its freshness state."""


def evaluate_freshness(
    snapshot: Snapshot | None,
    thresholds: FreshnessThresholds | FreshnessPolicy,
    now: datetime,
    *,
    tool: str | None = None,
) -> FreshnessReport:
    """Freshness of the tool's current snapshot at ``now``.

    ``snapshot`` is the tool's active snapshot, a manually expired one, or None when the tool
    has no active snapshot (then ``tool`` is required). No readable data is reported as
    ``expired``, the seed's "data unavailable" state. Boundaries: age == max_age is stale,
    age == stale threshold warns, age == critical is critical.
    """
    now = utc("now", now)
    if snapshot is None:
        if tool is None:
            raise ValueError("tool is required when there is no snapshot to evaluate")
        name = validate_tool(tool)
    else:
        if tool is not None and tool != snapshot.tool:
            raise ValueError(f"snapshot {snapshot.snapshot_id} does not belong to {tool}")
        name = snapshot.tool
    limits = thresholds.for_tool(name) if isinstance(thresholds, FreshnessPolicy) else thresholds
    if snapshot is None:
        return FreshnessReport(
            tool=name,
            state=FreshnessState.EXPIRED,
            warning=True,
            readable=False,
            reason="no active snapshot: data unavailable",
            thresholds=limits,
            evaluated_at=now,
        )
    if snapshot.state not in (_S.ACTIVE, _S.EXPIRED):
        raise ValueError(
            f"snapshot {snapshot.snapshot_id} is {snapshot.state}; freshness is evaluated "
            "for the active (or an expired) snapshot"
        )
    # An import stamped slightly ahead of this clock (skew between hosts) counts as brand new.
    age = max(now - snapshot.imported_at, timedelta(0))
    shown = format_duration(age)
    next_check: datetime | None = None
    if snapshot.state is _S.EXPIRED:
        state, warning, readable = FreshnessState.EXPIRED, True, False
        reason = f"expired manually at {rfc3339(snapshot.state_changed_at)}: data unavailable"
    elif age < limits.max_age:
        state, warning, readable = FreshnessState.FRESH, False, True
        reason = f"age {shown} < max age {format_duration(limits.max_age)}"
        next_check = snapshot.imported_at + limits.max_age
    elif age < limits.critical:
        state, readable = FreshnessState.STALE, True
        warning = age >= limits.stale_warning
        if warning:
            reason = f"age {shown} >= stale threshold {format_duration(limits.stale_warning)}"
            next_check = snapshot.imported_at + limits.critical
        else:
            reason = f"age {shown} >= max age {format_duration(limits.max_age)}"
            next_check = snapshot.imported_at + limits.stale_warning
    else:
        state, warning, readable = FreshnessState.CRITICAL, True, False
        reason = (
            f"age {shown} >= critical threshold {format_duration(limits.critical)}: "
            "reading requires an explicit override"
        )
    return FreshnessReport(
        tool=name,
        state=state,
        warning=warning,
        readable=readable,
        reason=reason,
        thresholds=limits,
        evaluated_at=now,
        snapshot_id=snapshot.snapshot_id,
        imported_at=snapshot.imported_at,
        age=age,
        next_check=None if next_check is None else next_check.astimezone(UTC),
    )


def require_readable(report: FreshnessReport, *, override: bool = False) -> None:
    """Raise :class:`ReadRefused` unless the tool's data may be read: critical data needs
    ``override``; expired (or missing) data is never readable."""
    if report.state is FreshnessState.EXPIRED or (
        report.state is FreshnessState.CRITICAL and not override
    ):
        subject = report.snapshot_id or "no snapshot"
        raise ReadRefused(f"{report.tool} ({subject}) is {report.state}: {report.reason}")


def tool_report(
    tool: str,
    snapshots: Sequence[Snapshot],
    thresholds: FreshnessThresholds | FreshnessPolicy,
    now: datetime,
) -> FreshnessReport:
    current = current_active(snapshots)
    if current is None:
        expired = [s for s in snapshots if s.state is _S.EXPIRED]
        current = max(expired, key=lambda s: (s.state_changed_at, s.snapshot_id), default=None)
    return evaluate_freshness(current, thresholds, now, tool=tool)
