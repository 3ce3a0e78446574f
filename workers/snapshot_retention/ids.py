"""Snapshot ids ``{tool}-{YYYYMMDDTHHMMSSZ}-{seq:03d}``, tool names, BLAKE3 digests and the
content-addressed object keys of payloads (docs/snapshots.md). Pure."""

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final

import msgspec
from blake3 import blake3

from workers.snapshot_retention.times import rfc3339, utc

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
    t = utc("at", at)
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


def check_b3(name: str, value: str) -> str:
    if not _B3_RE.fullmatch(value):
        raise ValueError(f"{name} must be 'b3:' + 64 lowercase hex digits, got {value!r}")
    return value


def object_key(tool: str, normalized_hash: str) -> str:
    """Content-addressed S3 key of a snapshot payload:
    ``snapshots/{tool}/{hex[:2]}/{hex}.json`` (the two-character fan-out keeps listings short)."""
    validate_tool(tool)
    digest = check_b3("normalized_hash", normalized_hash).removeprefix(B3_PREFIX)
    return f"snapshots/{tool}/{digest[:2]}/{digest}.json"
