"""The SQL of vex-consensus statements, consensus rows and conflicts: set-based, a fixed
number of statements per call (issuer trust: :mod:`workers.vex_consensus.issuers`; the
outbox: :mod:`workers.vex_consensus.outbox`).

Rows travel as parallel arrays expanded with ``unnest``, so importing a document,
loading the statements of 5,000 pairs or writing 5,000 consensus rows is one
round trip each, never one per row. Functions take an open connection; those that
write expect the caller's transaction around them.

Identity and idempotency: ``vex_raw`` rows are keyed by their content-derived raw
id (``ON CONFLICT DO NOTHING``), consensus rows by their pair, conflicts by pair and
result digest.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, cast

import asyncpg
import msgspec

from contracts.vex import VexStatus
from workers.db import DbConn
from workers.vex_consensus import issuers
from workers.vex_consensus.consensus import (
    ConsensusResult,
    IssuerTrust,
    Statement,
    consensus_id_for,
)
from workers.vex_consensus.documents import ParsedDocument
from workers.vex_consensus.purls import PurlScope, applies, package_of, scope_of

Pair = tuple[str, str]
"""(component purl, vulnerability id); the purl is canonical."""
PackageKey = tuple[str, str]
"""(``pkg:type/namespace/name``, vulnerability id): how statements are filed and found."""

LOCK_CLASS: Final = 0x56455801
"""First key of the ``pg_advisory_xact_lock(int, int)`` locks that serialise recomputes."""
LOCK_BUCKETS: Final = 64
"""Vulnerability ids hash into this many lock buckets; a transaction holds at most this many."""


class StoredConsensus(msgspec.Struct, frozen=True, kw_only=True):
    """A ``vex.consensus`` row as stored."""

    consensus_id: uuid.UUID
    component_purl: str
    vulnerability_id: str
    resolved_status: VexStatus
    conflict_detected: bool
    contributing_vex_ids: tuple[uuid.UUID, ...]
    confidence: Decimal
    digest: str
    computed_at: datetime


class ConflictRow(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of the review queue ``vex.consensus_conflicts``."""

    conflict_id: uuid.UUID
    component_purl: str
    vulnerability_id: str
    reason: str
    statuses: tuple[str, ...]
    digest: str
    # The tenant whose event caused the recompute that found it (system: all zeros).
    tenant_id: uuid.UUID = uuid.UUID(int=0)


class StatementSource(msgspec.Struct, frozen=True, kw_only=True):
    raw_id: uuid.UUID
    source_document: str | None
    raw_statement: Any
    created_at: datetime


def lock_bucket(vulnerability_id: str) -> int:
    """The lock bucket of a vulnerability id; stable across processes and releases."""
    return zlib.crc32(vulnerability_id.encode("utf-8")) % LOCK_BUCKETS


# ------------------------------------------------------------------ statements

_INSERT_STATEMENTS = """
INSERT INTO vex.vex_raw (
    raw_id, issuer_id, component_purl, vulnerability_id, status, justification,
    impact_statement, raw_statement, published_at, source_document, scope_base, signature
)
SELECT r.raw_id, r.issuer_id, r.component_purl, r.vulnerability_id, r.status,
       r.justification, r.impact_statement, r.raw_statement::jsonb, r.published_at,
       r.source_document, r.scope_base, r.signature::jsonb
FROM unnest(
    $1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::text[], $9::timestamptz[], $10::text[], $11::text[], $12::text[]
) AS r(raw_id, issuer_id, component_purl, vulnerability_id, status, justification,
       impact_statement, raw_statement, published_at, source_document, scope_base, signature)
ON CONFLICT (raw_id) DO NOTHING
RETURNING raw_id
"""

_encoder = msgspec.json.Encoder()


