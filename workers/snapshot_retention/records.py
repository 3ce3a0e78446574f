"""The snapshot record (a row of ``ingest.feed_snapshots``) and its states
(docs/snapshots.md). Pure."""

from datetime import datetime
from enum import StrEnum

import msgspec

from workers.snapshot_retention.ids import check_b3, parse_snapshot_id
from workers.snapshot_retention.times import utc


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
        check_b3("source_hash", self.source_hash)
        check_b3("normalized_hash", self.normalized_hash)
        if self.record_count < 0:
            raise ValueError(f"snapshot {self.snapshot_id}: record_count is negative")
        utc("imported_at", self.imported_at)
        utc("state_changed_at", self.state_changed_at)
        if not self.object_key:
            raise ValueError(f"snapshot {self.snapshot_id}: object_key is empty")
        if self.previous_snapshot is not None:
            previous = parse_snapshot_id(self.previous_snapshot)
            if previous.tool != self.tool or self.previous_snapshot == self.snapshot_id:
                raise ValueError(
                    f"snapshot {self.snapshot_id}: previous_snapshot {self.previous_snapshot} "
                    "must be another snapshot of the same tool"
                )
