"""Build, sign, write and verify bundles; shared by the export worker and ``fleet``.

A bundle is its files plus ``manifest.json`` (every file's path, sha256 and size) and
``manifest.dsse.json`` (a DSSE envelope signing the manifest's exact bytes with the
ed25519 export key, ``FLEET_EXPORT_KEY_FILE``). See ``docs/exports.md``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from workers import metrics, signing
from workers.db import DbConn
from workers.export import bundles, queries
from workers.export.bundles import BundleError, Profile, VexFormat

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """What to export; ``options()`` is what the manifest records."""

    profile: Profile
    format: VexFormat = "json"
    tenant: uuid.UUID | None = None
    since: datetime | None = None

    def options(self) -> dict[str, str]:
        shown: dict[str, str] = {}
        if self.profile == "vex":
            shown["format"] = self.format
        if self.tenant is not None:
            shown["tenant"] = str(self.tenant)
        if self.since is not None:
            shown["since"] = self.since.isoformat()
        return shown


def parse_options(profile: str, options: Mapping[str, str]) -> ExportOptions:
    """Validate a profile and its options; :class:`BundleError` with one line."""
    if profile not in bundles.PROFILES:
        raise BundleError(f"unknown profile {profile!r} (known: {', '.join(bundles.PROFILES)})")
    unknown = set(options) - {"format", "tenant", "since"}
    if unknown:
        raise BundleError(f"unknown option(s) {', '.join(sorted(unknown))} for profile {profile}")
    fmt = options.get("format", "json")
    if fmt not in bundles.VEX_FORMATS:
        raise BundleError(f"format {fmt!r} is not one of {', '.join(bundles.VEX_FORMATS)}")
    tenant: uuid.UUID | None = None
    if options.get("tenant"):
        try:
            tenant = uuid.UUID(options["tenant"])
        except ValueError:
            raise BundleError(f"tenant {options['tenant']!r} is not a UUID") from None
    since: datetime | None = None
    if options.get("since"):
        try:
            since = datetime.fromisoformat(options["since"])
        except ValueError:
            raise BundleError(f"since {options['since']!r} is not an ISO 8601 time") from None
        if since.tzinfo is None:
            raise BundleError(f"since {options['since']!r} has no zone offset")
    return ExportOptions(
        profile=profile,
        format=fmt,
        tenant=tenant,
        since=since,
    )


@dataclass(slots=True)
class Bundle:
    """A built bundle: its files and its (unsigned) manifest."""

    options: ExportOptions
    files: dict[str, bytes]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(data) for data in self.files.values())


async def build(conn: DbConn, options: ExportOptions) -> Bundle:
    """Read the profile's rows and render its files and manifest (deterministic)."""
    started = time.perf_counter()
    if options.profile == "vex":
        rows = await queries.consensus_rows(conn, options.since)
        files = bundles.vex_files(rows, options.format)
        metrics.VEX_EXPORT_DURATION.observe(time.perf_counter() - started)
    elif options.profile == "scan-metrics":
        scans, phases, stats, tte = await queries.scan_metrics_rows(
            conn, options.tenant, options.since
        )
        files = bundles.scan_metrics_files(scans, phases, stats, tte)
    else:
        active, audit = await queries.snapshot_rows(conn)
        files = bundles.snapshots_files(active, audit)
    manifest = bundles.bundle_manifest(options.profile, files, options.options())
    return Bundle(options=options, files=files, manifest=manifest)


def load_key(path: str | None) -> Ed25519PrivateKey:
    """The export signing key from ``path`` (``--key`` or ``FLEET_EXPORT_KEY_FILE``)."""
    if not path:
        raise signing.SigningError(
            "no signing key: pass --key FILE or set FLEET_EXPORT_KEY_FILE (an ed25519 PEM; "
            "`fleet export keygen` makes one)"
        )
    key_path = Path(path)
    return signing.parse_private_key(signing.read_key_file(key_path), str(key_path))


def signed_files(bundle: Bundle, key: Ed25519PrivateKey) -> dict[str, bytes]:
    """Every file of the bundle plus ``manifest.json`` and its DSSE envelope."""
    body, envelope = signing.sign_manifest(bundle.manifest, key)
    return {
        **bundle.files,
        MANIFEST_NAME: body,
        signing.envelope_path(Path(MANIFEST_NAME)).name: envelope,
    }


def write_local(manifest: Path, bundle: Bundle, key: Ed25519PrivateKey) -> list[Path]:
    """Write the bundle beside ``manifest`` (files under its directory), the manifest
    under its own name and the envelope beside it; the paths written."""
    directory = manifest.parent
    written: list[Path] = []
    files = signed_files(bundle, key)
    envelope_name = signing.envelope_path(Path(MANIFEST_NAME)).name
    for name, data in files.items():
        if name == MANIFEST_NAME:
            target = manifest
        elif name == envelope_name:
            target = signing.envelope_path(manifest)
        else:
            target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written.append(target)
    return written


def verify_local(manifest: Path, public_key: Ed25519PublicKey) -> tuple[int, str]:
    """Verify a bundle on disk: (files checked, key id); :class:`signing.VerificationError`
    or ``OSError`` names the first problem."""
    body = manifest.read_bytes()
    envelope_file = signing.envelope_path(manifest)
    if not envelope_file.is_file():
        raise signing.VerificationError("malformed", f"{envelope_file}: no signature envelope")
    directory = manifest.parent

    def read(path: str) -> bytes | None:
        target = directory / path
        return target.read_bytes() if target.is_file() else None

    return signing.verify_manifest(body, envelope_file.read_bytes(), public_key, read)
