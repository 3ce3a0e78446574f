"""DSSE envelopes and hashed manifests (workers/signing.py): pure, no I/O."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from workers import signing


def test_pae_is_the_dsse_v1_encoding() -> None:
    # The example of the DSSE specification (protocol.md).
    assert (
        signing.pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_counts_bytes_not_characters() -> None:
    assert signing.pae("t", "é".encode()) == b"DSSEv1 1 t 2 \xc3\xa9"


def test_an_envelope_verifies_with_its_key_and_returns_the_payload() -> None:
    key = signing.generate_key()
    envelope = signing.sign_envelope(b'{"a":1}', "application/x-test", key)
    assert set(envelope) == {"payloadType", "payload", "signatures"}
    keyid = signing.key_id(key.public_key())
    payload, used = signing.verify_envelope(envelope, {keyid: key.public_key()})
    assert payload == b'{"a":1}'
    assert used == keyid


def test_a_signature_by_an_unregistered_key_is_unknown_key() -> None:
    envelope = signing.sign_envelope(b"x", "t", signing.generate_key())
    other = signing.generate_key().public_key()
    with pytest.raises(signing.VerificationError) as caught:
        signing.verify_envelope(envelope, {signing.key_id(other): other})
    assert caught.value.reason == "unknown_key"


def test_an_altered_payload_is_bad_signature() -> None:
    key = signing.generate_key()
    envelope = signing.sign_envelope(b'{"status":"fixed"}', "t", key)
    envelope["payload"] = base64.b64encode(b'{"status":"not_affected"}').decode()
    with pytest.raises(signing.VerificationError) as caught:
        signing.verify_envelope(envelope, {signing.key_id(key.public_key()): key.public_key()})
    assert caught.value.reason == "bad_signature"


def test_the_signature_covers_the_payload_type() -> None:
    key = signing.generate_key()
    envelope = signing.sign_envelope(b"x", "type/a", key)
    envelope["payloadType"] = "type/b"
    with pytest.raises(signing.VerificationError) as caught:
        signing.verify_envelope(envelope, {signing.key_id(key.public_key()): key.public_key()})
    assert caught.value.reason == "bad_signature"


@pytest.mark.parametrize(
    "envelope",
    [
        [],
        {"payload": "eA=="},
        {"payloadType": "t", "payload": "not base64!", "signatures": [{"keyid": "k"}]},
        {"payloadType": "t", "payload": "eA==", "signatures": []},
    ],
)
def test_malformed_envelopes_are_refused_with_a_reason(envelope: object) -> None:
    with pytest.raises(signing.VerificationError) as caught:
        signing.verify_envelope(envelope, {})
    assert caught.value.reason == "malformed"


def test_a_manifest_lists_sorted_files_with_sha256_and_size() -> None:
    files = {"b.json": b"bb", "a/x.json": b"a"}
    manifest = signing.build_manifest(files, profile="vex")
    assert [f["path"] for f in manifest["files"]] == ["a/x.json", "b.json"]
    assert manifest["files"][1] == {
        "path": "b.json",
        "sha256": hashlib.sha256(b"bb").hexdigest(),
        "size": 2,
    }
    assert signing.manifest_bytes(manifest) == signing.manifest_bytes(
        signing.build_manifest(dict(reversed(files.items())), profile="vex")
    )


def test_a_manifest_refuses_paths_outside_the_bundle() -> None:
    with pytest.raises(signing.SigningError):
        signing.build_manifest({"../etc/passwd": b""})


def test_verify_manifest_names_the_first_changed_file() -> None:
    key = signing.generate_key()
    files = {"one.json": b"1", "two.json": b"2"}
    body, envelope = signing.sign_manifest(signing.build_manifest(files), key)
    checked, _ = signing.verify_manifest(body, envelope, key.public_key(), files.get)
    assert checked == 2
    changed = {**files, "two.json": b"3"}
    with pytest.raises(signing.VerificationError, match=r"two\.json: sha256") as caught:
        signing.verify_manifest(body, envelope, key.public_key(), changed.get)
    assert caught.value.reason == "hash_mismatch"
    with pytest.raises(signing.VerificationError, match="missing"):
        signing.verify_manifest(body, envelope, key.public_key(), {"one.json": b"1"}.get)


def test_verify_manifest_catches_a_manifest_edited_after_signing() -> None:
    key = signing.generate_key()
    files = {"one.json": b"1"}
    body, envelope = signing.sign_manifest(signing.build_manifest(files), key)
    edited = json.loads(body)
    edited["files"][0]["sha256"] = hashlib.sha256(b"evil").hexdigest()
    with pytest.raises(signing.VerificationError) as caught:
        signing.verify_manifest(
            signing.manifest_bytes(edited), envelope, key.public_key(), {"one.json": b"evil"}.get
        )
    assert caught.value.reason == "bad_signature"


def test_keys_round_trip_through_pem_and_public_from_private() -> None:
    key = signing.generate_key()
    again = signing.parse_private_key(signing.private_pem(key))
    assert signing.key_id(again.public_key()) == signing.key_id(key.public_key())
    public = signing.parse_public_key(signing.public_pem(key.public_key()))
    assert signing.key_id(public) == signing.key_id(key.public_key())
    assert signing.key_id(signing.parse_public_key(signing.private_pem(key))) == signing.key_id(
        public
    )
    with pytest.raises(signing.SigningError, match="not an unencrypted PEM"):
        signing.parse_private_key(b"nonsense")
