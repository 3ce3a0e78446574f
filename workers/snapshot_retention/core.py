"""Pure core of feed-snapshot governance: ids, records, freshness, the state machine, rollback
and retention planning, the audit hash chain and content addressing.

Snapshots are named ``{tool}-{YYYYMMDDTHHMMSSZ}-{seq:03d}``, move along
``active -> previous -> archived -> deleted`` (plus the manual ``expired``), and every change
is recorded in a BLAKE3 hash-chained audit log. This module decides; the worker shell reads
rows and objects, calls it, and persists what it returns in one transaction.

Guarantees:

* No I/O and no awaits; results depend only on the arguments. Instants (``now``, ``at``) are
  always passed in, never read from a clock, and must be timezone-aware.
* A snapshot changes state only along :data:`ALLOWED_TRANSITIONS`; :func:`transition` raises
  :class:`InvalidTransition` for anything else, and every planner goes through it.
* Applying the changes of :func:`activate` or :func:`plan_rollback` in list order leaves exactly
  one active snapshot for the tool; the demotion comes first, so the database's
  one-active-per-tool index never sees two.
* :func:`plan_retention` never touches an active (or expired) snapshot, never acts on a snapshot
  covered by a hold that is still in force, and never removes an object that a snapshot keeping
  its data still references.
* :func:`chain_hash` covers every audit column except the record's own hash, so
  :func:`verify_chain` names the first record whose content, order or linkage was altered.
"""

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Final, Literal, overload

import msgspec
from blake3 import blake3
from croniter import croniter

# --------------------------------------------------------------------------------------------
# small helpers


def _utc(name: str, value: datetime) -> datetime:
    """Return ``value`` in UTC; naive datetimes are refused because their instant is unknown."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def rfc3339(value: datetime) -> str:
    """Render an aware datetime as RFC 3339 in UTC (``2025-12-04T00:00:00Z``, microseconds
    only when non-zero)."""
    return _utc("datetime", value).isoformat().replace("+00:00", "Z")


def format_duration(value: timedelta) -> str:
    """ISO 8601 duration in whole seconds, largest units first: ``P2D``, ``P1DT2H30M``,
    ``PT0S``. Sub-second parts are dropped (ages are reported to the second)."""
    if value < timedelta(0):
        raise ValueError(f"duration must not be negative, got {value}")
    total = value.days * 86_400 + value.seconds
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, seconds = divmod(rest, 60)
    date_part = f"{days}D" if days else ""
    time_part = "".join(
        f"{amount}{unit}"
        for amount, unit in ((hours, "H"), (minutes, "M"), (seconds, "S"))
        if amount
    )
    if not date_part and not time_part:
        return "PT0S"
    return "P" + date_part + (f"T{time_part}" if time_part else "")


# --------------------------------------------------------------------------------------------
# snapshot ids: {tool}-{YYYYMMDDTHHMMSSZ}-{seq:03d}

# Lowercase letters, digits, '-' and '_': safe in S3 keys, SQL literals and file names. Tools
# may contain hyphens, which is why ids are parsed from the right.
_TOOL_RE: Final = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?")
# [0-9] rather than \d: \d also matches non-ASCII digits.
_STAMP_RE: Final = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})T([0-9]{2})([0-9]{2})([0-9]{2})Z")
_SEQ_RE: Final = re.compile(r"[0-9]{3}")
MAX_SEQ: Final = 999
_ID_FORMAT: Final = "{tool}-{YYYYMMDDTHHMMSSZ}-{seq:03d}"


def validate_tool(tool: str) -> str:
    """Return ``tool`` if it is a valid tool name, else raise ValueError."""
    if not _TOOL_RE.fullmatch(tool):
        raise ValueError(
            f"invalid tool name {tool!r}: use 1-64 lowercase letters, digits, '-' or '_', "
            "starting and ending with a letter or digit"
        )
    return tool


class SnapshotId(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed snapshot id. ``at`` is UTC with whole seconds."""

    tool: str
    at: datetime
    seq: int

    def __str__(self) -> str:
        return make_snapshot_id(self.tool, self.at, self.seq)


