"""Signed, hashed manifests: DSSE envelopes over ed25519 keys (``cryptography``).

Pure functions over bytes; reading key files is the only I/O (``docs/exports.md``).

- :func:`pae` is the DSSE pre-authentication encoding
  (``DSSEv1 <len(type)> <type> <len(payload)> <payload>``); a signature covers the
  PAE of the payload type and the payload, never the payload alone.
- :func:`sign_envelope` / :func:`verify_envelope`: a DSSE envelope
  (``payloadType``, base64 ``payload``, ``signatures`` ``[{keyid, sig}]``). Key ids are
  the SHA-256 hex of the raw 32-byte public key, so the same key has the same id
  wherever it is registered.
- :func:`build_manifest` lists files (``path``, ``sha256``, ``size``) sorted by path;
  :func:`canonical_json` makes two manifests of the same files byte-identical.
- :func:`check_files` compares a manifest with the bytes on disk and names the first
  mismatch.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MANIFEST_PAYLOAD_TYPE: Final = "application/vnd.streamfleet.manifest+json"
"""The DSSE payload type of export manifests."""
IN_TOTO_PAYLOAD_TYPE: Final = "application/vnd.in-toto+json"
"""The DSSE payload type of in-toto attestations (what ``vexctl attest`` signs)."""
MANIFEST_SCHEMA: Final = "https://streamfleet.dev/export-manifest/v1"

FailureReason = Literal["malformed", "unknown_key", "bad_signature", "payload_type"]
"""Why an envelope did not verify; the ``reason`` label of the failure counters."""


class SigningError(ValueError):
    """A key cannot be read or used; the message is one line."""


class VerificationError(ValueError):
    """An envelope or manifest does not verify; ``reason`` is a bounded label."""

    def __init__(self, reason: FailureReason | Literal["hash_mismatch"], message: str) -> None:
        super().__init__(message)
        self.reason = reason


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8: the same value, the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding of ``payload`` under ``payload_type``."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


# ------------------------------------------------------------------ keys


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def parse_private_key(pem: bytes, where: str = "key") -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{where}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{where}: not an ed25519 key ({type(key).__name__})")
    return key


def parse_public_key(pem: bytes, where: str = "key") -> Ed25519PublicKey:
    """An ed25519 public key from a public PEM, or the public half of a private PEM."""
    if b"PRIVATE KEY" in pem:
        return parse_private_key(pem, where).public_key()
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{where}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{where}: not an ed25519 key ({type(key).__name__})")
    return key


def read_key_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SigningError(f"{path}: cannot read key: {exc.strerror or exc}") from None


# ------------------------------------------------------------------ envelopes


def sign_envelope(payload: bytes, payload_type: str, key: Ed25519PrivateKey) -> dict[str, Any]:
    """A DSSE envelope over ``payload`` with one ed25519 signature."""
    signature = key.sign(pae(payload_type, payload))
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [
            {"keyid": key_id(key.public_key()), "sig": base64.b64encode(signature).decode("ascii")}
        ],
    }


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise VerificationError("malformed", f"envelope {what} is not a string")
    try:
        # DSSE allows standard or URL-safe base64; normalise to standard.
        return base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise VerificationError("malformed", f"envelope {what} is not base64") from None


def verify_envelope(
    envelope: object,
    keys: Mapping[str, Ed25519PublicKey] | Callable[[str], Ed25519PublicKey | None],
    *,
    payload_type: str | None = None,
) -> tuple[bytes, str]:
    """The payload and the id of the key whose signature verified.

    ``keys`` maps key ids to trusted public keys (or looks them up). Succeeds when one
    signature by a trusted key verifies over the PAE; raises :class:`VerificationError`
    otherwise (``malformed``, ``payload_type``, ``unknown_key``, ``bad_signature``).
    """
    if not isinstance(envelope, dict):
        raise VerificationError("malformed", "a DSSE envelope is a JSON object")
    kind = envelope.get("payloadType")
    if not isinstance(kind, str) or not kind:
        raise VerificationError("malformed", "envelope has no payloadType")
    if payload_type is not None and kind != payload_type:
        raise VerificationError(
            "payload_type", f"envelope payloadType is {kind!r}, expected {payload_type!r}"
        )
    payload = _b64(envelope.get("payload"), "payload")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise VerificationError("malformed", "envelope has no signatures")
    lookup = keys.get if isinstance(keys, Mapping) else keys
    message = pae(kind, payload)
    seen_trusted = False
    for entry in signatures:
        if not isinstance(entry, dict):
            raise VerificationError("malformed", "an envelope signature is not an object")
        keyid = entry.get("keyid")
        public = lookup(keyid) if isinstance(keyid, str) and keyid else None
        if public is None:
            continue
        seen_trusted = True
        try:
            public.verify(_b64(entry.get("sig"), "sig"), message)
        except InvalidSignature:
            continue
        return payload, key_id(public)
    if not seen_trusted:
        named = ", ".join(
            str(e.get("keyid") or "(none)") for e in signatures if isinstance(e, dict)
        )
        raise VerificationError("unknown_key", f"no signature by a registered key (keyid {named})")
    raise VerificationError("bad_signature", "signature does not verify against the payload")


# ------------------------------------------------------------------ manifests


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_manifest(files: Mapping[str, bytes], **meta: Any) -> dict[str, Any]:
    """A manifest of ``files`` (relative path -> bytes), sorted by path, plus ``meta``.

    Keep ``meta`` a function of the exported state (no wall clock), so that two exports
    of the same state give byte-identical manifests."""
    for path in files:
        if path.startswith("/") or ".." in Path(path).parts or not path:
            raise SigningError(f"manifest path {path!r} must be relative, inside the bundle")
    return {
        "schema": MANIFEST_SCHEMA,
        **meta,
        "files": [
            {"path": path, "sha256": sha256_hex(files[path]), "size": len(files[path])}
            for path in sorted(files)
        ],
    }


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The manifest file's bytes: indented for ``jq`` readers, sorted, newline-ended."""
    return (json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def envelope_bytes(envelope: Mapping[str, Any]) -> bytes:
    return (json.dumps(envelope, sort_keys=True, indent=2) + "\n").encode()


def envelope_path(manifest: Path) -> Path:
    """Where a manifest's DSSE envelope lives: ``manifest.json`` -> ``manifest.dsse.json``."""
    name = manifest.name.removesuffix(".json")
    return manifest.with_name(f"{name}.dsse.json")


def sign_manifest(manifest: Mapping[str, Any], key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """(manifest file bytes, DSSE envelope file bytes): the envelope signs those exact bytes."""
    body = manifest_bytes(manifest)
    return body, envelope_bytes(sign_envelope(body, MANIFEST_PAYLOAD_TYPE, key))


def parse_manifest(body: bytes) -> list[tuple[str, str, int]]:
    """(path, sha256, size) of every listed file; :class:`VerificationError` if malformed."""
    try:
        manifest = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerificationError("malformed", f"manifest is not JSON: {exc}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, list):
        raise VerificationError("malformed", "manifest has no 'files' list")
    listed: list[tuple[str, str, int]] = []
    for entry in files:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("path"), str)
            and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("size"), int)
        ):
            raise VerificationError("malformed", f"manifest file entry {entry!r} is malformed")
        path = entry["path"]
        if path.startswith("/") or ".." in Path(path).parts:
            raise VerificationError("malformed", f"manifest path {path!r} leaves the bundle")
        listed.append((path, entry["sha256"], entry["size"]))
    return listed


