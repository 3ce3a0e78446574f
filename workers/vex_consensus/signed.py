"""Signed VEX documents: DSSE envelopes around an in-toto statement whose predicate is an
OpenVEX document (what ``vexctl attest`` writes), or around an OpenVEX document itself.

Pure: :func:`open_envelope` recognises an envelope and takes out the (not yet trusted)
document, so its issuer (the OpenVEX ``author``) is known; :func:`verify_signed` then
checks the envelope against that issuer's registered keys. Nothing of a document that
fails is stored (``docs/exports.md``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from workers import signing
from workers.vex_consensus.records import DocumentError

OPENVEX_PAYLOAD_TYPE: Final = "application/vnd.openvex+json"
PAYLOAD_TYPES: Final = frozenset({signing.IN_TOTO_PAYLOAD_TYPE, OPENVEX_PAYLOAD_TYPE})
IN_TOTO_STATEMENT_TYPES: Final = frozenset(
    {"https://in-toto.io/Statement/v0.1", "https://in-toto.io/Statement/v1"}
)

REJECTION_REASONS: Final = (
    "malformed",
    "unknown_key",
    "bad_signature",
    "payload_type",
    "signature_required",
)
"""Labels of ``fleet_vex_dsse_verification_failures_total{reason}``."""


class SignatureRejected(DocumentError):
    """A signed document that did not verify, or an unsigned one its issuer must sign."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SignedDocument(msgspec.Struct, frozen=True, kw_only=True):
    envelope: dict[str, Any]
    document: bytes
    """The OpenVEX document inside, as bytes for :func:`parse_document`."""


def open_envelope(data: bytes) -> SignedDocument | None:
    """The envelope and the document inside, or None when ``data`` is not an envelope."""
    try:
        obj = json.loads(data.removeprefix(b"\xef\xbb\xbf"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict) or not {"payloadType", "payload", "signatures"} <= set(obj):
        return None
    kind = obj["payloadType"]
    if kind not in PAYLOAD_TYPES:
        raise SignatureRejected(
            "payload_type",
            f"DSSE payloadType {kind!r} is not one of {', '.join(sorted(PAYLOAD_TYPES))}",
        )
    try:
        payload = base64.b64decode(str(obj["payload"]), validate=True)
        inner = json.loads(payload)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise SignatureRejected("malformed", "DSSE payload is not base64 JSON") from None
    if kind == signing.IN_TOTO_PAYLOAD_TYPE:
        if not isinstance(inner, dict) or inner.get("_type") not in IN_TOTO_STATEMENT_TYPES:
            raise SignatureRejected("malformed", "DSSE payload is not an in-toto statement")
        predicate = inner.get("predicate")
        if not isinstance(predicate, dict):
            raise SignatureRejected("malformed", "in-toto statement has no predicate object")
        inner = predicate
    return SignedDocument(envelope=obj, document=json.dumps(inner).encode())


def verify_signed(
    signed: SignedDocument, issuer_id: str, keys: Mapping[str, Ed25519PublicKey]
) -> dict[str, Any]:
    """What to store in ``vex_raw.signature`` once a key of ``issuer_id`` verified the
    envelope; :class:`SignatureRejected` otherwise."""
    if not keys:
        raise SignatureRejected(
            "unknown_key", f"issuer {issuer_id!r} has no registered key; the document is signed"
        )
    try:
        _, keyid = signing.verify_envelope(signed.envelope, keys)
    except signing.VerificationError as exc:
        raise SignatureRejected(exc.reason, f"signature of {issuer_id!r}: {exc}") from None
    return {
        "keyId": keyid,
        "payloadType": signed.envelope["payloadType"],
        "envelopeSha256": hashlib.sha256(signing.canonical_json(signed.envelope)).hexdigest(),
    }
