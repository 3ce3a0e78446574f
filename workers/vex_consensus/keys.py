"""Issuer keys, the signature policy and refused documents, in PostgreSQL (migration 0011).

``vex.issuer_keys`` holds each issuer's ed25519 public keys, ``vex.issuer_trust.
require_signature`` whether its unsigned documents are refused, and
``vex.ingest_rejections`` every refused document whole with its reason; the
vex-consensus worker counts new rejections (``docs/exports.md``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from workers import signing
from workers.db import DbConn
from workers.vex_consensus.consensus import IssuerTrust, IssuerType


async def current_trust(conn: DbConn, issuer_id: str) -> IssuerTrust | None:
    row = await conn.fetchrow(
        "SELECT trust_score, priority, issuer_type FROM vex.issuer_trust WHERE issuer_id = $1",
        issuer_id,
    )
    if row is None:
        return None
    return IssuerTrust(
        issuer_id=issuer_id,
        trust_score=row["trust_score"],
        priority=row["priority"],
        issuer_type=cast(IssuerType, row["issuer_type"]),
    )


async def add_key(conn: DbConn, issuer_id: str, public_key: Ed25519PublicKey) -> tuple[str, bool]:
    """Register a key for an issuer; (key id, whether it was new)."""
    keyid = signing.key_id(public_key)
    added = await conn.fetchval(
        "INSERT INTO vex.issuer_keys (issuer_id, key_id, public_key) VALUES ($1, $2, $3) "
        "ON CONFLICT DO NOTHING RETURNING true",
        issuer_id,
        keyid,
        signing.public_pem(public_key).decode("ascii"),
    )
    return keyid, bool(added)


async def keys_of(conn: DbConn, issuer_id: str) -> dict[str, Ed25519PublicKey]:
    rows = await conn.fetch(
        "SELECT key_id, public_key FROM vex.issuer_keys WHERE issuer_id = $1", issuer_id
    )
    return {
        r["key_id"]: signing.parse_public_key(r["public_key"].encode(), "stored key") for r in rows
    }


async def key_counts(conn: DbConn) -> dict[str, int]:
    rows = await conn.fetch("SELECT issuer_id, count(*) AS n FROM vex.issuer_keys GROUP BY 1")
    return {r["issuer_id"]: int(r["n"]) for r in rows}


async def set_require_signature(conn: DbConn, issuer_id: str, required: bool) -> bool:
    """Set the policy of an issuer with a trust row; False when it has none."""
    status = await conn.execute(
        "UPDATE vex.issuer_trust SET require_signature = $2, updated_at = now() "
        "WHERE issuer_id = $1",
        issuer_id,
        required,
    )
    return status != "UPDATE 0"


async def signature_required(conn: DbConn, issuer_ids: Sequence[str]) -> set[str]:
    rows = await conn.fetch(
        "SELECT issuer_id FROM vex.issuer_trust WHERE issuer_id = ANY($1::text[]) "
        "AND require_signature",
        list(issuer_ids),
    )
    return {r["issuer_id"] for r in rows}


async def record_rejection(
    conn: DbConn,
    *,
    reason: str,
    detail: str,
    document: bytes,
    issuer_id: str | None,
    source: str | None,
) -> int:
    """Keep a refused document with its reason; the row's id."""
    rejection_id: int = await conn.fetchval(
        "INSERT INTO vex.ingest_rejections "
        "(reason, detail, issuer_id, source, document_sha256, document) "
        "VALUES ($1, $2, $3, $4, $5, $6) RETURNING rejection_id",
        reason,
        detail[:2000],
        None if issuer_id is None else issuer_id[:255],
        source,
        hashlib.sha256(document).hexdigest(),
        document,
    )
    return rejection_id


async def last_rejection_id(conn: DbConn) -> int:
    return int(
        await conn.fetchval("SELECT coalesce(max(rejection_id), 0) FROM vex.ingest_rejections")
    )


async def rejections_after(conn: DbConn, after: int) -> tuple[int, dict[str, int]]:
    """(the newest id, count per reason) of rejections with an id above ``after``."""
    rows = await conn.fetch(
        "SELECT reason, count(*) AS n, max(rejection_id) AS last FROM vex.ingest_rejections "
        "WHERE rejection_id > $1 GROUP BY reason",
        after,
    )
    newest = max((int(r["last"]) for r in rows), default=after)
    return newest, {r["reason"]: int(r["n"]) for r in rows}
