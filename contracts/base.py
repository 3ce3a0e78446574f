"""The envelope every event carries.

Evolution rules (msgspec schema evolution): a new optional field gets a
default and keeps the version; any other change is a new ``version``. Unknown
extra fields are ignored on decode, so producers may add fields freely.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, ClassVar

import msgspec

UtcDateTime = Annotated[datetime, msgspec.Meta(tz=True)]
"""An RFC 3339 timestamp with a zone offset; naive timestamps are rejected."""

NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
INT32_MAX = 2**31 - 1
Int32Count = Annotated[int, msgspec.Meta(ge=0, le=INT32_MAX)]
"""A count or order stored in a PostgreSQL ``INTEGER`` column: the contract carries the
column's range, so an event that cannot be stored is rejected at decode."""
Version = Annotated[int, msgspec.Meta(ge=1)]


class Event(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag_field="type",
    rename="camel",
):
    """Envelope fields shared by every event; ``type`` is the msgspec tag."""

    supported_versions: ClassVar[frozenset[int]] = frozenset({1})

    event_id: uuid.UUID
    version: Version
    tenant_id: uuid.UUID
    occurred_at: UtcDateTime
    source: NonEmpty
    correlation_id: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None

    @classmethod
    def event_type(cls) -> str:
        tag = cls.__struct_config__.tag
        assert isinstance(tag, str)  # every concrete event sets a string tag
        return tag
