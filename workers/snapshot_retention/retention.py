"""Retention planning: the seed's rules (previous -> archived -> deleted), holds that block
them, and the cron schedule (docs/snapshots.md). Pure.

Guarantees: :func:`plan_retention` never touches an active (or expired) snapshot, never acts
on a snapshot covered by a hold that is still in force, and never removes an object that a
snapshot keeping its data still references.
"""

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Final

import msgspec
from croniter import croniter

from workers.snapshot_retention.ids import parse_snapshot_id, validate_tool
from workers.snapshot_retention.lifecycle import StateChange, change_to, index_snapshots
from workers.snapshot_retention.records import Snapshot, SnapshotState
from workers.snapshot_retention.times import format_duration, rfc3339, utc

_S = SnapshotState


class RetentionPolicy(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The seed's retention table: previous snapshots are archived ``previous_max_age`` after
    they became previous; archived ones are deleted (object removed, record kept)
    ``archived_max_age`` after they were archived. Active snapshots have no rule."""

    previous_max_age: timedelta = timedelta(days=30)
    archived_max_age: timedelta = timedelta(days=90)
    schedule: str = "0 0 * * *"

    def __post_init__(self) -> None:
        if self.previous_max_age <= timedelta(0) or self.archived_max_age <= timedelta(0):
            raise ValueError("retention ages must be positive")
        if not bool(croniter.is_valid(self.schedule)):
            raise ValueError(f"retention schedule {self.schedule!r} is not a cron expression")


DEFAULT_RETENTION: Final = RetentionPolicy()


def next_retention_run(policy: RetentionPolicy, after: datetime) -> datetime:
    """The first scheduled retention run strictly after ``after`` (UTC cron)."""
    upcoming: datetime = croniter(policy.schedule, utc("after", after)).get_next(datetime)
    return upcoming.astimezone(UTC)


class RetentionHold(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A retention exception (audit hold): blocks every retention action for one snapshot or
    for every snapshot of a tool, until ``expires_at`` (exclusive) or indefinitely."""

    reason: str
    snapshot_id: str | None = None
    tool: str | None = None
    expires_at: datetime | None = None
    hold_id: int | None = None
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        if (self.snapshot_id is None) == (self.tool is None):
            raise ValueError("a retention hold names exactly one of snapshot_id or tool")
        if self.snapshot_id is not None:
            parse_snapshot_id(self.snapshot_id)
        if self.tool is not None:
            validate_tool(self.tool)
        if not self.reason.strip():
            raise ValueError("a retention hold needs a reason")
        if self.expires_at is not None:
            utc("expires_at", self.expires_at)
        if self.created_at is not None:
            utc("created_at", self.created_at)

    def in_force(self, now: datetime) -> bool:
        return self.expires_at is None or utc("now", now) < self.expires_at

    def covers(self, snapshot: Snapshot) -> bool:
        return snapshot.snapshot_id == self.snapshot_id or snapshot.tool == self.tool

    def describe(self) -> str:
        name = "hold" if self.hold_id is None else f"hold {self.hold_id}"
        scope = self.snapshot_id if self.snapshot_id is not None else f"all of {self.tool}"
        until = "indefinitely" if self.expires_at is None else f"until {rfc3339(self.expires_at)}"
        return f"{name} on {scope} ({self.reason}) {until}"


class RetentionActionKind(StrEnum):
    """The ``action`` label of ``snapshot_retention_actions_total``."""

    ARCHIVE = "archive"
    DELETE = "delete"


class RetentionAction(msgspec.Struct, frozen=True, kw_only=True):
    """One retention step: apply ``change``; for a delete with ``remove_object``, also remove
    ``object_key`` from the store. ``reason`` is the dry-run line."""

    kind: RetentionActionKind
    change: StateChange
    due_at: datetime
    object_key: str
    remove_object: bool
    reason: str

    @property
    def snapshot_id(self) -> str:
        return self.change.snapshot_id

    @property
    def tool(self) -> str:
        return self.change.snapshot.tool


class HeldAction(msgspec.Struct, frozen=True, kw_only=True):
    """A retention action that is due but blocked by holds in force."""

    action: RetentionAction
    holds: tuple[RetentionHold, ...]

    @property
    def reason(self) -> str:
        return f"{self.action.reason}; held: " + "; ".join(h.describe() for h in self.holds)


_RULES: Final[Mapping[SnapshotState, tuple[RetentionActionKind, SnapshotState]]] = MappingProxyType(
    {
        _S.PREVIOUS: (RetentionActionKind.ARCHIVE, _S.ARCHIVED),
        _S.ARCHIVED: (RetentionActionKind.DELETE, _S.DELETED),
    }
)


def _max_age(policy: RetentionPolicy, state: SnapshotState) -> timedelta:
    return policy.previous_max_age if state is _S.PREVIOUS else policy.archived_max_age


def _plan(
    snapshots: Iterable[Snapshot],
    holds: Iterable[RetentionHold],
    now: datetime,
    policy: RetentionPolicy,
) -> tuple[list[RetentionAction], list[HeldAction]]:
    now = utc("now", now)
    index = index_snapshots(snapshots)
    in_force = [hold for hold in holds if hold.in_force(now)]
    due: list[tuple[Snapshot, RetentionActionKind, SnapshotState, timedelta]] = []
    # (tool, id) order: ids of one tool sort chronologically, so plans and dry-runs are stable.
    for snapshot in sorted(index.values(), key=lambda s: (s.tool, s.snapshot_id)):
        rule = _RULES.get(snapshot.state)  # active, expired and deleted have no rule
        if rule is None:
            continue
        max_age = _max_age(policy, snapshot.state)
        if now - snapshot.state_changed_at >= max_age:
            due.append((snapshot, *rule, max_age))

    blocked = {
        snapshot.snapshot_id: tuple(h for h in in_force if h.covers(snapshot))
        for snapshot, *_ in due
    }
    deleting = {
        snapshot.snapshot_id
        for snapshot, kind, _, _ in due
        if kind is RetentionActionKind.DELETE and not blocked[snapshot.snapshot_id]
    }
    # Payloads are content-addressed, so two snapshots of a tool with identical content share
    # one object; it may go only when no snapshot that keeps its data still points at it.
    holders: dict[str, list[str]] = {}
    for snapshot in index.values():
        if snapshot.state is not _S.DELETED and snapshot.snapshot_id not in deleting:
            holders.setdefault(snapshot.object_key, []).append(snapshot.snapshot_id)
    claimed: set[str] = set()

    actions: list[RetentionAction] = []
    held: list[HeldAction] = []
    for snapshot, kind, target, max_age in due:
        since = snapshot.state_changed_at
        reason = (
            f"{snapshot.snapshot_id}: {snapshot.state} since {rfc3339(since)} "
            f"({format_duration(now - since)} >= {format_duration(max_age)}): "
        )
        remove = False
        if kind is RetentionActionKind.ARCHIVE:
            reason += "archive"
        else:
            reason += "delete the object, keep the record"
            users = sorted(
                user
                for user in holders.get(snapshot.object_key, [])
                if user != snapshot.snapshot_id
            )
            if blocked[snapshot.snapshot_id]:
                pass  # held: nothing is removed, the HeldAction says why
            elif users:
                reason += f" (object kept: still used by {', '.join(users)})"
            elif snapshot.object_key in claimed:
                reason += " (object removed by an earlier action of this plan)"
            else:
                remove = True
                claimed.add(snapshot.object_key)
        action = RetentionAction(
            kind=kind,
            change=change_to(snapshot, target, now),
            due_at=since + max_age,
            object_key=snapshot.object_key,
            remove_object=remove,
            reason=reason,
        )
        if blocked[snapshot.snapshot_id]:
            held.append(HeldAction(action=action, holds=blocked[snapshot.snapshot_id]))
        else:
            actions.append(action)
    return actions, held


def plan_retention(
    snapshots: Iterable[Snapshot],
    holds: Iterable[RetentionHold],
    now: datetime,
    policy: RetentionPolicy = DEFAULT_RETENTION,
) -> list[RetentionAction]:
    """The retention actions due at ``now``, ordered by (tool, snapshot id).

    ``previous`` for at least ``previous_max_age`` since ``state_changed_at`` -> archive;
    ``archived`` for at least ``archived_max_age`` -> delete (record kept, object removed when
    nothing else uses it). Active, expired and deleted snapshots are never touched. A
    snapshot covered by a hold in force gets no action (see :func:`held_retention`).
    """
    return _plan(snapshots, holds, now, policy)[0]


def held_retention(
    snapshots: Iterable[Snapshot],
    holds: Iterable[RetentionHold],
    now: datetime,
    policy: RetentionPolicy = DEFAULT_RETENTION,
) -> list[HeldAction]:
    """The retention actions that are due at ``now`` but blocked by holds, for the dry-run."""
    return _plan(snapshots, holds, now, policy)[1]


def blocking_holds(
    snapshot: Snapshot, holds: Iterable[RetentionHold], now: datetime
) -> tuple[RetentionHold, ...]:
    """Holds in force that cover ``snapshot`` (a manual delete checks this too)."""
    return tuple(h for h in holds if h.in_force(now) and h.covers(snapshot))
