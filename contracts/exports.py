"""Contracts of the export streams (``docs/exports.md``).

``export:requests`` (group ``export-workers``) carries ``export.requested``: build one
profile's bundle. The envelope's ``tenantId`` is the requesting tenant; the
scan-metrics profile narrows its rows to it. ``options`` holds string options:
``format`` (vex: ``json`` or ``openvex``) and ``since`` (an RFC 3339 time).

``export:events`` carries the outcome, ``export.completed`` or ``export.failed``, with
``exportId`` = the request's ``eventId``; the outcome's own ``eventId`` is a uuid5 of it,
so a republished outcome is recognisable.
"""

from __future__ import annotations

import uuid
from typing import Literal

import msgspec

from contracts.base import Event, NonEmpty, NonNegative, UtcDateTime

ExportProfile = Literal["vex", "scan-metrics", "snapshots"]


class ExportRequested(Event, frozen=True, kw_only=True, tag="export.requested"):
    """Build and sign one profile's bundle and store it in the bundle store (S3)."""

    profile: ExportProfile
    options: dict[str, str] = msgspec.field(default_factory=dict)
    requested_by: str | None = None


class ExportCompleted(Event, frozen=True, kw_only=True, tag="export.completed"):
    """A bundle and its signed manifest are in the bundle store."""

    export_id: uuid.UUID
    profile: ExportProfile
    bucket: NonEmpty
    manifest_key: NonEmpty
    """S3 key of ``manifest.json``; the DSSE envelope is ``manifest.dsse.json`` beside it."""
    manifest_sha256: NonEmpty
    key_id: NonEmpty
    file_count: NonNegative
    bundle_size_bytes: NonNegative
    completed_at: UtcDateTime


class ExportFailed(Event, frozen=True, kw_only=True, tag="export.failed"):
    """The request cannot be served; ``reason`` is ``invalid_request`` or ``signing``."""

    export_id: uuid.UUID
    profile: ExportProfile
    reason: NonEmpty
    error: str
    failed_at: UtcDateTime


ExportOutcome = ExportCompleted | ExportFailed