def check_files(body: bytes, read: Callable[[str], bytes | None]) -> int:
    """Compare every file the manifest lists with ``read(path)``; the number checked.

    Raises :class:`VerificationError` (``hash_mismatch``) naming the first file that is
    missing, or whose size or sha256 differs."""
    listed = parse_manifest(body)
    for path, digest, size in listed:
        data = read(path)
        if data is None:
            raise VerificationError("hash_mismatch", f"{path}: listed in the manifest, missing")
        if len(data) != size:
            raise VerificationError(
                "hash_mismatch", f"{path}: size {len(data)}, manifest says {size}"
            )
        actual = sha256_hex(data)
        if actual != digest:
            raise VerificationError(
                "hash_mismatch", f"{path}: sha256 {actual}, manifest says {digest}"
            )
    return len(listed)


def verify_manifest(
    body: bytes,
    envelope_body: bytes,
    public_key: Ed25519PublicKey,
    read: Callable[[str], bytes | None],
) -> tuple[int, str]:
    """Verify the envelope's signature over the manifest, then every file's hash.

    Returns (files checked, key id); raises :class:`VerificationError` at the first
    mismatch."""
    try:
        envelope = json.loads(envelope_body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerificationError("malformed", f"envelope is not JSON: {exc}") from None
    payload, keyid = verify_envelope(
        envelope, {key_id(public_key): public_key}, payload_type=MANIFEST_PAYLOAD_TYPE
    )
    if payload != body:
        raise VerificationError(
            "bad_signature", "the signed manifest differs from the manifest file"
        )
    return check_files(body, read), keyid
