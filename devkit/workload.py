"""Realistic synthetic events for the demo, the tests and the benchmarks.

Deterministic for a given seed, so a test can recompute expected results.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from contracts.base import Event
from contracts.concelier import AdvisoryNew, AdvisoryUpdated, AffectedPackage
from contracts.exports import ExportProfile, ExportRequested
from contracts.notify import NotificationFailed, NotificationSent
from contracts.scanner import Phase, ScanCompleted, ScanFailed, ScanSubmitted

if TYPE_CHECKING:
    from workers.vex_consensus.consensus import IssuerTrust

TENANTS = [uuid.UUID(int=0xA0000000_0000_4000_8000_000000000000 + i) for i in range(1, 6)]
CHANNEL_TYPES = ("slack", "teams", "email", "webhook")
BASE_TIME = datetime(2026, 11, 1, tzinfo=UTC)


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def notification_events(
    count: int, *, seed: int = 7, failure_rate: float = 0.05, start: datetime | None = None
) -> Iterator[Event]:
    """``count`` notification outcomes with unique delivery ids; ~``failure_rate`` failed."""
    rng = random.Random(seed)
    t0 = start or BASE_TIME
    channels = {ct: [_uuid(rng) for _ in range(3)] for ct in CHANNEL_TYPES}
    for i in range(count):
        channel_type = CHANNEL_TYPES[i % len(CHANNEL_TYPES)]
        at = t0 + timedelta(milliseconds=i * 37)
        common = {
            "event_id": _uuid(rng),
            "version": 1,
            "tenant_id": TENANTS[i % len(TENANTS)],
            "occurred_at": at,
            "source": "notifier",
            "delivery_id": _uuid(rng),
            "rule_id": _uuid(rng),
            "channel_id": rng.choice(channels[channel_type]),
            "channel_type": channel_type,
            "source_event_id": _uuid(rng),
            "attempt": 1,
            "latency_ms": int(rng.lognormvariate(5.0, 0.6)),
        }
        if rng.random() < failure_rate:
            yield NotificationFailed(
                **common,  # type: ignore[arg-type]  # keys match the struct's fields
                failed_at=at,
                status_code=rng.choice((429, 500, 503)),
                error="upstream rejected the message",
                retryable=True,
            )
        else:
            yield NotificationSent(**common, sent_at=at, status_code=200)  # type: ignore[arg-type]  # keys match the struct's fields


# ------------------------------------------------------------------ VEX (vex-consensus)
# OpenVEX documents from several issuers (some disagreeing, one without a trust row) and
# advisories from concelier:drift that name the same components and vulnerabilities.

VEX_VULNERABILITIES: tuple[str, ...] = tuple(f"CVE-2026-{41000 + i}" for i in range(8))
VEX_ISSUERS: tuple[tuple[str, str, int, str], ...] = (
    # issuer, trust score, priority (lower decides), issuer type
    ("https://psirt.acme.example", "0.90", 1, "vendor"),
    ("https://security.distro.example", "0.80", 1, "distro"),
    ("https://lab.research.example", "0.60", 2, "researcher"),
    ("https://vex.community.example", "0.30", 3, "community"),
)
VEX_UNTRUSTED_ISSUER = "https://unvetted.example"
"""Publishes statements but has no trust row: excluded as missing provenance."""

# How often each issuer speaks about a pair, and the statuses it tends to pick.
_VEX_HABITS: dict[str, tuple[float, tuple[str, ...]]] = {
    "https://psirt.acme.example": (0.7, ("not_affected", "not_affected", "fixed", "affected")),
    "https://security.distro.example": (0.5, ("fixed", "affected", "not_affected")),
    "https://lab.research.example": (0.3, ("affected", "under_investigation")),
    "https://vex.community.example": (0.2, ("affected", "not_affected")),
    VEX_UNTRUSTED_ISSUER: (0.1, ("not_affected",)),
}
_JUSTIFICATIONS = (
    "component_not_present",
    "vulnerable_code_not_present",
    "vulnerable_code_not_in_execute_path",
    "inline_mitigations_already_exist",
)


def vex_components(count: int) -> list[str]:
    """Component purls the VEX documents and advisories talk about."""
    return [f"pkg:npm/demo-lib-{i:04d}@{1 + i % 3}.{i % 10}.0" for i in range(count)]


def vex_trust() -> list[IssuerTrust]:
    """Trust rows of :data:`VEX_ISSUERS` (the untrusted issuer has none)."""
    from workers.vex_consensus.consensus import IssuerTrust

    return [
        IssuerTrust(
            issuer_id=issuer,
            trust_score=Decimal(score),
            priority=priority,
            issuer_type=kind,  # type: ignore[arg-type]  # the table above holds valid types
        )
        for issuer, score, priority, kind in VEX_ISSUERS
    ]


def vex_documents(components: int = 200, *, seed: int = 7) -> list[tuple[str, bytes]]:
    """One OpenVEX 0.2.0 document per issuer: (file name, JSON bytes).

    Issuers mostly agree on a pair's status; vendor and distro share priority 1, so
    when they do not, the pair has a conflict. The distro now and then speaks about
    the versionless package (a less specific scope).
    """
    rng = random.Random(seed)
    purls = vex_components(components)
    issued = {issuer: BASE_TIME - timedelta(days=30 - n) for n, issuer in enumerate(_VEX_HABITS)}
    statements: dict[str, list[dict[str, object]]] = {issuer: [] for issuer in _VEX_HABITS}
    for vulnerability in VEX_VULNERABILITIES:
        for purl in purls:
            truth = rng.choice(("not_affected", "not_affected", "fixed", "affected"))
            for issuer, (rate, habits) in _VEX_HABITS.items():
                if rng.random() >= rate:
                    continue
                status = truth if rng.random() < 0.85 else rng.choice(habits)
                product = purl
                if issuer == "https://security.distro.example" and rng.random() < 0.1:
                    product = purl.rsplit("@", 1)[0]
                at = issued[issuer] + timedelta(minutes=rng.randrange(600))
                statement: dict[str, object] = {
                    "vulnerability": {"name": vulnerability, "aliases": [_ghsa(vulnerability)]},
                    "products": [{"@id": product}],
                    "status": status,
                    "timestamp": at.isoformat(),
                }
                if status == "not_affected" and rng.random() < 0.95:
                    statement["justification"] = rng.choice(_JUSTIFICATIONS)
                statements[issuer].append(statement)
    documents: list[tuple[str, bytes]] = []
    for n, (issuer, made) in enumerate(statements.items()):
        document = {
            "@context": "https://openvex.dev/ns/v0.2.0",
            "@id": f"https://vex.example/docs/{seed}/{n}",
            "author": issuer,
            "timestamp": issued[issuer].isoformat(),
            "version": 1,
            "statements": made,
        }
        documents.append((f"demo-{n}.openvex.json", json.dumps(document).encode()))
    return documents


def _ghsa(vulnerability: str) -> str:
    digest = uuid.uuid5(uuid.NAMESPACE_URL, vulnerability).hex
    return f"GHSA-{digest[0:4]}-{digest[4:8]}-{digest[8:12]}"


def advisory_events(
    count: int, *, seed: int = 7, components: int = 200, per_advisory: int = 40
) -> Iterator[Event]:
    """``count`` advisories on :data:`VEX_VULNERABILITIES`, each naming ~``per_advisory``
    of :func:`vex_components` plus a few packages no VEX document mentions."""
    rng = random.Random(seed)
    purls = vex_components(components)
    revisions: dict[str, int] = {}
    for i in range(count):
        vulnerability = VEX_VULNERABILITIES[i % len(VEX_VULNERABILITIES)]
        revision = revisions.get(vulnerability, 0)
        revisions[vulnerability] = revision + 1
        named = rng.sample(purls, min(per_advisory, len(purls)))
        named += [f"pkg:pypi/unrelated-{rng.randrange(1000)}@1.0" for _ in range(3)]
        at = BASE_TIME + timedelta(seconds=i)
        cls = AdvisoryNew if revision == 0 else AdvisoryUpdated
        yield cls(
            event_id=_uuid(rng),
            version=1,
            tenant_id=TENANTS[i % len(TENANTS)],
            occurred_at=at,
            source=rng.choice(("NVD", "OSV", "GHSA")),
            advisory_id=vulnerability,
            aliases=[_ghsa(vulnerability)],
            affected=[AffectedPackage(purl=p, version_range="<2.0.0") for p in named],
            revision=revision,
            severity=rng.choice(("low", "medium", "high", "critical")),
            document_sha256=f"{rng.getrandbits(256):064x}",
            modified_at=at,
        )


# ------------------------------------------------------------------ scans (scan-metrics)
# Scan lifecycles from several tenants: six phases with log-normal durations (a per-scan
# size factor makes big artifacts slow in every phase), a cold-cache stall now and then
# (the tail beyond 300 s), some failures and some replays.

SCAN_PHASE_TIMINGS: tuple[tuple[str, float, float], ...] = (
    # phase, median seconds, log-normal sigma
    ("ingest", 6.0, 0.5),
    ("analyze", 26.0, 0.6),
    ("reachability", 15.0, 0.8),
    ("vex", 5.0, 0.5),
    ("sign", 1.2, 0.3),
    ("publish", 2.5, 0.4),
)
_SCAN_ERRORS: dict[str, tuple[str, str, bool]] = {
    # failed phase: error code, message, retryable
    "ingest": ("ARTIFACT_PULL_FAILED", "registry returned 503 while pulling layers", True),
    "analyze": ("ANALYZER_TIMEOUT", "analyzer exceeded its time budget", True),
    "reachability": ("CALLGRAPH_TOO_LARGE", "call graph exceeds the node limit", False),
    "vex": ("VEX_FEED_UNAVAILABLE", "VEX feed snapshot could not be read", True),
    "sign": ("SIGNER_UNAVAILABLE", "signing service did not answer", True),
    "publish": ("PUBLISH_REJECTED", "evidence store rejected the bundle", False),
}
_SCAN_PHASE_METRIC: dict[str, str] = {
    "ingest": "layers",
    "analyze": "packages",
    "reachability": "callPaths",
    "vex": "statements",
    "sign": "signatures",
    "publish": "bytes",
}


def _ms(at: datetime) -> datetime:
    """Whole milliseconds, as scanners report them."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def _hex(rng: random.Random, bits: int = 256) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def scan_lifecycles(
    count: int,
    *,
    seed: int = 7,
    failure_rate: float = 0.05,
    replay_rate: float = 0.08,
    start: datetime | None = None,
) -> list[tuple[ScanSubmitted, ScanCompleted | ScanFailed]]:
    """``count`` scans, each as its events in lifecycle order: ``scan.submitted``, then
    ``scan.completed`` or ``scan.failed``. Arrivals about 1.5 s apart, millisecond
    timestamps; TTE p50 about 70 s with a tail beyond 300 s."""
    rng = random.Random(seed)
    submitted_at = start or BASE_TIME
    scans: list[tuple[ScanSubmitted, ScanCompleted | ScanFailed]] = []
    for i in range(count):
        submitted_at = _ms(submitted_at + timedelta(seconds=rng.expovariate(1 / 1.5)))
        tenant = TENANTS[i % len(TENANTS)]
        scan_id = _uuid(rng)
        replay = rng.random() < replay_rate
        artifact = {
            "scan_id": scan_id,
            "artifact_digest": f"sha256:{_hex(rng)}",
            "artifact_type": rng.choices(
                ("oci_image", "tarball", "directory", "other"), (85, 8, 5, 2)
            )[0],
            "surface_id": _uuid(rng) if rng.random() < 0.3 else None,
            "is_replay": replay,
        }
        submitted = ScanSubmitted(
            event_id=_uuid(rng),
            version=1,
            tenant_id=tenant,
            occurred_at=submitted_at,
            source="scanner-webservice",
            submitted_at=submitted_at,
            **artifact,  # type: ignore[arg-type]  # keys match the struct's fields
        )
        started_at = _ms(submitted_at + timedelta(seconds=rng.lognormvariate(0.5, 0.8)))
        size = rng.lognormvariate(0.0, 0.35)
        fails_in = rng.randrange(len(SCAN_PHASE_TIMINGS)) if rng.random() < failure_rate else None
        phases: list[Phase] = []
        at = started_at
        for order, (name, median, sigma) in enumerate(SCAN_PHASE_TIMINGS, start=1):
            seconds = size * rng.lognormvariate(math.log(median), sigma)
            if name == "analyze" and rng.random() < 0.03:
                seconds *= 8  # cold analyzer cache
            phase_start = _ms(at + timedelta(milliseconds=rng.randrange(5, 400)))
            at = _ms(phase_start + timedelta(seconds=seconds))
            failed = order - 1 == fails_in
            code, message, _ = _SCAN_ERRORS[name]
            phases.append(
                Phase(
                    name=name,  # type: ignore[arg-type]  # names come from the table above
                    order=order,
                    started_at=phase_start,
                    finished_at=at,
                    success=not failed,
                    error_code=code if failed else None,
                    error_message=message if failed else None,
                    metrics={_SCAN_PHASE_METRIC[name]: rng.randrange(1, 5000)},
                )
            )
            if failed:
                break
        outcome: dict[str, object] = {
            "event_id": _uuid(rng),
            "version": 1,
            "tenant_id": tenant,
            "source": "scanner-worker",
            "started_at": started_at,
            "phases": phases,
            "scanner_version": "2.4.1",
            "scanner_image_digest": "sha256:" + "5c" * 32,
            "policy_digest": f"sha256:{_hex(rng)}",
            "feed_snapshot_id": "nvd-20261101T000000Z-001",
            **artifact,
        }
        if fails_in is None:
            finished_at = _ms(at + timedelta(milliseconds=rng.randrange(10, 300)))
            packages = rng.randrange(20, 2500)
            event: ScanCompleted | ScanFailed = ScanCompleted(
                occurred_at=finished_at,
                finished_at=finished_at,
                package_count=packages,
                finding_count=rng.randrange(0, packages // 4 + 1),
                vex_decision_count=rng.randrange(0, 60),
                replay_manifest_hash=f"sha256:{_hex(rng)}" if replay else None,
                findings_sha256=_hex(rng),
                vex_bundle_sha256=_hex(rng),
                proof_bundle_sha256=_hex(rng),
                sbom_sha256=_hex(rng),
                **outcome,  # type: ignore[arg-type]  # keys match the struct's fields
            )
        else:
            name = SCAN_PHASE_TIMINGS[fails_in][0]
            code, message, retryable = _SCAN_ERRORS[name]
            event = ScanFailed(
                occurred_at=at,
                failed_at=at,
                failed_phase=name,  # type: ignore[arg-type]  # names come from the table above
                error_code=code,
                error_message=message,
                retryable=retryable,
                **outcome,  # type: ignore[arg-type]  # keys match the struct's fields
            )
        scans.append((submitted, event))
    return scans


def scan_events(
    count: int,
    *,
    seed: int = 7,
    failure_rate: float = 0.05,
    replay_rate: float = 0.08,
    start: datetime | None = None,
) -> list[Event]:
    """The events of :func:`scan_lifecycles` in the order they happen (by occurredAt):
    lifecycle order within a scan, many scans in flight at once."""
    lifecycles = scan_lifecycles(
        count, seed=seed, failure_rate=failure_rate, replay_rate=replay_rate, start=start
    )
    return sorted((e for scan in lifecycles for e in scan), key=lambda e: e.occurred_at)


# ------------------------------------------------------------------ single documents


Statement = tuple[str, str, str | None]
"""(product purl, status, justification) of one OpenVEX statement."""


def openvex_document(
    author: str,
    statements: Sequence[Statement],
    *,
    vulnerability: str,
    at: datetime,
    doc_id: str | None = None,
) -> dict[str, Any]:
    """An OpenVEX 0.2.0 document of ``statements`` about ``vulnerability``; its ``@id`` is
    ``doc_id`` or one per author."""
    return {
        "@context": "https://openvex.dev/ns/v0.2.0",
        "@id": doc_id or f"https://example.test/vex/{uuid.uuid5(uuid.NAMESPACE_URL, author)}",
        "author": author,
        "timestamp": at.isoformat(),
        "version": 1,
        "statements": [
            {
                "vulnerability": {"name": vulnerability},
                "products": [{"@id": purl}],
                "status": status,
                **({"justification": why} if why else {}),
            }
            for purl, status, why in statements
        ],
    }


def openvex(
    author: str,
    statements: Sequence[Statement],
    *,
    vulnerability: str,
    at: datetime,
    doc_id: str | None = None,
) -> bytes:
    """:func:`openvex_document` as JSON bytes, as a file or a request body holds it."""
    document = openvex_document(
        author, statements, vulnerability=vulnerability, at=at, doc_id=doc_id
    )
    return json.dumps(document).encode()


def export_request(
    profile: ExportProfile,
    *,
    tenant_id: uuid.UUID | None = None,
    source: str = "workload",
    requested_by: str | None = None,
    **options: str,
) -> ExportRequested:
    """One ``export.requested`` event for ``profile`` (a tenant of its own unless given)."""
    return ExportRequested(
        event_id=uuid.uuid4(),
        version=1,
        tenant_id=tenant_id or uuid.uuid4(),
        occurred_at=datetime.now(UTC),
        source=source,
        profile=profile,
        options=options,
        requested_by=requested_by,
    )
