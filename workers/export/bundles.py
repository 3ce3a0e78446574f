"""Bundles as files: pure functions from exported rows to ``path -> bytes``.

Every file is a function of the rows alone (sorted rows, sorted keys, no wall clock),
so two exports of the same state are byte-identical, and so are their manifests
(:func:`workers.signing.build_manifest`). ``docs/exports.md`` lists the files of each
profile.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Literal

import msgspec

from workers import signing

Profile = Literal["vex", "scan-metrics", "snapshots"]
PROFILES: Final[tuple[Profile, ...]] = ("vex", "scan-metrics", "snapshots")
VexFormat = Literal["openvex", "json"]
VEX_FORMATS: Final[tuple[VexFormat, ...]] = ("openvex", "json")

OPENVEX_CONTEXT: Final = "https://openvex.dev/ns/v0.2.0"
OPENVEX_AUTHOR: Final = "streamfleet vex-consensus"

Row = Mapping[str, Any]


class BundleError(ValueError):
    """An export request this build cannot satisfy (unknown profile or option)."""


def json_file(value: Any) -> bytes:
    """A file's bytes: sorted keys, two-space indent, newline-ended UTF-8.

    msgspec renders it in C: the same bytes as ``json.dumps(sort_keys=True, indent=2,
    ensure_ascii=False)`` except for floats in exponent form (``1e16``, not ``1e+16``),
    about ten times faster on a large consensus (``tests/perf/bench_exports.py``)."""
    return msgspec.json.format(msgspec.json.encode(value, order="sorted"), indent=2) + b"\n"


def _sorted(rows: Sequence[Row], *keys: str) -> list[Row]:
    return sorted(rows, key=lambda r: tuple(str(r.get(k)) for k in keys))


def vex_files(rows: Sequence[Row], fmt: VexFormat) -> dict[str, bytes]:
    """The consensus as one file: ``vex/consensus.json`` (rows as stored) or
    ``vex/consensus.openvex.json`` (an OpenVEX 0.2.0 document, one statement per pair)."""
    ordered = _sorted(rows, "component_purl", "vulnerability_id")
    if fmt == "json":
        return {"vex/consensus.json": json_file({"consensus": ordered})}
    if fmt == "openvex":
        return {"vex/consensus.openvex.json": json_file(openvex_document(ordered))}
    raise BundleError(f"unknown VEX format {fmt!r} (known: {', '.join(VEX_FORMATS)})")


def openvex_document(rows: Sequence[Row]) -> dict[str, Any]:
    """An OpenVEX 0.2.0 document of the consensus; its ``@id`` and ``timestamp`` derive
    from the rows (digests and the latest ``computed_at``), never from the clock."""
    digest = hashlib.sha256(
        "\n".join(str(r.get("digest")) for r in rows).encode("utf-8")
    ).hexdigest()
    times = [str(r["computed_at"]) for r in rows if r.get("computed_at")]
    statements = []
    for row in rows:
        statement: dict[str, Any] = {
            "vulnerability": {"name": row["vulnerability_id"]},
            "products": [{"@id": row["component_purl"]}],
            "status": row["resolved_status"],
            "timestamp": _rfc3339(row.get("computed_at")),
            "status_notes": (
                f"consensus confidence {row.get('confidence')}, digest {row.get('digest')}"
                + (", conflict detected" if row.get("conflict_detected") else "")
            ),
        }
        if row["resolved_status"] == "not_affected":
            # The consensus keeps no justification of its own; OpenVEX requires one.
            statement["impact_statement"] = "resolved not_affected by issuer consensus"
        statements.append(statement)
    return {
        "@context": OPENVEX_CONTEXT,
        "@id": f"urn:streamfleet:vex-consensus:{digest}",
        "author": OPENVEX_AUTHOR,
        "timestamp": _rfc3339(max(times)) if times else "1970-01-01T00:00:00Z",
        "version": 1,
        "statements": statements,
    }


def _rfc3339(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def scan_metrics_files(
    scans: Sequence[Row], phases: Sequence[Row], tte_stats: Sequence[Row], tte: Row
) -> dict[str, bytes]:
    """The TTE report (overall percentiles and hourly statistics) and the rows."""
    return {
        "scan-metrics/tte-report.json": json_file(
            {"summary": dict(tte), "hourly": _sorted(tte_stats, "tenant_id", "hour_bucket")}
        ),
        "scan-metrics/scans.json": json_file({"scans": _sorted(scans, "scan_id")}),
        "scan-metrics/phases.json": json_file(
            {"phases": _sorted(phases, "scan_id", "phase_order", "phase_name")}
        ),
    }


def snapshots_files(active: Sequence[Row], audit: Sequence[Row]) -> dict[str, bytes]:
    """Active snapshot records and the audit trail (its hash chain as stored)."""
    return {
        "snapshots/active.json": json_file({"snapshots": _sorted(active, "tool")}),
        "snapshots/audit.json": json_file(
            {"audit": sorted(audit, key=lambda r: int(r.get("seq") or 0))}
        ),
    }


def bundle_manifest(
    profile: Profile, files: Mapping[str, bytes], options: Mapping[str, str]
) -> dict[str, Any]:
    """The manifest of a bundle: profile and options (sorted), then the files."""
    return signing.build_manifest(files, profile=profile, options=dict(sorted(options.items())))
