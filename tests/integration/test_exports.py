"""Signed exports: deterministic bundles, manifests checked with hashlib, DSSE envelopes
checked with the public key, and ``verify`` catching a changed file or signature."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from contracts.exports import ExportCompleted, ExportFailed, ExportProfile, ExportRequested
from contracts.wire import decode_event
from devkit import workload
from devkit.embedded import start_s3
from tests.helpers import (
    apply_directly,
    fleet_cli,
    fleet_in_process,
    metric,
    poll,
    resources,
    running,
)
from workers import s3 as s3io
from workers import signing
from workers.export import ExportWorker
from workers.kernel.worker import Resources
from workers.partitions import key_for, stream_keys
from workers.publishing import publish
from workers.s3 import open_s3
from workers.scan_metrics import ScanMetricsWorker
from workers.vex_consensus import service
from workers.vex_consensus.consensus import IssuerTrust
from workers.vex_consensus.documents import parse_document

VENDOR = "https://vendor.example/psirt"
DISTRO = "https://distro.example/security"
T0 = datetime(2025, 3, 1, tzinfo=UTC)
KEY = signing.generate_key()
TENANT = uuid.UUID("7d1f0a3e-2b4c-4d5e-8f6a-7b8c9d0e1f2a")


def openvex(author: str, purl: str, status: str) -> bytes:
    why = "component_not_present" if status == "not_affected" else None
    return workload.openvex(author, [(purl, status, why)], vulnerability="CVE-2025-2001", at=T0)


async def seed_consensus(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn, conn.transaction():
        await service.set_trust(
            conn,
            [
                IssuerTrust(
                    issuer_id=VENDOR, trust_score=Decimal("0.90"), priority=1, issuer_type="vendor"
                ),
                IssuerTrust(
                    issuer_id=DISTRO, trust_score=Decimal("0.50"), priority=1, issuer_type="distro"
                ),
            ],
        )
        docs = [
            parse_document(openvex(VENDOR, "pkg:npm/left-pad@1.3.0", "not_affected")),
            parse_document(openvex(DISTRO, "pkg:npm/left-pad@1.3.0", "affected")),
            parse_document(openvex(VENDOR, "pkg:npm/right-pad@2.0.0", "fixed")),
        ]
        await service.import_documents(conn, docs)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "export.pem"
    path.write_bytes(signing.private_pem(KEY))
    return path


def _env(database_url: str, valkey_url: str) -> dict[str, str]:
    return {"FLEET_DATABASE_URL": database_url, "FLEET_VALKEY_URL": valkey_url}


def _pae(payload_type: str, payload: bytes) -> bytes:
    # Written out here from the DSSE specification, independent of workers.signing.
    t = payload_type.encode()
    return (
        b"DSSEv1 "
        + str(len(t)).encode()
        + b" "
        + t
        + b" "
        + str(len(payload)).encode()
        + (b" " + payload)
    )


async def test_two_vex_exports_of_the_same_state_are_byte_identical_and_verifiable(
    db: asyncpg.Pool, database_url: str, valkey_url: str, tmp_path: Path, key_file: Path
) -> None:
    await seed_consensus(db)
    env = _env(database_url, valkey_url)
    outputs = []
    for name in ("first", "second"):
        for fmt in ("json", "openvex"):
            manifest = tmp_path / name / fmt / "manifest.json"
            result = fleet_cli(
                env, "vex", "export", "--format", fmt, "--manifest", str(manifest),
                "--key", str(key_file),
            )  # fmt: skip
            assert result.returncode == 0, result.stderr.decode()
        outputs.append(tmp_path / name)
        # The same state, stored in another physical order: an update that changes
        # nothing moves the first pair's row to the end of the table.
        await db.execute(
            "UPDATE vex.consensus SET resolved_status = resolved_status "
            "WHERE component_purl = 'pkg:npm/left-pad@1.3.0'"
        )
    first, second = outputs
    names = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
    assert names == [
        "json/manifest.dsse.json", "json/manifest.json", "json/vex/consensus.json",
        "openvex/manifest.dsse.json", "openvex/manifest.json",
        "openvex/vex/consensus.openvex.json",
    ]  # fmt: skip
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    first = first / "json"

    # The manifest's hashes, checked here with hashlib.
    body = (first / "manifest.json").read_bytes()
    manifest = json.loads(body)
    assert manifest["profile"] == "vex"
    for entry in manifest["files"]:
        data = (first / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert len(data) == entry["size"]
    consensus = json.loads((first / "vex/consensus.json").read_bytes())["consensus"]
    assert [(r["component_purl"], r["resolved_status"]) for r in consensus] == [
        ("pkg:npm/left-pad@1.3.0", "not_affected"),
        ("pkg:npm/right-pad@2.0.0", "fixed"),
    ]

    # The DSSE signature, checked here with the public key itself.
    envelope = json.loads((first / "manifest.dsse.json").read_bytes())
    assert base64.b64decode(envelope["payload"]) == body
    public = KEY.public_key()
    assert isinstance(public, Ed25519PublicKey)
    (sig,) = envelope["signatures"]
    public.verify(base64.b64decode(sig["sig"]), _pae(envelope["payloadType"], body))

    ok = fleet_cli(env, "vex", "verify", "--manifest", str(first / "manifest.json"), "--key",
                   str(key_file))  # fmt: skip
    assert ok.returncode == 0, ok.stderr.decode()
    assert "signature ok" in ok.stdout.decode()


async def test_verify_catches_a_changed_file_and_a_changed_signature(
    db: asyncpg.Pool, database_url: str, valkey_url: str, tmp_path: Path, key_file: Path
) -> None:
    await seed_consensus(db)
    env = _env(database_url, valkey_url)
    manifest = tmp_path / "out" / "manifest.json"
    made = fleet_cli(
        env, "vex", "export", "--format", "openvex", "--manifest", str(manifest),
        "--key", str(key_file),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr.decode()
    document = manifest.parent / "vex" / "consensus.openvex.json"
    assert parse_document(document.read_bytes()).format == "openvex"
    public = tmp_path / "export.pub"
    public.write_bytes(signing.public_pem(KEY.public_key()))

    original = document.read_bytes()
    # Same size, different content: only the sha256 can tell.
    document.write_bytes(original.replace(b"right-pad", b"wrong-pad"))
    changed = fleet_cli(env, "vex", "verify", "--manifest", str(manifest), "--key", str(public))
    assert changed.returncode == 1
    stderr = changed.stderr.decode()
    assert "vex/consensus.openvex.json" in stderr and "sha256" in stderr, stderr
    document.write_bytes(original)

    envelope_file = manifest.parent / "manifest.dsse.json"
    envelope = json.loads(envelope_file.read_bytes())
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[0] ^= 0x01
    envelope["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    envelope_file.write_text(json.dumps(envelope))
    forged = fleet_cli(env, "vex", "verify", "--manifest", str(manifest), "--key", str(public))
    assert forged.returncode == 1
    assert "bad_signature" in forged.stderr.decode(), forged.stderr.decode()


async def test_export_bundle_and_verify_catch_a_rewritten_manifest_a_missing_file_and_a_stranger(
    db: asyncpg.Pool,
    database_url: str,
    valkey_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = _env(database_url, valkey_url)
    key = tmp_path / "keys" / "export.pem"
    made = fleet_cli(env, "export", "keygen", str(key))
    assert made.returncode == 0, made.stderr.decode()
    assert key.stat().st_mode & 0o777 == 0o600
    public = key.with_name(key.name + ".pub")
    assert b"PRIVATE" not in public.read_bytes()
    manifest = tmp_path / "out" / "manifest.json"
    built = fleet_cli(
        env, "export", "bundle", "--profile", "snapshots", "--manifest", str(manifest),
        "--key", str(key),
    )  # fmt: skip
    assert built.returncode == 0, built.stderr.decode()
    listed = [f["path"] for f in json.loads(manifest.read_bytes())["files"]]
    assert listed == ["snapshots/active.json", "snapshots/audit.json"]

    def verify(with_key: Path = public) -> tuple[int, str, str]:
        return fleet_in_process(
            capsys, monkeypatch, "export", "verify", "--manifest", str(manifest),
            "--key", str(with_key),
        )  # fmt: skip

    code, out, _ = verify()
    assert code == 0 and "signature ok" in out and "2 file(s)" in out, out

    # A file changed and the manifest rewritten to match it: the hashes agree, the
    # signature over the manifest does not.
    audit = manifest.parent / "snapshots" / "audit.json"
    original_audit, original_manifest = audit.read_bytes(), manifest.read_bytes()
    forged = b'{"audit": []}\n'
    audit.write_bytes(forged)
    body = json.loads(original_manifest)
    for entry in body["files"]:
        if entry["path"] == "snapshots/audit.json":
            entry["sha256"], entry["size"] = hashlib.sha256(forged).hexdigest(), len(forged)
    manifest.write_bytes(signing.manifest_bytes(body))
    code, _, err = verify()
    assert code == 1 and "bad_signature" in err and len(err.splitlines()) == 1, err
    audit.write_bytes(original_audit)
    manifest.write_bytes(original_manifest)

    # A listed file missing.
    (manifest.parent / "snapshots" / "active.json").unlink()
    code, _, err = verify()
    assert code == 1 and "snapshots/active.json" in err and "missing" in err, err

    # Checked with a key that did not sign it.
    stranger = tmp_path / "stranger.pub"
    stranger.write_bytes(signing.public_pem(signing.generate_key().public_key()))
    code, _, err = verify(stranger)
    assert code == 1 and "unknown_key" in err, err


def test_export_without_a_key_is_one_line_error(tmp_path: Path) -> None:
    result = fleet_cli(
        {"FLEET_EXPORT_KEY_FILE": ""},
        "export", "bundle", "--profile", "vex", "--manifest", str(tmp_path / "m.json"),
    )  # fmt: skip
    assert result.returncode == 2
    stderr = result.stderr.decode().strip()
    assert stderr.startswith("error: no signing key") and len(stderr.splitlines()) == 1


# ------------------------------------------------------------------ the export worker


def _request(profile: ExportProfile, **options: str) -> ExportRequested:
    return workload.export_request(profile, tenant_id=TENANT, source="test", **options)


async def test_export_worker_stores_signed_bundles_in_s3_and_announces_them(
    real_redis: Any,
    db: asyncpg.Pool,
    settings_for: Any,
    s3_url: str,
    key_file: Path,
) -> None:
    await seed_consensus(db)
    settings = settings_for(
        s3_endpoint_url=s3_url,
        s3_bucket=f"exports-{uuid.uuid4().hex[:12]}",
        export_key_file=str(key_file),
    )
    vex = _request("vex", format="openvex")
    scans = _request("scan-metrics")
    snaps = _request("snapshots")
    bad = _request("vex", format="yaml")
    before = metric("fleet_export_manifest_publish_total", result="ok")
    async with open_s3(settings) as s3:
        worker = ExportWorker(Resources(settings=settings, redis=real_redis, pool=db, s3=s3))
        async with running(worker):
            await publish(real_redis, "export:requests", [vex, scans, snaps, bad])

            async def announced() -> bool:
                return int(await real_redis.xlen("export:events")) >= 4

            await poll(announced, what="four outcomes on export:events")

        outcomes = {}
        for _, fields in await real_redis.xrange("export:events"):
            event = decode_event(fields)
            assert isinstance(event, ExportCompleted | ExportFailed)
            assert event.export_id not in outcomes, f"{event.export_id} announced twice"
            outcomes[event.export_id] = event
        assert set(outcomes) == {vex.event_id, scans.event_id, snaps.event_id, bad.event_id}
        failed = outcomes[bad.event_id]
        assert isinstance(failed, ExportFailed) and failed.reason == "invalid_request"
        assert "yaml" in failed.error

        done = outcomes[vex.event_id]
        assert isinstance(done, ExportCompleted)
        assert done.manifest_key == f"exports/vex/{vex.event_id}/manifest.json"
        body = await s3io.get_object(s3, settings.s3_bucket, done.manifest_key)
        assert hashlib.sha256(body).hexdigest() == done.manifest_sha256
        envelope = json.loads(
            await s3io.get_object(
                s3, settings.s3_bucket, f"exports/vex/{vex.event_id}/manifest.dsse.json"
            )
        )
        (sig,) = envelope["signatures"]
        assert sig["keyid"] == done.key_id
        KEY.public_key().verify(base64.b64decode(sig["sig"]), _pae(envelope["payloadType"], body))
        for entry in json.loads(body)["files"]:
            data = await s3io.get_object(
                s3, settings.s3_bucket, f"exports/vex/{vex.event_id}/{entry['path']}"
            )
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert done.bundle_size_bytes == sum(e["size"] for e in json.loads(body)["files"])
        for request, path in (
            (scans, "scan-metrics/tte-report.json"),
            (snaps, "snapshots/audit.json"),
        ):
            outcome = outcomes[request.event_id]
            assert isinstance(outcome, ExportCompleted), outcome
            listed = [f["path"] for f in json.loads(
                await s3io.get_object(s3, settings.s3_bucket, outcome.manifest_key)
            )["files"]]  # fmt: skip
            assert path in listed

    jobs = await db.fetch("SELECT status, published_at FROM export.jobs")
    assert sorted(j["status"] for j in jobs) == ["completed", "completed", "completed", "failed"]
    assert all(j["published_at"] is not None for j in jobs)
    assert metric("fleet_export_manifest_publish_total", result="ok") == before + 3
    assert metric("fleet_export_job_duration_seconds_count", profile="vex") >= 2


async def test_scan_metrics_bundle_is_narrowed_by_tenant_and_since(
    db: asyncpg.Pool,
    database_url: str,
    valkey_url: str,
    settings_for: Any,
    key_file: Path,
    tmp_path: Path,
) -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    events = workload.scan_events(60, seed=29, start=start)
    await apply_directly(ScanMetricsWorker(resources(settings_for(), None, db)), db, events)
    stored = await db.fetch("SELECT scan_id, tenant_id, started_at FROM scanner.scan_metrics")
    tenant = stored[0]["tenant_id"]
    times = sorted(r["started_at"] for r in stored if r["tenant_id"] == tenant)
    since = times[len(times) // 2]
    expected = {
        str(r["scan_id"]) for r in stored if r["tenant_id"] == tenant and r["started_at"] >= since
    }
    assert 0 < len(expected) < len(stored)
    manifest = tmp_path / "out" / "manifest.json"
    result = fleet_cli(
        _env(database_url, valkey_url),
        "export", "bundle", "--profile", "scan-metrics", "--tenant", str(tenant),
        "--since", since.isoformat(), "--manifest", str(manifest), "--key", str(key_file),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    files = manifest.parent / "scan-metrics"
    scans = json.loads((files / "scans.json").read_bytes())["scans"]
    assert {row["scan_id"] for row in scans} == expected
    assert {row["tenant_id"] for row in scans} == {str(tenant)}
    phases = json.loads((files / "phases.json").read_bytes())["phases"]
    assert phases and {row["scan_id"] for row in phases} <= expected


async def test_an_s3_outage_is_waited_out_and_dead_letters_nothing(
    real_redis: Any, db: asyncpg.Pool, settings_for: Any, key_file: Path
) -> None:
    """S3 goes away with a request in hand: the batch waits (claims kept fresh) instead of
    being redelivered into the dead-letter stream, and completes once S3 is back. With a
    delivery limit of 2 and a reclaim idle time of 1 s, a batch given up would be
    dead-lettered within a few seconds; the outage lasts several retries longer."""
    await seed_consensus(db)
    server, url = start_s3()
    port = int(url.rsplit(":", 1)[1])
    settings = settings_for(
        s3_endpoint_url=url,
        s3_bucket=f"exports-{uuid.uuid4().hex[:12]}",
        export_key_file=str(key_file),
        max_deliveries=2,
    )
    request = _request("vex", format="openvex")
    retried = {"stream": "export:requests", "group": "export-workers"}
    before = metric("fleet_events_total", **retried, type="batch", outcome="retried")
    try:
        async with open_s3(settings) as s3:
            worker = ExportWorker(Resources(settings=settings, redis=real_redis, pool=db, s3=s3))
            async with running(worker):
                server.stop()
                await publish(real_redis, "export:requests", [request])

                async def retried_a_while() -> bool:
                    count = metric("fleet_events_total", **retried, type="batch", outcome="retried")
                    return count - before >= 4

                await poll(
                    retried_a_while, timeout=60, what="the batch retrying through the outage"
                )
                assert await real_redis.xlen("export:requests:dlq") == 0
                server, _ = start_s3(port)  # moto keeps its buckets in this process

                async def announced() -> bool:
                    return int(await real_redis.xlen("export:events")) >= 1

                await poll(announced, what="the outcome once S3 is back")
        ((_, fields),) = await real_redis.xrange("export:events")
        outcome = decode_event(fields)
        assert isinstance(outcome, ExportCompleted) and outcome.export_id == request.event_id
        assert await real_redis.xlen("export:requests:dlq") == 0
        pending = await real_redis.xpending("export:requests", "export-workers")
        assert pending["pending"] == 0
    finally:
        server.stop()


async def _failed_outcomes(
    settings: Any, redis: Any, db: asyncpg.Pool, count: int
) -> tuple[ExportWorker, list[ExportRequested]]:
    """An export worker, and ``count`` requests it handled and committed as failed (an
    unknown format), each from a tenant of its own, their outcomes not yet published."""
    worker = ExportWorker(Resources(settings=settings, redis=redis, pool=db))
    requests = [workload.export_request("vex", format="yaml") for _ in range(count)]
    await apply_directly(worker, db, requests)
    return worker, requests


async def _unpublished(db: asyncpg.Pool) -> int:
    return int(await db.fetchval("SELECT count(*) FROM export.jobs WHERE published_at IS NULL"))


async def test_concurrent_publishers_announce_each_outcome_once_on_its_partition(
    real_redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    # after_commit, the background task and other replicas all publish unpublished
    # outcomes: each must reach export:events once, on the partition of its tenant.
    settings = settings_for(stream_partitions=2)
    worker, requests = await _failed_outcomes(settings, real_redis, db, 40)
    published = await asyncio.gather(*(worker._publish_pending() for _ in range(4)))
    assert sum(published) == 40
    seen: list[uuid.UUID] = []
    for key in stream_keys("export:events", 2):
        for _, fields in await real_redis.xrange(key):
            event = decode_event(fields)
            assert isinstance(event, ExportFailed)
            assert key == key_for("export:events", str(event.tenant_id), 2)
            seen.append(event.export_id)
    assert sorted(seen) == sorted(r.event_id for r in requests)
    assert await real_redis.xlen("export:events") == 0
    assert await _unpublished(db) == 0


async def test_outcomes_a_failing_partition_refused_are_announced_later_and_the_rest_once(
    real_redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    # One partition takes its outcomes, the next one refuses (as a primary failing over
    # would): the taken ones are marked published at once, the refused ones on a later
    # pass, and no outcome reaches export:events twice.
    settings = settings_for(stream_partitions=2)
    worker, requests = await _failed_outcomes(settings, real_redis, db, 30)
    first = await db.fetchval(
        "SELECT outcome->>'tenantId' FROM export.jobs ORDER BY finished_at LIMIT 1"
    )
    taking = key_for("export:events", first, 2)
    (refusing,) = set(stream_keys("export:events", 2)) - {taking}
    await real_redis.set(refusing, b"not a stream")  # XADD to it fails with WRONGTYPE

    published = await worker._publish_pending()
    on_taking = int(await real_redis.xlen(taking))
    assert 0 < published == on_taking < len(requests)
    assert await _unpublished(db) == len(requests) - on_taking

    await real_redis.delete(refusing)
    assert await worker._publish_pending() == len(requests) - on_taking
    assert await worker._publish_pending() == 0
    seen = [
        decode_event(fields).export_id  # type: ignore[attr-defined]
        for key in (taking, refusing)
        for _, fields in await real_redis.xrange(key)
    ]
    assert sorted(seen) == sorted(r.event_id for r in requests)


async def test_outcomes_no_replica_confirms_are_announced_once_not_on_every_pass(
    real_redis: Any, db: asyncpg.Pool, settings_for: Any
) -> None:
    # FLEET_PUBLISH_REPLICAS=1 on a server without replicas: the wait runs out, the
    # outcomes are on the primary, and they are marked published rather than added
    # again on every pass while no replica exists.
    settings = settings_for(publish_replicas=1)
    worker, requests = await _failed_outcomes(settings, real_redis, db, 3)
    assert await worker._publish_pending() == len(requests)
    assert await worker._publish_pending() == 0
    announced = [decode_event(f) for _, f in await real_redis.xrange("export:events")]
    assert sorted(e.export_id for e in announced) == sorted(r.event_id for r in requests)  # type: ignore[attr-defined]
    assert await _unpublished(db) == 0
