"""Feed payloads: validation, canonical form, hashes, verification on restore, and the
record of a fresh import (docs/snapshots.md). Pure."""

from collections.abc import Mapping
from datetime import datetime

import msgspec

from workers.snapshot_retention.ids import b3_digest, make_snapshot_id, object_key
from workers.snapshot_retention.records import Snapshot, SnapshotState


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
