"""Contracts of the ``scanner:events`` stream.

Event types: ``scan.submitted``, ``scan.completed``, ``scan.failed``, all at
version 1. Semantic checks (durations, phase order) belong to the consuming
worker; these types check shape and ranges only.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import msgspec

from contracts.base import Event, Int32Count, NonEmpty, UtcDateTime

ArtifactType = Literal["oci_image", "tarball", "directory", "other"]
PhaseName = Literal["ingest", "analyze", "reachability", "vex", "sign", "publish", "other"]


class Phase(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One execution phase of a scan."""

    name: PhaseName
    order: Int32Count
    started_at: UtcDateTime
    finished_at: UtcDateTime
    success: bool = True
    error_code: str | None = None
    error_message: str | None = None
    metrics: dict[str, Any] = msgspec.field(default_factory=dict)


class ScanSubmitted(Event, frozen=True, kw_only=True, tag="scan.submitted"):
    scan_id: uuid.UUID
    artifact_digest: NonEmpty
    artifact_type: ArtifactType
    surface_id: uuid.UUID | None = None
    submitted_at: UtcDateTime
    is_replay: bool = False


class _ScanOutcome(Event, frozen=True, kw_only=True):
    """Fields shared by completed and failed scans."""

    scan_id: uuid.UUID
    artifact_digest: NonEmpty
    artifact_type: ArtifactType
    surface_id: uuid.UUID | None = None
    started_at: UtcDateTime
    phases: list[Phase] = msgspec.field(default_factory=list)
    package_count: Int32Count = 0
    finding_count: Int32Count = 0
    vex_decision_count: Int32Count = 0
    replay_manifest_hash: str | None = None
    findings_sha256: str | None = None
    vex_bundle_sha256: str | None = None
    proof_bundle_sha256: str | None = None
    sbom_sha256: str | None = None
    policy_digest: str | None = None
    feed_snapshot_id: str | None = None
    scanner_version: str | None = None
    scanner_image_digest: str | None = None
    is_replay: bool = False


class ScanCompleted(_ScanOutcome, frozen=True, kw_only=True, tag="scan.completed"):
    finished_at: UtcDateTime


class ScanFailed(_ScanOutcome, frozen=True, kw_only=True, tag="scan.failed"):
    failed_at: UtcDateTime
    failed_phase: PhaseName | None = None
    error_code: NonEmpty
    error_message: str = ""
    retryable: bool = False


ScannerEvent = ScanSubmitted | ScanCompleted | ScanFailed
