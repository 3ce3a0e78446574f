"""The snapshot state machine, activation, rollback planning and manual expiry
(docs/snapshots.md). Pure: the service reads rows, calls these, and persists what they
return in one transaction.

Guarantees:

* A snapshot changes state only along :data:`ALLOWED_TRANSITIONS`; :func:`transition` raises
  :class:`InvalidTransition` for anything else, and every planner goes through it.
* Applying the changes of :func:`activate` or :func:`plan_rollback` in list order leaves exactly
  one active snapshot for the tool; the demotion comes first, so the database's
  one-active-per-tool index never sees two.
"""

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Final

import msgspec

from workers.snapshot_retention.ids import parse_snapshot_id
from workers.snapshot_retention.records import Snapshot, SnapshotState
from workers.snapshot_retention.times import utc

_S = SnapshotState
ALLOWED_TRANSITIONS: Final[Mapping[SnapshotState, frozenset[SnapshotState]]] = MappingProxyType(
    {
        # superseded by a newer activation or a rollback; or expired by hand
        _S.ACTIVE: frozenset({_S.PREVIOUS, _S.EXPIRED}),
        # rollback target; archived by retention; or expired by hand
        _S.PREVIOUS: frozenset({_S.ACTIVE, _S.ARCHIVED, _S.EXPIRED}),
        # the object still exists until deletion, so a named rollback may still use it
        _S.ARCHIVED: frozenset({_S.ACTIVE, _S.DELETED, _S.EXPIRED}),
        # expiry declares the data unusable: the only way on is removal
        _S.EXPIRED: frozenset({_S.DELETED}),
        # the object is gone; the record stays as history
        _S.DELETED: frozenset(),
    }
)
ROLLBACK_TARGET_STATES: Final = frozenset({_S.PREVIOUS, _S.ARCHIVED})


class InvalidTransition(ValueError):
    """A state change that :data:`ALLOWED_TRANSITIONS` does not allow."""

    def __init__(self, snapshot_id: str, from_state: SnapshotState, to_state: SnapshotState):
        allowed = ", ".join(sorted(ALLOWED_TRANSITIONS[from_state])) or "none"
        super().__init__(
            f"snapshot {snapshot_id}: cannot go from {from_state} to {to_state} "
            f"(allowed from {from_state}: {allowed})"
        )
        self.snapshot_id = snapshot_id
        self.from_state = from_state
        self.to_state = to_state


class StateChange(msgspec.Struct, frozen=True, kw_only=True):
    """One row change. ``snapshot`` is the record after the change; ``from_state`` is None
    when the record is new (insert rather than update)."""

    snapshot: Snapshot
    from_state: SnapshotState | None

    @property
    def snapshot_id(self) -> str:
        return self.snapshot.snapshot_id

    @property
    def to_state(self) -> SnapshotState:
        return self.snapshot.state

    @property
    def at(self) -> datetime:
        return self.snapshot.state_changed_at


def transition(snapshot: Snapshot, new_state: SnapshotState, at: datetime) -> Snapshot:
    """Return ``snapshot`` in ``new_state`` as of ``at``, or raise :class:`InvalidTransition`."""
    utc("at", at)
    if new_state not in ALLOWED_TRANSITIONS[snapshot.state]:
        raise InvalidTransition(snapshot.snapshot_id, snapshot.state, new_state)
    return msgspec.structs.replace(snapshot, state=new_state, state_changed_at=at)


def change_to(snapshot: Snapshot, new_state: SnapshotState, at: datetime) -> StateChange:
    return StateChange(snapshot=transition(snapshot, new_state, at), from_state=snapshot.state)


def index_snapshots(snapshots: Iterable[Snapshot], tool: str | None = None) -> dict[str, Snapshot]:
    """Snapshots by id; refuses duplicates and, when ``tool`` is given, other tools."""
    index: dict[str, Snapshot] = {}
    for snapshot in snapshots:
        if tool is not None and snapshot.tool != tool:
            raise ValueError(
                f"snapshot {snapshot.snapshot_id} belongs to {snapshot.tool}, not {tool}"
            )
        if snapshot.snapshot_id in index:
            raise ValueError(f"snapshot {snapshot.snapshot_id} is listed twice")
        index[snapshot.snapshot_id] = snapshot
    return index


def current_active(snapshots: Collection[Snapshot]) -> Snapshot | None:
    active = sorted(s.snapshot_id for s in snapshots if s.state is _S.ACTIVE)
    if len(active) > 1:
        raise ValueError(f"several active snapshots for one tool ({', '.join(active)})")
    return None if not active else next(s for s in snapshots if s.snapshot_id == active[0])


def recency(snapshot: Snapshot) -> tuple[datetime, str]:
    # Ids of one tool sort chronologically (fixed-width stamp, then sequence), so the id breaks
    # ties between imports stamped with the same instant.
    return (snapshot.imported_at, snapshot.snapshot_id)


