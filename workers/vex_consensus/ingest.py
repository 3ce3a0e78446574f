"""VEX ingest with signatures: read a file's bytes into a document, check its signature
against the issuer's registered keys and policy, keep refused documents.

Used by ``fleet vex import`` (and the demo). A signed document is stored only when a
signature by a key registered for its issuer verifies; its statements then record the
key id in ``vex_raw.signature``. An unsigned document is refused only when its issuer
requires signatures. Refused documents go to ``vex.ingest_rejections`` with their
reason, whole (``docs/exports.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from workers.db import DbConn
from workers.vex_consensus import keys
from workers.vex_consensus.documents import ParsedDocument, parse_document
from workers.vex_consensus.signed import (
    SignatureRejected,
    SignedDocument,
    open_envelope,
    verify_signed,
)


class Loaded(msgspec.Struct, frozen=True, kw_only=True):
    """One file: its bytes, the envelope when it was signed, and the document inside."""

    source: str
    data: bytes
    signed: SignedDocument | None
    document: ParsedDocument


class Rejected(msgspec.Struct, frozen=True, kw_only=True):
    source: str
    data: bytes
    reason: str
    detail: str
    issuer_id: str | None = None


def load(data: bytes, source: str) -> Loaded:
    """Parse a file (pure); :class:`SignatureRejected` for an unusable envelope and
    :class:`~workers.vex_consensus.documents.DocumentError` for an unreadable document."""
    signed = open_envelope(data)
    document = parse_document(data if signed is None else signed.document)
    if signed is not None and document.format != "openvex":
        raise SignatureRejected("malformed", "a signed VEX document must be OpenVEX")
    return Loaded(source=source, data=data, signed=signed, document=document)


async def check(
    conn: DbConn, loaded: Sequence[Loaded]
) -> tuple[list[tuple[Loaded, ParsedDocument]], list[Rejected]]:
    """(accepted documents with their signature recorded, refused ones with the reason)."""
    required = await keys.signature_required(conn, [item.document.issuer_id for item in loaded])
    accepted: list[tuple[Loaded, ParsedDocument]] = []
    refused: list[Rejected] = []
    for item in loaded:
        issuer = item.document.issuer_id
        try:
            document = await _accept(conn, item, issuer in required)
        except SignatureRejected as exc:
            refused.append(
                Rejected(
                    source=item.source,
                    data=item.data,
                    reason=exc.reason,
                    detail=str(exc),
                    issuer_id=issuer,
                )
            )
            continue
        accepted.append((item, document))
    return accepted, refused


async def _accept(conn: DbConn, item: Loaded, required: bool) -> ParsedDocument:
    issuer = item.document.issuer_id
    if item.signed is None:
        if required:
            raise SignatureRejected(
                "signature_required",
                f"issuer {issuer!r} requires signed documents; this one is unsigned",
            )
        return item.document
    signature = verify_signed(item.signed, issuer, await keys.keys_of(conn, issuer))
    return msgspec.structs.replace(item.document, signature=signature)


async def keep_rejections(conn: DbConn, refused: Sequence[Rejected]) -> list[int]:
    """Store refused documents (one transaction: call inside one); their row ids.

    Not counted here: the running vex-consensus worker counts new rows into
    ``fleet_vex_dsse_verification_failures_total``, whichever process refused them, so
    a refusal made inside the worker's own process (the demo) is counted once."""
    return [
        await keys.record_rejection(
            conn,
            reason=r.reason,
            detail=r.detail,
            document=r.data,
            issuer_id=r.issuer_id,
            source=r.source,
        )
        for r in refused
    ]