def make_snapshot_id(tool: str, at: datetime, seq: int) -> str:
    """Build ``{tool}-{YYYYMMDDTHHMMSSZ}-{seq:03d}``. ``at`` is converted to UTC and truncated
    to the second (the record's ``imported_at`` keeps full precision); ``seq`` is 1..999."""
    validate_tool(tool)
    if isinstance(seq, bool) or not 1 <= seq <= MAX_SEQ:
        raise ValueError(f"snapshot sequence must be 1..{MAX_SEQ}, got {seq!r}")
    t = _utc("at", at)
    # Explicit widths: strftime('%Y') does not zero-pad years before 1000 on every platform.
    stamp = f"{t.year:04d}{t.month:02d}{t.day:02d}T{t.hour:02d}{t.minute:02d}{t.second:02d}Z"
    return f"{tool}-{stamp}-{seq:03d}"


def parse_snapshot_id(value: str) -> SnapshotId:
    """Parse a snapshot id, raising ValueError that names the offending part."""
    parts = value.rsplit("-", 2)
    if len(parts) != 3:
        raise ValueError(f"invalid snapshot id {value!r}: expected {_ID_FORMAT}")
    tool, stamp, seq_text = parts
    if not _TOOL_RE.fullmatch(tool):
        raise ValueError(f"invalid snapshot id {value!r}: bad tool name {tool!r}")
    match = _STAMP_RE.fullmatch(stamp)
    if match is None:
        raise ValueError(
            f"invalid snapshot id {value!r}: timestamp {stamp!r} is not YYYYMMDDTHHMMSSZ"
        )
    year, month, day, hour, minute, second = (int(group) for group in match.groups())
    try:
        at = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        raise ValueError(
            f"invalid snapshot id {value!r}: {stamp} is not a real UTC instant"
        ) from None
    if not _SEQ_RE.fullmatch(seq_text) or seq_text == "000":
        raise ValueError(f"invalid snapshot id {value!r}: sequence {seq_text!r} is not 001..999")
    return SnapshotId(tool=tool, at=at, seq=int(seq_text))


def next_snapshot_id(tool: str, at: datetime, existing_ids: Iterable[str]) -> str:
    """The id for a new snapshot of ``tool`` at ``at``: sequence one past the highest already
    used for the same tool and second."""
    first = parse_snapshot_id(make_snapshot_id(tool, at, 1))
    used = [
        parsed.seq
        for parsed in map(parse_snapshot_id, existing_ids)
        if parsed.tool == first.tool and parsed.at == first.at
    ]
    seq = max(used, default=0) + 1
    if seq > MAX_SEQ:
        raise ValueError(f"{tool} already has {MAX_SEQ} snapshots stamped {rfc3339(first.at)}")
    return make_snapshot_id(tool, at, seq)


# --------------------------------------------------------------------------------------------
# hashes and content addressing

B3_PREFIX: Final = "b3:"
_B3_RE: Final = re.compile(r"b3:[0-9a-f]{64}")


def b3_digest(data: bytes) -> str:
    """``b3:`` + lowercase hex BLAKE3-256 of ``data``."""
    return B3_PREFIX + blake3(data).hexdigest()


def _check_b3(name: str, value: str) -> str:
    if not _B3_RE.fullmatch(value):
        raise ValueError(f"{name} must be 'b3:' + 64 lowercase hex digits, got {value!r}")
    return value


def object_key(tool: str, normalized_hash: str) -> str:
    """Content-addressed S3 key of a snapshot payload:
    ``snapshots/{tool}/{hex[:2]}/{hex}.json`` (the two-character fan-out keeps listings short)."""
    validate_tool(tool)
    digest = _check_b3("normalized_hash", normalized_hash).removeprefix(B3_PREFIX)
    return f"snapshots/{tool}/{digest[:2]}/{digest}.json"