async def insert_statements(
    conn: DbConn, documents: Sequence[ParsedDocument], *, chunk_size: int = 5000
) -> list[Statement]:
    """Store every record of ``documents``; returns the statements that were new.

    Records carry canonical purls (:func:`~workers.vex_consensus.documents.parse_document`
    makes them so); each row also stores its purl's package as ``scope_base``."""
    by_id: dict[uuid.UUID, tuple[Statement, bytes, str | None, str | None]] = {}
    for doc in documents:
        signature = None if doc.signature is None else _encoder.encode(doc.signature).decode()
        for record in doc.records:
            by_id.setdefault(
                record.statement.raw_id,
                (
                    record.statement,
                    _encoder.encode(record.raw_statement),
                    doc.document_id,
                    signature,
                ),
            )
    # In raw id order, so two imports sharing statements lock their index entries in the
    # same order and cannot deadlock on each other.
    rows = [by_id[raw_id] for raw_id in sorted(by_id)]
    inserted: list[Statement] = []
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start : start + chunk_size]
        new_ids = {
            r["raw_id"]
            for r in await conn.fetch(
                _INSERT_STATEMENTS,
                [s.raw_id for s, *_ in chunk],
                [s.issuer_id for s, *_ in chunk],
                [s.component_purl for s, *_ in chunk],
                [s.vulnerability_id for s, *_ in chunk],
                [s.status for s, *_ in chunk],
                [s.justification for s, *_ in chunk],
                [s.impact_statement for s, *_ in chunk],
                [raw.decode("utf-8") for _, raw, _, _ in chunk],
                [s.published_at for s, *_ in chunk],
                [document for _, _, document, _ in chunk],
                [package_of(s.component_purl) for s, *_ in chunk],
                [signature for *_, signature in chunk],
            )
        }
        inserted.extend(s for s, *_ in chunk if s.raw_id in new_ids)
    return inserted


_LOAD_INPUTS = """
SELECT r.raw_id, r.issuer_id, r.component_purl, r.vulnerability_id, r.status,
       r.justification, r.impact_statement, r.published_at, r.scope_base,
       t.trust_score, t.priority, t.issuer_type
FROM unnest($1::text[], $2::text[]) AS k(scope_base, vulnerability_id)
JOIN vex.vex_raw r
  ON r.scope_base = k.scope_base AND r.vulnerability_id = k.vulnerability_id
LEFT JOIN vex.issuer_trust t ON t.issuer_id = r.issuer_id
"""


def lookups_for(pairs: Iterable[Pair]) -> list[PackageKey]:
    """The (package, vulnerability) keys under which every statement that can apply to
    ``pairs`` is filed: a statement applies only to pairs of its own package."""
    return list(dict.fromkeys((package_of(purl), v) for purl, v in pairs))


async def load_inputs(
    conn: DbConn, lookups: Sequence[PackageKey]
) -> tuple[dict[PackageKey, list[Statement]], dict[str, IssuerTrust]]:
    """Every statement about each (package, vulnerability) key, and its issuers' trust.

    One query: the keys are unnested and joined to ``vex_raw`` (index on
    ``scope_base, vulnerability_id``) and ``issuer_trust``. Which of a package's
    statements apply to a pair is decided in pure code
    (:func:`~workers.vex_consensus.consensus.compute_consensus`).
    """
    rows = await conn.fetch(_LOAD_INPUTS, [p for p, _ in lookups], [v for _, v in lookups])
    statements: dict[PackageKey, list[Statement]] = {}
    trust: dict[str, IssuerTrust] = {}
    for r in rows:
        issuer_id: str = r["issuer_id"]
        if r["priority"] is not None and issuer_id not in trust:
            trust[issuer_id] = issuers.trust_row(
                issuer_id, r["trust_score"], r["priority"], r["issuer_type"]
            )
        statement = Statement(
            raw_id=r["raw_id"],
            issuer_id=issuer_id,
            component_purl=r["component_purl"],
            vulnerability_id=r["vulnerability_id"],
            status=cast(VexStatus, r["status"]),
            justification=r["justification"],
            impact_statement=r["impact_statement"],
            published_at=r["published_at"],
        )
        statements.setdefault((r["scope_base"], statement.vulnerability_id), []).append(statement)
    return statements, trust


_COVERED = """
SELECT c.component_purl, c.vulnerability_id, c.scope_base
FROM unnest($1::text[], $2::text[]) AS s(base, vulnerability_id)
JOIN vex.consensus c ON c.vulnerability_id = s.vulnerability_id AND c.scope_base = s.base
"""


def scope_base(purl: str) -> str:
    """``pkg:type/namespace/name`` of a canonical purl (``vex.consensus.scope_base``)."""
    return package_of(purl)


