"""The demo's signed parts (``docs/exports.md``): a signed OpenVEX import verified
against a registered key (and a tampered copy refused and counted), and a VEX export
built by the export worker, stored in S3 and verified with the public key.

Everything goes through the product's own code: the calls of ``fleet vex trust set
--key --require-signature``, of ``fleet vex import``, the ``export.requested`` contract
on ``export:requests`` and :func:`workers.signing.verify_manifest`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY
from rich.console import Console

from devkit import workload
from workers import s3 as s3io
from workers import signing
from workers.errors import FleetError
from workers.export.worker import bundle_prefix
from workers.publishing import publish
from workers.settings import Settings
from workers.vex_consensus import ingest, keys, outbox
from workers.vex_consensus import service as vex
from workers.vex_consensus.consensus import IssuerTrust

SIGNED_ISSUER: Final = "https://signed-vendor.example/psirt"
DEMO_TENANT: Final = uuid.UUID("00000000-0000-4000-8000-00000000d3e0")
FAILURES: Final = "fleet_vex_dsse_verification_failures_total"


def export_key(state_dir: Path) -> Path:
    """The demo's export signing key (ed25519 PEM, 0600), made once per state folder."""
    path = state_dir / "export-signing.pem"
    if not path.is_file():
        state_dir.mkdir(parents=True, exist_ok=True)
        path.write_bytes(signing.private_pem(signing.generate_key()))
        path.chmod(0o600)
    return path


def attestation(key: Ed25519PrivateKey, components: int) -> bytes:
    """An OpenVEX document about three demo components as an in-toto statement in a DSSE
    envelope, as ``vexctl attest`` writes it. Dated now, so a demo run again on the same
    state stores its statements anew, under this run's key."""
    at = datetime.now(UTC).replace(microsecond=0)
    vulnerability = workload.VEX_VULNERABILITIES[0]
    purls = workload.vex_components(components)[:3]
    document = workload.openvex_document(
        SIGNED_ISSUER,
        [(purl, "not_affected", "vulnerable_code_not_in_execute_path") for purl in purls],
        vulnerability=vulnerability,
        at=at,
        doc_id=f"https://signed-vendor.example/vex/demo-{at:%Y%m%dT%H%M%S}",
    )
    statement = {
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://openvex.dev/ns",
        "subject": [{"name": p, "digest": {"sha256": "0" * 64}} for p in purls],
        "predicate": document,
    }
    payload = json.dumps(statement, sort_keys=True).encode()
    return json.dumps(signing.sign_envelope(payload, signing.IN_TOTO_PAYLOAD_TYPE, key)).encode()


def tampered(envelope: bytes) -> bytes:
    """The same envelope with the document altered after signing (a status flipped)."""
    obj = json.loads(envelope)
    statement = json.loads(base64.b64decode(obj["payload"]))
    statement["predicate"]["statements"][0]["status"] = "affected"
    obj["payload"] = base64.b64encode(json.dumps(statement, sort_keys=True).encode()).decode()
    return json.dumps(obj).encode()


def counted_failures(reason: str) -> float:
    return REGISTRY.get_sample_value(FAILURES, {"reason": reason}) or 0.0


async def signed_vex(pool: Any, client: Any, components: int, console: Console) -> float:
    """Register a fresh key for :data:`SIGNED_ISSUER`, import a signed attestation and a
    tampered copy; returns the failure counter before, for :func:`await_counted`."""
    key = signing.generate_key()
    counted_before = counted_failures("bad_signature")
    async with pool.acquire() as conn, conn.transaction():
        # What `fleet vex trust set ISSUER --key PUB --require-signature` does.
        await vex.set_trust(
            conn,
            [
                IssuerTrust(
                    issuer_id=SIGNED_ISSUER,
                    trust_score=Decimal("0.80"),
                    priority=2,
                    issuer_type="vendor",
                )
            ],
        )
        keyid, _ = await keys.add_key(conn, SIGNED_ISSUER, key.public_key())
        await keys.set_require_signature(conn, SIGNED_ISSUER, True)
    good = attestation(key, components)
    # What `fleet vex import` does: load, check the signature, keep refusals, store.
    loaded = [
        ingest.load(good, "signed.intoto.json"),
        ingest.load(tampered(good), "tampered.intoto.json"),
    ]
    async with pool.acquire() as conn:
        accepted, refused = await ingest.check(conn, loaded)
    if [item.source for item, _ in accepted] != ["signed.intoto.json"] or [
        r.reason for r in refused
    ] != ["bad_signature"]:
        raise FleetError("the demo's signed VEX import did not verify as expected")
    async with pool.acquire() as conn, conn.transaction():
        (rejection,) = await ingest.keep_rejections(conn, refused)
        imported = await vex.import_documents(conn, [document for _, document in accepted])
        stored = await conn.fetchval(
            "SELECT count(*) FROM vex.vex_raw WHERE signature->>'keyId' = $1", keyid
        )
    imported.recompute.observe()
    await outbox.publish(pool, client)
    console.print(
        f"  signed vex: ed25519 key {keyid[:16]}… registered for {SIGNED_ISSUER} "
        "(signatures required)",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"  signed vex: attestation verified and accepted, {stored} statement(s) stored "
        f"with key id {keyid[:16]}…; tampered copy refused (bad_signature), kept as "
        f"vex.ingest_rejections #{rejection}",
        highlight=False,
        soft_wrap=True,
    )
    return counted_before


