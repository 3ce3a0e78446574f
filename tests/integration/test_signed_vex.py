"""Signed OpenVEX on ingest: a DSSE-wrapped in-toto attestation (as ``vexctl attest``
writes) signed with a real ed25519 key registered for its issuer is stored with the key
id; one signed by an unregistered key, altered after signing, or unsigned from an issuer
that requires signatures is refused, kept in vex.ingest_rejections and counted by the
running vex-consensus worker."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devkit.workload import openvex_document
from tests.helpers import fleet_cli, metric, poll, resources, running
from workers import signing
from workers.vex_consensus import VexConsensusWorker

VENDOR = "https://vendor.example/psirt"
PURL = "pkg:oci/app@sha256%3Aabc"
FAILURES = "fleet_vex_dsse_verification_failures_total"


def openvex(status: str = "not_affected") -> dict[str, Any]:
    return openvex_document(
        VENDOR,
        [(PURL, status, "vulnerable_code_not_in_execute_path")],
        vulnerability="CVE-2025-3001",
        at=datetime(2025, 4, 1, tzinfo=UTC),
        doc_id="https://vendor.example/vex/2025-0001",
    )


def attestation(key: Ed25519PrivateKey, document: dict[str, Any]) -> dict[str, Any]:
    """An in-toto statement with the OpenVEX predicate, in a DSSE envelope signed here
    with the key itself (PAE written out from the DSSE specification)."""
    statement = {
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://openvex.dev/ns",
        "subject": [{"name": "app", "digest": {"sha256": "abc"}}],
        "predicate": document,
    }
    payload = json.dumps(statement).encode()
    kind = "application/vnd.in-toto+json"
    pae = b"DSSEv1 %d %s %d %s" % (len(kind), kind.encode(), len(payload), payload)
    return {
        "payloadType": kind,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [
            {
                "keyid": signing.key_id(key.public_key()),
                "sig": base64.b64encode(key.sign(pae)).decode(),
            }
        ],
    }


def _stderr(result: Any) -> str:
    text: str = result.stderr.decode().strip()
    assert result.returncode == 1, text
    assert len(text.splitlines()) == 1 and text.startswith("error:"), text
    return text


async def test_signed_openvex_is_verified_on_ingest_and_refusals_are_counted(
    real_redis: Any,
    db: asyncpg.Pool,
    database_url: str,
    valkey_url: str,
    settings_for: Any,
    tmp_path: Path,
) -> None:
    env = {"FLEET_DATABASE_URL": database_url, "FLEET_VALKEY_URL": valkey_url}
    key = Ed25519PrivateKey.generate()
    public = tmp_path / "vendor.pub"
    public.write_bytes(signing.public_pem(key.public_key()))
    registered = fleet_cli(
        env, "vex", "trust", "set", VENDOR, "--score", "0.9", "--priority", "1",
        "--key", str(public), "--require-signature",
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr.decode()
    assert "registered" in registered.stdout.decode()

    worker = VexConsensusWorker(resources(settings_for(), real_redis, db))
    async with running(worker):
        # Accepted: the statement is stored with the verifying key's id.
        good = tmp_path / "good.intoto.json"
        good.write_text(json.dumps(attestation(key, openvex())))
        accepted = fleet_cli(env, "vex", "import", str(good))
        assert accepted.returncode == 0, accepted.stderr.decode()
        assert "signed (key" in accepted.stdout.decode()
        stored = await db.fetchval("SELECT signature->>'keyId' FROM vex.vex_raw")
        assert stored == signing.key_id(key.public_key())
        assert await db.fetchval("SELECT resolved_status FROM vex.consensus") == "not_affected"

        before = {r: metric(FAILURES, reason=r) for r in ("unknown_key", "bad_signature")}
        # Signed by a key nobody registered for the issuer.
        stranger = tmp_path / "stranger.intoto.json"
        stranger.write_text(
            json.dumps(attestation(Ed25519PrivateKey.generate(), openvex("affected")))
        )
        assert "refused (unknown_key)" in _stderr(fleet_cli(env, "vex", "import", str(stranger)))
        # Altered after signing: the payload says affected, the signature covers not_affected.
        altered_envelope = attestation(key, openvex())
        statement = json.loads(base64.b64decode(altered_envelope["payload"]))
        statement["predicate"]["statements"][0]["status"] = "affected"
        altered_envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
        altered = tmp_path / "altered.intoto.json"
        altered.write_text(json.dumps(altered_envelope))
        assert "refused (bad_signature)" in _stderr(fleet_cli(env, "vex", "import", str(altered)))
        # Unsigned, from an issuer that requires signatures.
        unsigned = tmp_path / "unsigned.openvex.json"
        unsigned.write_text(json.dumps(openvex("affected")))
        assert "refused (signature_required)" in _stderr(
            fleet_cli(env, "vex", "import", str(unsigned))
        )

        async def counted() -> bool:
            return all(metric(FAILURES, reason=r) == before[r] + 1 for r in before)

        await poll(counted, timeout=20, what="the worker to count both refusals")

    # Nothing of the refused documents was stored; each is kept whole with its reason.
    assert await db.fetchval("SELECT count(*) FROM vex.vex_raw") == 1
    assert await db.fetchval("SELECT resolved_status FROM vex.consensus") == "not_affected"
    kept = await db.fetch(
        "SELECT reason, source, document FROM vex.ingest_rejections ORDER BY rejection_id"
    )
    assert [r["reason"] for r in kept] == ["unknown_key", "bad_signature", "signature_required"]
    assert bytes(kept[1]["document"]) == altered.read_bytes()