async def covered_pairs(conn: DbConn, statement_pairs: Iterable[Pair]) -> set[Pair]:
    """Pairs with a consensus row that statements about ``statement_pairs`` apply to.

    A statement about ``pkg:oci/web@d?arch=amd64`` also speaks for the stored pair
    ``pkg:oci/web@d?arch=amd64&os=linux``; such pairs are found by their package
    (``scope_base``, indexed with the vulnerability), then kept when one of the
    statements :func:`~workers.vex_consensus.purls.applies` to them.
    """
    wanted: dict[PackageKey, list[PurlScope]] = {}
    for purl, vulnerability_id in set(statement_pairs):
        wanted.setdefault((package_of(purl), vulnerability_id), []).append(scope_of(purl))
    if not wanted:
        return set()
    rows = await conn.fetch(_COVERED, [b for b, _ in wanted], [v for _, v in wanted])
    found: set[Pair] = set()
    for r in rows:
        pair: Pair = (r["component_purl"], r["vulnerability_id"])
        pair_scope = scope_of(pair[0])
        if any(applies(s, pair_scope) for s in wanted[(r["scope_base"], pair[1])]):
            found.add(pair)
    return found


async def issuer_pairs(conn: DbConn, issuer_ids: Sequence[str]) -> set[Pair]:
    """Every (purl, vulnerability) the issuers made a statement about."""
    rows = await conn.fetch(
        "SELECT DISTINCT component_purl, vulnerability_id FROM vex.vex_raw "
        "WHERE issuer_id = ANY($1::text[])",
        list(issuer_ids),
    )
    return {(r["component_purl"], r["vulnerability_id"]) for r in rows}


_STATEMENT_SOURCES = """
SELECT raw_id, source_document, raw_statement::text AS raw_statement, created_at
FROM vex.vex_raw WHERE raw_id = ANY($1::uuid[])
"""


async def statement_sources(
    conn: DbConn, raw_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, StatementSource]:
    rows = await conn.fetch(_STATEMENT_SOURCES, list(raw_ids))
    return {
        r["raw_id"]: StatementSource(
            raw_id=r["raw_id"],
            source_document=r["source_document"],
            raw_statement=msgspec.json.decode(r["raw_statement"]),
            created_at=r["created_at"],
        )
        for r in rows
    }


# ------------------------------------------------------------------ consensus


async def lock_vulnerabilities(conn: DbConn, vulnerability_ids: Iterable[str]) -> int:
    """Serialise recomputes of the same vulnerabilities until the transaction ends.

    ``pg_advisory_xact_lock`` on each bucket, taken in ascending order in one
    statement (so two recomputes can never deadlock on each other). Taken before
    the statements are read: a recompute then sees every import or trust change that
    committed before it, and its write can never land after a newer one.
    """
    buckets = sorted({lock_bucket(v) for v in vulnerability_ids})
    if buckets:
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1::int, b) FROM unnest($2::int[]) AS b",
            LOCK_CLASS,
            buckets,
        )
    return len(buckets)


_LOAD_CONSENSUS = """
SELECT c.consensus_id, c.component_purl, c.vulnerability_id, c.resolved_status,
       c.conflict_detected, c.contributing_vex_ids, c.confidence, c.digest, c.computed_at
FROM unnest($1::text[], $2::text[]) AS p(purl, vulnerability_id)
JOIN vex.consensus c
  ON c.component_purl = p.purl AND c.vulnerability_id = p.vulnerability_id
"""


def _stored(r: asyncpg.Record) -> StoredConsensus:
    return StoredConsensus(
        consensus_id=r["consensus_id"],
        component_purl=r["component_purl"],
        vulnerability_id=r["vulnerability_id"],
        resolved_status=r["resolved_status"],
        conflict_detected=r["conflict_detected"],
        contributing_vex_ids=tuple(r["contributing_vex_ids"]),
        confidence=r["confidence"],
        digest=r["digest"],
        computed_at=r["computed_at"],
    )


async def load_consensus(conn: DbConn, pairs: Sequence[Pair]) -> dict[Pair, StoredConsensus]:
    """The stored consensus rows of ``pairs`` (absent pairs have none)."""
    rows = await conn.fetch(_LOAD_CONSENSUS, [p for p, _ in pairs], [v for _, v in pairs])
    return {(r["component_purl"], r["vulnerability_id"]): _stored(r) for r in rows}


_UPSERT_CONSENSUS = """
INSERT INTO vex.consensus AS c (
    consensus_id, component_purl, vulnerability_id, resolved_status, conflict_detected,
    contributing_vex_ids, confidence, digest, computed_at, scope_base
)
SELECT u.consensus_id, u.purl, u.vulnerability_id, u.status, u.conflict,
       string_to_array(u.contributing, ',')::uuid[], u.confidence, u.digest, $9::timestamptz,
       u.scope_base
FROM unnest(
    $1::uuid[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::text[], $7::numeric[],
    $8::text[], $10::text[]
) AS u(consensus_id, purl, vulnerability_id, status, conflict, contributing, confidence, digest,
       scope_base)
ON CONFLICT (component_purl, vulnerability_id) DO UPDATE SET
    resolved_status = EXCLUDED.resolved_status,
    conflict_detected = EXCLUDED.conflict_detected,
    contributing_vex_ids = EXCLUDED.contributing_vex_ids,
    confidence = EXCLUDED.confidence,
    digest = EXCLUDED.digest,
    computed_at = EXCLUDED.computed_at
WHERE c.digest IS DISTINCT FROM EXCLUDED.digest
"""