async def await_counted(before: float, console: Console, *, deadline_s: float = 15.0) -> None:
    """Wait for the running vex-consensus worker to count the refusal, and show it."""
    deadline = time.monotonic() + deadline_s
    while counted_failures("bad_signature") <= before:
        if time.monotonic() > deadline:
            raise FleetError("the vex-consensus worker did not count the refused document")
        await asyncio.sleep(0.1)
    counted = counted_failures("bad_signature") - before
    console.print(
        f'  signed vex: {FAILURES}{{reason="bad_signature"}} +{counted:g} '
        "(counted by the vex-consensus worker)",
        highlight=False,
        soft_wrap=True,
    )


async def export_vex(
    settings: Settings, pool: Any, client: Any, console: Console, *, deadline_s: float = 60.0
) -> None:
    """Ask the export worker for an OpenVEX bundle, wait for its outcome, then fetch the
    bundle from S3 and verify the manifest's signature and every file's hash."""
    request = workload.export_request(
        "vex", tenant_id=DEMO_TENANT, source="demo", requested_by="demo", format="openvex"
    )
    started = time.monotonic()
    await publish(client, "export:requests", [request], partitions=settings.stream_partitions)
    deadline = started + deadline_s
    while True:
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT status, error, bundle_size, file_count, manifest_key, key_id "
                "FROM export.jobs WHERE export_id = $1",
                request.event_id,
            )
        if row is not None:
            break
        if time.monotonic() > deadline:
            raise FleetError(f"the export worker did not finish within {deadline_s:.0f} s")
        await asyncio.sleep(0.1)
    if row["status"] != "completed":
        raise FleetError(f"the demo's export failed: {row['error']}")
    seconds = time.monotonic() - started
    console.print(
        f"  export: vex bundle (OpenVEX) by the export worker in {seconds:.1f}s: "
        f"s3://{settings.s3_bucket}/{row['manifest_key']}, {row['file_count']} file(s), "
        f"{row['bundle_size']} bytes, manifest signed by key {row['key_id'][:16]}…",
        highlight=False,
        soft_wrap=True,
    )
    prefix = bundle_prefix("vex", request.event_id)
    key_path = settings.export_key_file
    assert key_path is not None
    pem = await asyncio.to_thread(Path(key_path).read_bytes)
    public = signing.parse_private_key(pem, key_path).public_key()
    async with s3io.open_s3(settings) as s3:
        body = await s3io.get_object(s3, settings.s3_bucket, f"{prefix}/manifest.json")
        envelope = await s3io.get_object(s3, settings.s3_bucket, f"{prefix}/manifest.dsse.json")
        files = {
            path: await s3io.get_object(s3, settings.s3_bucket, f"{prefix}/{path}")
            for path, _, _ in signing.parse_manifest(body)
        }
    try:
        checked, keyid = signing.verify_manifest(body, envelope, public, files.get)
    except signing.VerificationError as exc:
        raise FleetError(f"the demo's export does not verify: {exc}") from None
    document = msgspec.json.decode(files["vex/consensus.openvex.json"])
    console.print(
        f"  export: verified from S3: DSSE signature ok (key {keyid[:16]}…), "
        f"{checked} file hash(es) ok; {len(document['statements'])} OpenVEX statement(s)",
        highlight=False,
        soft_wrap=True,
    )