def activate(
    snapshots_of_tool: Iterable[Snapshot], new_snapshot: Snapshot, at: datetime
) -> list[StateChange]:
    """Make a newly imported snapshot the tool's active one.

    Returns the changes in the order to apply them: the current active snapshot (if any)
    becomes ``previous``, then the new record is inserted as ``active`` with
    ``previous_snapshot`` naming the one it replaced. The planner owns the new record's
    ``state``, ``previous_snapshot`` and ``state_changed_at``. Re-activating a stored snapshot
    is a rollback: use :func:`plan_rollback`.
    """
    existing = index_snapshots(snapshots_of_tool, new_snapshot.tool)
    if new_snapshot.snapshot_id in existing:
        raise ValueError(
            f"snapshot {new_snapshot.snapshot_id} is already stored; "
            "re-activating a stored snapshot is a rollback"
        )
    current = current_active(existing.values())
    changes = [] if current is None else [change_to(current, _S.PREVIOUS, at)]
    entered = msgspec.structs.replace(
        new_snapshot,
        state=_S.ACTIVE,
        state_changed_at=utc("at", at),
        previous_snapshot=None if current is None else current.snapshot_id,
    )
    changes.append(StateChange(snapshot=entered, from_state=None))
    return changes


# --------------------------------------------------------------------------------------------
# rollback


class RollbackTrigger(StrEnum):
    """Why a rollback happens (the ``trigger`` label of ``snapshot_rollbacks_total``)."""

    IMPORT_FAILURE = "import_failure"
    VALIDATION_FAILURE = "validation_failure"
    DATA_CORRUPTION = "data_corruption"
    COMPLIANCE = "compliance"
    USER_REQUEST = "user_request"

    @property
    def automatic(self) -> bool:
        """Automatic triggers always go back to the previous snapshot, never a named one."""
        return self in (RollbackTrigger.IMPORT_FAILURE, RollbackTrigger.VALIDATION_FAILURE)


class RollbackRefused(ValueError):
    """The rollback target failed verification; nothing may change."""


class RollbackPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What a rollback will do. ``current`` and ``target`` are as before the rollback;
    ``changes`` are applied in order (demote ``current``, then activate ``target``)."""

    tool: str
    trigger: RollbackTrigger
    current: Snapshot | None
    target: Snapshot
    changes: tuple[StateChange, ...]
    at: datetime

    @property
    def records_affected(self) -> int:
        """Difference in record count between the snapshots swapped (the seed's figure)."""
        before = 0 if self.current is None else self.current.record_count
        return abs(before - self.target.record_count)


def _default_target(snapshots: Iterable[Snapshot], current: Snapshot | None) -> Snapshot:
    # Only snapshots older than the active one: a second "rollback to previous" keeps walking
    # back instead of undoing the first (undoing means naming the snapshot explicitly).
    candidates = [
        s
        for s in snapshots
        if s.state is _S.PREVIOUS and (current is None or recency(s) < recency(current))
    ]
    if not candidates:
        older = "" if current is None else f" older than the active {current.snapshot_id}"
        raise RollbackRefused(f"no previous snapshot{older} to roll back to; name a target")
    return max(candidates, key=recency)


def plan_rollback(
    snapshots_of_tool: Iterable[Snapshot],
    target_id: str | None,
    at: datetime,
    *,
    trigger: RollbackTrigger = RollbackTrigger.USER_REQUEST,
) -> RollbackPlan:
    """Verify a rollback target and plan the state changes (the seed's "verify target" step).

    With ``target_id=None`` the target is the most recently imported ``previous`` snapshot
    older than the active one. A named target must be a stored snapshot of the same tool in
    ``previous`` or ``archived`` state. Raises :class:`RollbackRefused` otherwise.
    """
    snapshots = list(snapshots_of_tool)
    if not snapshots:
        raise RollbackRefused("nothing to roll back: the tool has no snapshots")
    tool = snapshots[0].tool
    index = index_snapshots(snapshots, tool)
    current = current_active(index.values())
    if target_id is None:
        target = _default_target(index.values(), current)
    elif trigger.automatic:
        raise RollbackRefused(f"a {trigger} rollback always goes to the previous snapshot")
    else:
        found = index.get(target_id)
        if found is None:
            try:
                owner = parse_snapshot_id(target_id).tool
            except ValueError as exc:
                raise RollbackRefused(str(exc)) from None
            if owner != tool:
                raise RollbackRefused(f"snapshot {target_id} belongs to {owner}, not {tool}")
            raise RollbackRefused(f"snapshot {target_id} does not exist")
        target = found
    if target.state not in ROLLBACK_TARGET_STATES:
        detail = "already active" if target.state is _S.ACTIVE else f"{target.state}"
        raise RollbackRefused(
            f"snapshot {target.snapshot_id} is {detail}; a rollback target must be "
            "previous or archived"
        )
    demote = [] if current is None else [change_to(current, _S.PREVIOUS, at)]
    return RollbackPlan(
        tool=tool,
        trigger=trigger,
        current=current,
        target=target,
        changes=(*demote, change_to(target, _S.ACTIVE, at)),
        at=utc("at", at),
    )


# --------------------------------------------------------------------------------------------
# manual expiry


class ExpiryRefused(ValueError):
    """The snapshot cannot be expired (already expired or deleted); nothing may change."""


def plan_expiry(snapshot: Snapshot, at: datetime) -> StateChange:
    """Expire ``snapshot`` by hand: its data becomes unavailable (reads are refused) and only
    deletion may follow. Any state that keeps data may be expired, the active one included:
    the tool is then left without readable data until a new import or a rollback."""
    if (
        snapshot.state not in ALLOWED_TRANSITIONS
        or _S.EXPIRED not in ALLOWED_TRANSITIONS[snapshot.state]
    ):
        raise ExpiryRefused(
            f"snapshot {snapshot.snapshot_id} is {snapshot.state}; only active, previous or "
            "archived snapshots can be expired"
        )
    return change_to(snapshot, _S.EXPIRED, at)