# --------------------------------------------------------------------------------------------
# snapshot records


class SnapshotState(StrEnum):
    ACTIVE = "active"
    PREVIOUS = "previous"
    ARCHIVED = "archived"
    EXPIRED = "expired"
    DELETED = "deleted"


class Snapshot(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One imported feed snapshot (a row of ``ingest.feed_snapshots``).

    Encodes to the seed's JSON record (``id``, ``toolVersion``, ``importedAt`` ...) plus
    ``objectKey`` and ``stateChangedAt``. Construction validates the id, hashes and instants.
    """

    snapshot_id: str = msgspec.field(name="id")
    tool: str
    tool_version: str
    imported_at: datetime
    source_hash: str
    normalized_hash: str
    record_count: int
    state: SnapshotState
    previous_snapshot: str | None = None
    object_key: str
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    # When the snapshot entered ``state``; retention ages are measured from here.
    state_changed_at: datetime

    def __post_init__(self) -> None:
        parsed = parse_snapshot_id(self.snapshot_id)
        if parsed.tool != self.tool:
            raise ValueError(
                f"snapshot {self.snapshot_id}: tool {self.tool!r} differs from the id's tool"
            )
        if not self.tool_version:
            raise ValueError(f"snapshot {self.snapshot_id}: tool_version is empty")
        _check_b3("source_hash", self.source_hash)
        _check_b3("normalized_hash", self.normalized_hash)
        if self.record_count < 0:
            raise ValueError(f"snapshot {self.snapshot_id}: record_count is negative")
        _utc("imported_at", self.imported_at)
        _utc("state_changed_at", self.state_changed_at)
        if not self.object_key:
            raise ValueError(f"snapshot {self.snapshot_id}: object_key is empty")
        if self.previous_snapshot is not None:
            previous = parse_snapshot_id(self.previous_snapshot)
            if previous.tool != self.tool or self.previous_snapshot == self.snapshot_id:
                raise ValueError(
                    f"snapshot {self.snapshot_id}: previous_snapshot {self.previous_snapshot} "
                    "must be another snapshot of the same tool"
                )


class NormalizedPayload(msgspec.Struct, frozen=True, kw_only=True):
    """A validated payload in canonical form, ready to store under :func:`object_key`."""

    normalized: bytes
    record_count: int
    source_hash: str
    normalized_hash: str


class PayloadMismatch(ValueError):
    """A stored payload's bytes do not hash to the snapshot's ``normalized_hash``."""


def _json_kind(value: object) -> str:
    kinds: dict[type, str] = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _records_of(document: object, records_key: str | None) -> list[object]:
    if isinstance(document, list):
        if records_key is not None:
            raise ValueError(f"payload is a JSON array, but records_key {records_key!r} was given")
        return document
    if isinstance(document, dict):
        return _records_in_object(document, records_key)
    raise ValueError(
        f"payload is {_json_kind(document)}; expected an array of records or an object holding one"
    )


def _records_in_object(document: dict[str, object], records_key: str | None) -> list[object]:
    if records_key is not None:
        found = document.get(records_key)
        if not isinstance(found, list):
            raise ValueError(f"payload object has no array under {records_key!r}")
        return found
    arrays = {key: value for key, value in document.items() if isinstance(value, list)}
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    if not arrays:
        raise ValueError("payload object holds no array of records")
    raise ValueError(
        f"payload object holds several arrays ({', '.join(sorted(arrays))}); "
        "pass records_key to name the one holding the records"
    )


def normalize_payload(
    data: bytes, *, records_key: str | None = None, allow_empty: bool = False
) -> NormalizedPayload:
    """Validate a feed payload and return its canonical form and hashes.

    The payload must be JSON: an array of record objects, or an object holding one array of
    them (``records_key`` names it when the object holds several). Canonical form is compact
    JSON with object keys sorted, so key order and whitespace never change
    ``normalized_hash``. An empty record list is refused unless ``allow_empty``: an empty
    import replacing a good snapshot is the classic feed outage.
    """
    try:
        document: object = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise ValueError(f"payload is not valid JSON: {exc}") from None
    records = _records_of(document, records_key)
    odd = next((i for i, record in enumerate(records) if not isinstance(record, dict)), None)
    if odd is not None:
        raise ValueError(f"record {odd} is {_json_kind(records[odd])}; expected an object")
    if not records and not allow_empty:
        raise ValueError("payload holds no records; refusing to import an empty snapshot")
    normalized = msgspec.json.encode(document, order="sorted")
    return NormalizedPayload(
        normalized=normalized,
        record_count=len(records),
        source_hash=b3_digest(bytes(data)),
        normalized_hash=b3_digest(normalized),
    )


def verify_payload(snapshot: Snapshot, data: bytes) -> None:
    """Raise :class:`PayloadMismatch` unless ``data`` is the snapshot's stored payload."""
    actual = b3_digest(data)
    if actual != snapshot.normalized_hash:
        raise PayloadMismatch(
            f"object {snapshot.object_key} hashes to {actual}, but snapshot "
            f"{snapshot.snapshot_id} expects {snapshot.normalized_hash}"
        )


def snapshot_from_import(
    *,
    tool: str,
    tool_version: str,
    imported_at: datetime,
    seq: int,
    payload: NormalizedPayload,
    metadata: Mapping[str, str] | None = None,
) -> Snapshot:
    """The record for a freshly imported payload, ready to pass to :func:`activate` (which
    sets its final state, ``previous_snapshot`` and ``state_changed_at``)."""
    return Snapshot(
        snapshot_id=make_snapshot_id(tool, imported_at, seq),
        tool=tool,
        tool_version=tool_version,
        imported_at=imported_at,
        source_hash=payload.source_hash,
        normalized_hash=payload.normalized_hash,
        record_count=payload.record_count,
        state=SnapshotState.ACTIVE,
        object_key=object_key(tool, payload.normalized_hash),
        metadata=dict(metadata or {}),
        state_changed_at=imported_at,
    )


# --------------------------------------------------------------------------------------------
# the state machine

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
    _utc("at", at)
    if new_state not in ALLOWED_TRANSITIONS[snapshot.state]:
        raise InvalidTransition(snapshot.snapshot_id, snapshot.state, new_state)
    return msgspec.structs.replace(snapshot, state=new_state, state_changed_at=at)


def _change(snapshot: Snapshot, new_state: SnapshotState, at: datetime) -> StateChange:
    return StateChange(snapshot=transition(snapshot, new_state, at), from_state=snapshot.state)


def _index(snapshots: Iterable[Snapshot], tool: str | None = None) -> dict[str, Snapshot]:
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


def _current_active(snapshots: Collection[Snapshot]) -> Snapshot | None:
    active = sorted(s.snapshot_id for s in snapshots if s.state is _S.ACTIVE)
    if len(active) > 1:
        raise ValueError(f"several active snapshots for one tool ({', '.join(active)})")
    return None if not active else next(s for s in snapshots if s.snapshot_id == active[0])


def _recency(snapshot: Snapshot) -> tuple[datetime, str]:
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
    existing = _index(snapshots_of_tool, new_snapshot.tool)
    if new_snapshot.snapshot_id in existing:
        raise ValueError(
            f"snapshot {new_snapshot.snapshot_id} is already stored; "
            "re-activating a stored snapshot is a rollback"
        )
    current = _current_active(existing.values())
    changes = [] if current is None else [_change(current, _S.PREVIOUS, at)]
    entered = msgspec.structs.replace(
        new_snapshot,
        state=_S.ACTIVE,
        state_changed_at=_utc("at", at),
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
        if s.state is _S.PREVIOUS and (current is None or _recency(s) < _recency(current))
    ]
    if not candidates:
        older = "" if current is None else f" older than the active {current.snapshot_id}"
        raise RollbackRefused(f"no previous snapshot{older} to roll back to; name a target")
    return max(candidates, key=_recency)


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
    index = _index(snapshots, tool)
    current = _current_active(index.values())
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
    demote = [] if current is None else [_change(current, _S.PREVIOUS, at)]
    return RollbackPlan(
        tool=tool,
        trigger=trigger,
        current=current,
        target=target,
        changes=(*demote, _change(target, _S.ACTIVE, at)),
        at=_utc("at", at),
    )


class RollbackSide(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    snapshot_id: str
    record_count: int


class RollbackResult(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    status: Literal["completed", "dry_run", "failed"]
    tool: str
    from_: RollbackSide | None = msgspec.field(name="from")
    to: RollbackSide
    executed_at: datetime
    executed_by: str
    reason: str
    trigger: RollbackTrigger
    records_affected: int


class RollbackResponse(msgspec.Struct, frozen=True, kw_only=True):
    """Body of ``POST /api/v1/ingest/snapshots/{id}/rollback`` (``{"rollback": {...}}``)."""

    rollback: RollbackResult


def rollback_response(
    plan: RollbackPlan,
    *,
    status: Literal["completed", "dry_run", "failed"],
    executed_by: str,
    reason: str,
) -> RollbackResponse:
    """The seed's rollback response for ``plan``."""
    current = plan.current
    return RollbackResponse(
        rollback=RollbackResult(
            status=status,
            tool=plan.tool,
            from_=None
            if current is None
            else RollbackSide(snapshot_id=current.snapshot_id, record_count=current.record_count),
            to=RollbackSide(
                snapshot_id=plan.target.snapshot_id, record_count=plan.target.record_count
            ),
            executed_at=_utc("at", plan.at),
            executed_by=executed_by,
            reason=reason,
            trigger=plan.trigger,
            records_affected=plan.records_affected,
        )
    )


# --------------------------------------------------------------------------------------------
# freshness


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
    now = _utc("now", now)
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


class SlaThresholds(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    max_age: str
    stale: str
    critical: str


class SlaEntry(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One tool's entry of ``GET /api/v1/ingest/sla`` (the seed's ``sla`` object), plus
    ``ageSeconds``, ``warning``, ``readable`` and ``reason``."""

    tool: str
    snapshot_id: str | None
    imported_at: datetime | None
    age: str | None
    age_seconds: int | None
    state: FreshnessState
    warning: bool
    readable: bool
    next_check: datetime | None
    thresholds: SlaThresholds
    reason: str


class SlaResponse(msgspec.Struct, frozen=True, kw_only=True):
    """``{"sla": {...}}`` for one tool (``?tool=syft``)."""

    sla: SlaEntry


class SlaListResponse(msgspec.Struct, frozen=True, kw_only=True):
    """``{"sla": [...]}`` for every known tool, sorted by tool."""

    sla: list[SlaEntry]


def sla_entry(report: FreshnessReport) -> SlaEntry:
    limits = report.thresholds
    age = report.age
    return SlaEntry(
        tool=report.tool,
        snapshot_id=report.snapshot_id,
        imported_at=None if report.imported_at is None else _utc("at", report.imported_at),
        age=None if age is None else format_duration(age),
        age_seconds=None if age is None else age.days * 86_400 + age.seconds,
        state=report.state,
        warning=report.warning,
        readable=report.readable,
        next_check=report.next_check,
        thresholds=SlaThresholds(
            max_age=format_duration(limits.max_age),
            stale=format_duration(limits.stale_warning),
            critical=format_duration(limits.critical),
        ),
        reason=report.reason,
    )


def _tool_report(
    tool: str,
    snapshots: Sequence[Snapshot],
    thresholds: FreshnessThresholds | FreshnessPolicy,
    now: datetime,
) -> FreshnessReport:
    current = _current_active(snapshots)
    if current is None:
        expired = [s for s in snapshots if s.state is _S.EXPIRED]
        current = max(expired, key=lambda s: (s.state_changed_at, s.snapshot_id), default=None)
    return evaluate_freshness(current, thresholds, now, tool=tool)


@overload
def sla_report(
    snapshots: Iterable[Snapshot],
    thresholds: FreshnessThresholds | FreshnessPolicy,
    now: datetime,
    *,
    tool: str,
) -> SlaResponse: ...
@overload
def sla_report(
    snapshots: Iterable[Snapshot],
    thresholds: FreshnessThresholds | FreshnessPolicy,
    now: datetime,
    *,
    tool: None = None,
) -> SlaListResponse: ...
def sla_report(
    snapshots: Iterable[Snapshot],
    thresholds: FreshnessThresholds | FreshnessPolicy,
    now: datetime,
    *,
    tool: str | None = None,
) -> SlaResponse | SlaListResponse:
    """The body of ``GET /api/v1/ingest/sla``: one tool's entry when ``tool`` is given (a tool
    without snapshots reports ``expired``), else every tool that has snapshots or configured
    thresholds."""
    by_tool: dict[str, list[Snapshot]] = {}
    for snapshot in _index(snapshots).values():
        by_tool.setdefault(snapshot.tool, []).append(snapshot)
    if tool is not None:
        report = _tool_report(tool, by_tool.get(tool, []), thresholds, now)
        return SlaResponse(sla=sla_entry(report))
    names = set(by_tool)
    if isinstance(thresholds, FreshnessPolicy):
        names.update(thresholds.tools)
    return SlaListResponse(
        sla=[
            sla_entry(_tool_report(name, by_tool.get(name, []), thresholds, now))
            for name in sorted(names)
        ]
    )


# --------------------------------------------------------------------------------------------
# retention


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
    upcoming: datetime = croniter(policy.schedule, _utc("after", after)).get_next(datetime)
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
            _utc("expires_at", self.expires_at)
        if self.created_at is not None:
            _utc("created_at", self.created_at)

    def in_force(self, now: datetime) -> bool:
        return self.expires_at is None or _utc("now", now) < self.expires_at

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
    now = _utc("now", now)
    index = _index(snapshots)
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
            change=_change(snapshot, target, now),
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


# --------------------------------------------------------------------------------------------
# the audit chain


class AuditEvent(StrEnum):
    IMPORTED = "snapshot_imported"
    ACTIVATED = "snapshot_activated"
    ROLLED_BACK = "snapshot_rolled_back"
    # Not in the seed's event table, but the seed's retention rules archive snapshots and
    # every action must leave an audit record; none of the seed's events means "archived".
    ARCHIVED = "snapshot_archived"
    EXPIRED = "snapshot_expired"
    DELETED = "snapshot_deleted"


# The prev_hash of the first record: a fixed, recognisable value rather than NULL, so the
# column is NOT NULL and a unique index on it allows exactly one chain start.
GENESIS_HASH: Final = B3_PREFIX + "0" * 64

AuditValue = str | int | bool | None


class AuditDraft(msgspec.Struct, frozen=True, kw_only=True):
    """An audit record before it is numbered and chained (see :func:`seal`)."""

    event: AuditEvent
    snapshot_id: str
    tool: str
    actor: str
    reason: str | None
    details: dict[str, AuditValue]
    occurred_at: datetime


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A row of ``ingest.snapshot_audit``."""

    seq: int
    event: AuditEvent
    snapshot_id: str
    tool: str
    actor: str
    reason: str | None
    details: dict[str, AuditValue]
    occurred_at: datetime
    prev_hash: str
    hash: str


def _canonical(value: object, path: str) -> object:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)  # StrEnum members become their plain value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, Mapping):
        items: list[tuple[str, object]] = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path}: object keys must be strings, got {key!r}")
            items.append((key, _canonical(item, f"{path}.{key}")))
        return dict(sorted(items))
    if isinstance(value, list | tuple):
        return [_canonical(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, float):
        # Binary floats print differently across languages and jsonb round trips; a hash
        # that must verify anywhere takes integers or decimal strings.
        raise TypeError(f"{path}: floats have no canonical form here; use an int or a string")
    raise TypeError(f"{path}: {type(value).__name__} has no canonical JSON form")


def canonical_json(record: Mapping[str, object]) -> bytes:
    """Canonical JSON of ``record``: object keys sorted by code point at every level, no
    whitespace, UTF-8, datetimes as RFC 3339 UTC; only str, int, bool, None, datetime,
    mappings and sequences are accepted (TypeError otherwise)."""
    return msgspec.json.encode(_canonical(record, "$"))


def chain_hash(prev_hash: str | None, record: Mapping[str, object]) -> str:
    """``b3:`` + BLAKE3(prev_hash + "\\n" + canonical_json(record)); ``None`` means the chain
    start, :data:`GENESIS_HASH`."""
    previous = GENESIS_HASH if prev_hash is None else _check_b3("prev_hash", prev_hash)
    hasher = blake3(previous.encode("ascii"))
    hasher.update(b"\n")
    hasher.update(canonical_json(record))
    return B3_PREFIX + hasher.hexdigest()


def audit_body(seq: int, entry: AuditDraft | AuditRecord) -> dict[str, object]:
    """The hashed part of an audit record: every column except ``prev_hash`` (which is
    chained separately) and ``hash`` itself."""
    return {
        "seq": seq,
        "event": entry.event,
        "snapshot_id": entry.snapshot_id,
        "tool": entry.tool,
        "actor": entry.actor,
        "reason": entry.reason,
        "details": entry.details,
        "occurred_at": entry.occurred_at,
    }


def seal(draft: AuditDraft, *, seq: int, prev_hash: str | None) -> AuditRecord:
    """Number and chain ``draft``. ``prev_hash`` is the hash of the last stored record, or
    None for the first record of the chain."""
    if isinstance(seq, bool) or seq < 1:
        raise ValueError(f"audit seq must be a positive integer, got {seq!r}")
    previous = GENESIS_HASH if prev_hash is None else prev_hash
    return AuditRecord(
        seq=seq,
        event=draft.event,
        snapshot_id=draft.snapshot_id,
        tool=draft.tool,
        actor=draft.actor,
        reason=draft.reason,
        details=dict(draft.details),
        occurred_at=draft.occurred_at,
        prev_hash=previous,
        hash=chain_hash(previous, audit_body(seq, draft)),
    )


class ChainBreak(msgspec.Struct, frozen=True, kw_only=True):
    """The first record that fails verification: its position in the list and its seq."""

    index: int
    seq: int
    reason: str


def verify_chain(
    records: Iterable[AuditRecord], *, start_hash: str = GENESIS_HASH
) -> ChainBreak | None:
    """Check an audit log in seq order; None when intact, else the first bad record.

    ``start_hash`` is the prev_hash the first record must carry: the genesis value for a
    whole log, or the last verified hash when checking a tail.
    """
    expected = start_hash
    last_seq: int | None = None
    for index, record in enumerate(records):
        if last_seq is not None and record.seq <= last_seq:
            return ChainBreak(
                index=index, seq=record.seq, reason=f"seq {record.seq} does not follow {last_seq}"
            )
        if record.prev_hash != expected:
            return ChainBreak(
                index=index,
                seq=record.seq,
                reason="prev_hash is not the hash of the record before it",
            )
        try:
            actual = chain_hash(record.prev_hash, audit_body(record.seq, record))
        except (TypeError, ValueError) as exc:
            return ChainBreak(index=index, seq=record.seq, reason=f"cannot be hashed: {exc}")
        if actual != record.hash:
            return ChainBreak(
                index=index, seq=record.seq, reason="hash does not match the record's content"
            )
        expected = record.hash
        last_seq = record.seq
    return None


def imported_draft(snapshot: Snapshot, *, actor: str, at: datetime) -> AuditDraft:
    """``snapshot_imported``: id, tool, hashes, user, timestamp."""
    return AuditDraft(
        event=AuditEvent.IMPORTED,
        snapshot_id=snapshot.snapshot_id,
        tool=snapshot.tool,
        actor=actor,
        reason=snapshot.metadata.get("importReason"),
        details={
            "toolVersion": snapshot.tool_version,
            "sourceHash": snapshot.source_hash,
            "normalizedHash": snapshot.normalized_hash,
            "recordCount": snapshot.record_count,
            "objectKey": snapshot.object_key,
        },
        occurred_at=_utc("at", at),
    )


_CHANGE_EVENTS: Final[Mapping[SnapshotState, AuditEvent]] = MappingProxyType(
    {
        _S.ACTIVE: AuditEvent.ACTIVATED,
        _S.ARCHIVED: AuditEvent.ARCHIVED,
        _S.EXPIRED: AuditEvent.EXPIRED,
        _S.DELETED: AuditEvent.DELETED,
    }
)


def change_draft(change: StateChange, *, actor: str, reason: str | None = None) -> AuditDraft:
    """The audit record of one state change. Demotions to ``previous`` have none of their own:
    the activation or rollback that caused them records them."""
    event = _CHANGE_EVENTS.get(change.to_state)
    if event is None:
        raise ValueError(
            f"{change.snapshot_id}: a change to {change.to_state} is recorded by the "
            "activation or rollback that caused it"
        )
    details: dict[str, AuditValue] = {"fromState": change.from_state, "toState": change.to_state}
    if event is AuditEvent.ACTIVATED:
        details["previousSnapshot"] = change.snapshot.previous_snapshot
    return AuditDraft(
        event=event,
        snapshot_id=change.snapshot_id,
        tool=change.snapshot.tool,
        actor=actor,
        reason=reason,
        details=details,
        occurred_at=change.at,
    )


def retention_draft(action: RetentionAction, *, actor: str) -> AuditDraft:
    """``snapshot_archived`` / ``snapshot_deleted`` for one retention action."""
    draft = change_draft(action.change, actor=actor, reason=action.reason)
    details = {**draft.details, "objectKey": action.object_key}
    if action.kind is RetentionActionKind.DELETE:
        details["objectRemoved"] = action.remove_object
    return msgspec.structs.replace(draft, details=details)


def rolled_back_draft(plan: RollbackPlan, *, actor: str, reason: str) -> AuditDraft:
    """``snapshot_rolled_back``: from_id, to_id, reason, user (and the trigger)."""
    return AuditDraft(
        event=AuditEvent.ROLLED_BACK,
        snapshot_id=plan.target.snapshot_id,
        tool=plan.tool,
        actor=actor,
        reason=reason,
        details={
            "fromSnapshot": None if plan.current is None else plan.current.snapshot_id,
            "toSnapshot": plan.target.snapshot_id,
            "reason": reason,
            "recordsAffected": plan.records_affected,
            "trigger": plan.trigger,
        },
        occurred_at=plan.at,
    )


class AuditView(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    id: str
    event: AuditEvent
    timestamp: datetime
    user: str
    snapshot_id: str
    tool: str
    details: dict[str, AuditValue]
    prev_hash: str
    hash: str


class AuditResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's audit record format, ``{"audit": {...}}``."""

    audit: AuditView


def audit_response(record: AuditRecord) -> AuditResponse:
    details = dict(record.details)
    if record.reason is not None:
        details.setdefault("reason", record.reason)
    return AuditResponse(
        audit=AuditView(
            id=f"audit-{record.seq}",
            event=record.event,
            timestamp=_utc("occurred_at", record.occurred_at),
            user=record.actor,
            snapshot_id=record.snapshot_id,
            tool=record.tool,
            details=details,
            prev_hash=record.prev_hash,
            hash=record.hash,
        )
    )