_DELETE_CONSENSUS = """
DELETE FROM vex.consensus c
USING unnest($1::text[], $2::text[]) AS d(purl, vulnerability_id)
WHERE c.component_purl = d.purl AND c.vulnerability_id = d.vulnerability_id
"""


async def write_consensus(
    conn: DbConn,
    upserts: Sequence[ConsensusResult],
    deletes: Sequence[Pair],
    computed_at: datetime,
) -> None:
    """Upsert changed results and delete withdrawn ones: at most two statements."""
    if upserts:
        await conn.execute(
            _UPSERT_CONSENSUS,
            [consensus_id_for(r.component_purl, r.vulnerability_id) for r in upserts],
            [r.component_purl for r in upserts],
            [r.vulnerability_id for r in upserts],
            [r.resolved_status for r in upserts],
            [r.conflict_detected for r in upserts],
            [",".join(str(i) for i in r.contributing_vex_ids) for r in upserts],
            [r.confidence for r in upserts],
            [r.digest for r in upserts],
            computed_at,
            [scope_base(r.component_purl) for r in upserts],
        )
    if deletes:
        await conn.execute(_DELETE_CONSENSUS, [p for p, _ in deletes], [v for _, v in deletes])


async def get_consensus(conn: DbConn, pair: Pair) -> StoredConsensus | None:
    found = await load_consensus(conn, [pair])
    return found.get(pair)


# ------------------------------------------------------------------ conflicts

_SUPERSEDE_CONFLICTS = """
UPDATE vex.consensus_conflicts k
SET resolved_at = $4::timestamptz, resolution = 'superseded'
FROM unnest($1::text[], $2::text[], $3::text[]) AS d(purl, vulnerability_id, digest)
WHERE k.component_purl = d.purl AND k.vulnerability_id = d.vulnerability_id
  AND k.resolved_at IS NULL AND k.digest IS DISTINCT FROM d.digest
"""

_QUEUE_CONFLICTS = """
INSERT INTO vex.consensus_conflicts AS k (
    conflict_id, component_purl, vulnerability_id, reason, statuses, digest, detected_at,
    tenant_id
)
SELECT q.conflict_id, q.purl, q.vulnerability_id, q.reason,
       string_to_array(q.statuses, ','), q.digest, $7::timestamptz, q.tenant_id
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $8::uuid[])
    AS q(conflict_id, purl, vulnerability_id, reason, statuses, digest, tenant_id)
ON CONFLICT (component_purl, vulnerability_id, digest) DO UPDATE SET
    resolved_at = NULL, resolution = NULL, detected_at = EXCLUDED.detected_at
WHERE k.resolution = 'superseded'
"""


async def update_conflicts(
    conn: DbConn,
    changed: Mapping[Pair, str | None],
    queued: Sequence[ConflictRow],
    at: datetime,
) -> None:
    """Close open conflicts of pairs whose result changed; queue the new conflicts.

    ``changed`` maps each changed pair to its new digest (``None``: withdrawn). A
    conflict closed as superseded reopens when its exact result comes back; one a
    reviewer closed stays closed.
    """
    if changed:
        await conn.execute(
            _SUPERSEDE_CONFLICTS,
            [p for p, _ in changed],
            [v for _, v in changed],
            list(changed.values()),
            at,
        )
    if queued:
        await conn.execute(
            _QUEUE_CONFLICTS,
            [q.conflict_id for q in queued],
            [q.component_purl for q in queued],
            [q.vulnerability_id for q in queued],
            [q.reason for q in queued],
            [",".join(q.statuses) for q in queued],
            [q.digest for q in queued],
            at,
            [q.tenant_id for q in queued],
        )


async def open_conflicts(conn: DbConn) -> int:
    """Open entries of the review queue (the ``vex_conflict_queue_depth`` gauge)."""
    count = await conn.fetchval(
        "SELECT count(*) FROM vex.consensus_conflicts WHERE resolved_at IS NULL"
    )
    return int(count or 0)
