"""Recompute, import, trust change and publishing: the shell around the pure consensus.

Every trigger funnels into :func:`recompute`, which for a set of (purl,
vulnerability) pairs locks their vulnerabilities, loads statements, trust and the
stored results set-based (a fixed number of queries per 5,000 pairs), decides in
pure code (:func:`plan_changes`), and writes only what changed: consensus rows,
the review queue and one ``vex.consensus.updated`` outbox row per changed pair.
The caller owns the transaction; after it commits,
:func:`workers.vex_consensus.outbox.publish` moves the outbox to the ``vex:consensus``
stream.

Idempotency: an event's id is a uuid5 over its pair and the new digest (for a
withdrawal, over the pair and the digest withdrawn), so recomputing an unchanged
pair writes nothing and a replayed trigger publishes nothing new. Publishing is
at-least-once: a crash between ``XADD`` and the outbox delete publishes the same
event id again, which consumers recognise.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal

import asyncpg
import msgspec
import structlog

from contracts.vex import ConsensusUpdated
from workers import metrics
from workers.db import DbConn
from workers.vex_consensus import issuers, outbox, store, telemetry
from workers.vex_consensus.audit import Before, Decision, decision
from workers.vex_consensus.consensus import (
    ConsensusOutcome,
    ConsensusResult,
    IssuerTrust,
    Statement,
    canonical_json,
    compute_consensus,
    conflict_id_for,
)
from workers.vex_consensus.documents import ParsedDocument
from workers.vex_consensus.purls import package_of
from workers.vex_consensus.store import ConflictRow, PackageKey, Pair

log = structlog.get_logger("workers.vex_consensus")

RecomputeReason = Literal["issuer_update", "policy_knob", "ingestion_delta", "advisory_drift"]

SOURCE: Final = "vex-consensus"
CHUNK_SIZE: Final = 5000
"""Pairs per query: bounds query size and memory; round trips grow by one chunk per 5,000."""

EVENT_ID_NAMESPACE: Final = uuid.UUID("0f6f3c2e-35d9-4b8e-9a52-7d0c1b6e4a11")
"""Fixed namespace of :func:`consensus_event_id`; changing it re-identifies every event."""

TENANT_QUEUE_ALERT: Final = 500
"""Open conflicts of one tenant above which seed 004 alerts (FleetVexConflictQueueDeep)."""

SYSTEM_TENANT: Final = uuid.UUID(int=0)
"""The tenant of events not caused by a tenant's event (imports, trust changes)."""


class Trigger(msgspec.Struct, frozen=True, kw_only=True):
    """What caused a recompute; carried into the envelope of the events it publishes."""

    tenant_id: uuid.UUID = SYSTEM_TENANT
    causation_id: str | None = None
    correlation_id: str | None = None
    # The trace the published event continues (docs/tracing.md): the batch's process span
    # with tracing on, else the triggering event's own traceparent.
    traceparent: str | None = None


_NO_TRIGGER: Final = Trigger()


class ChangePlan(msgspec.Struct, frozen=True, kw_only=True):
    """What one recompute must write: only pairs whose result changed appear."""

    upserts: tuple[ConsensusResult, ...]
    deletes: tuple[Pair, ...]
    changed: dict[Pair, str | None]
    """Changed pair -> its new digest (``None``: the consensus was withdrawn)."""
    conflicts: tuple[ConflictRow, ...]
    events: tuple[ConsensusUpdated, ...]
    conflict_counts: dict[str, int]
    unchanged: int
    decisions: tuple[Decision, ...] = ()
    """The audit record of every changed pair (:mod:`~workers.vex_consensus.audit`)."""


class RecomputeReport(msgspec.Struct, kw_only=True):
    """The outcome of one :func:`recompute`, for logs, metrics and the CLI."""

    reason: RecomputeReason
    pairs: int = 0
    changed: int = 0
    upserted: int = 0
    deleted: int = 0
    conflicts_queued: int = 0
    events: int = 0
    conflict_counts: dict[str, int] = msgspec.field(default_factory=dict)
    seconds: float = 0.0

    def observe(self) -> None:
        """Record the recompute's metrics; call once, after the transaction committed."""
        metrics.VEX_RECOMPUTE_DURATION.labels(self.reason).observe(self.seconds)
        for reason, n in self.conflict_counts.items():
            metrics.VEX_CONFLICTS.labels(reason).inc(n)


def consensus_event_id(pair: Pair, digest: str | None, previous: str | None) -> uuid.UUID:
    """The deterministic id of the event announcing ``pair``'s new result."""
    purl, vulnerability_id = pair
    body: list[Any] = ["vex.consensus.updated", purl, vulnerability_id, digest]
    if digest is None:  # a withdrawal: tell apart the withdrawals of different results
        body.append(previous)
    return uuid.uuid5(EVENT_ID_NAMESPACE, canonical_json(body).decode("utf-8"))


def statements_for(
    pair: Pair, filed: Mapping[PackageKey, Sequence[Statement]]
) -> Sequence[Statement]:
    """The statements that may apply to ``pair``: every statement about its package and
    vulnerability (:func:`compute_consensus` decides which apply)."""
    purl, vulnerability_id = pair
    return filed.get((package_of(purl), vulnerability_id), ())


def plan_changes(
    pairs: Sequence[Pair],
    filed: Mapping[PackageKey, Sequence[Statement]],
    trust: Mapping[str, IssuerTrust],
    stored: Mapping[Pair, str],
    *,
    reason: RecomputeReason,
    computed_at: datetime,
    triggers: Mapping[Pair, Trigger] | None = None,
    default_trigger: Trigger | None = None,
    before: Mapping[Pair, Before] | None = None,
) -> ChangePlan:
    """Decide what to write for ``pairs`` (pure).

    ``filed`` holds statements by (package, vulnerability), ``stored`` the
    stored digest of each pair that has a row (``before``: its status and confidence,
    for the audit record). Conflicts are counted, and queued, only for results that
    changed, so an unchanged recompute never counts twice.
    """
    upserts: list[ConsensusResult] = []
    deletes: list[Pair] = []
    changed: dict[Pair, str | None] = {}
    queued: list[ConflictRow] = []
    events: list[ConsensusUpdated] = []
    decisions: list[Decision] = []
    counts: Counter[str] = Counter()
    unchanged = 0
    fallback = default_trigger or _NO_TRIGGER
    for pair in pairs:
        statements = statements_for(pair, filed)
        outcome = compute_consensus(pair[0], pair[1], statements, trust)
        result = outcome.result
        previous = stored.get(pair)
        after = None if result is None else result.digest
        if previous == after:
            unchanged += 1
            continue
        changed[pair] = after
        counts.update(outcome.conflicts)
        trigger = (triggers or {}).get(pair, fallback)
        if result is None:
            deletes.append(pair)
        else:
            upserts.append(result)
            if result.conflict_detected:
                queued.append(_conflict_row(outcome, result, trigger))
        events.append(_event(pair, result, previous, reason, computed_at, trigger))
        decisions.append(
            decision(
                outcome,
                statements,
                trust,
                (before or {}).get(pair),
                trigger.correlation_id,
            )
        )
    return ChangePlan(
        upserts=tuple(upserts),
        deletes=tuple(deletes),
        changed=changed,
        conflicts=tuple(queued),
        events=tuple(events),
        conflict_counts=dict(sorted(counts.items())),
        unchanged=unchanged,
        decisions=tuple(decisions),
    )


def _conflict_row(
    outcome: ConsensusOutcome, result: ConsensusResult, trigger: Trigger
) -> ConflictRow:
    return ConflictRow(
        tenant_id=trigger.tenant_id,
        conflict_id=conflict_id_for(result.component_purl, result.vulnerability_id, result.digest),
        component_purl=result.component_purl,
        vulnerability_id=result.vulnerability_id,
        reason="status_disagreement",
        statuses=outcome.conflict_statuses,
        digest=result.digest,
    )


def _event(
    pair: Pair,
    result: ConsensusResult | None,
    previous: str | None,
    reason: RecomputeReason,
    computed_at: datetime,
    trigger: Trigger,
) -> ConsensusUpdated:
    common: dict[str, Any] = {
        "event_id": consensus_event_id(pair, None if result is None else result.digest, previous),
        "version": 1,
        "tenant_id": trigger.tenant_id,
        "occurred_at": computed_at,
        "source": SOURCE,
        "correlation_id": trigger.correlation_id,
        "causation_id": trigger.causation_id,
        "traceparent": trigger.traceparent,
        "component_purl": pair[0],
        "vulnerability_id": pair[1],
        "computed_at": computed_at,
        "reason": reason,
    }
    if result is None:
        return ConsensusUpdated(**common)
    return ConsensusUpdated(
        **common,
        resolved_status=result.resolved_status,
        conflict_detected=result.conflict_detected,
        confidence=str(result.confidence),
        contributing_vex_ids=list(result.contributing_vex_ids),
        digest=result.digest,
    )


_encoder = msgspec.json.Encoder()


async def recompute(
    conn: DbConn,
    pairs: Iterable[Pair],
    *,
    reason: RecomputeReason,
    triggers: Mapping[Pair, Trigger] | None = None,
    default_trigger: Trigger | None = None,
    now: datetime | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> RecomputeReport:
    """Recompute ``pairs`` inside the caller's transaction and queue changes for publishing.

    Round trips: one lock statement, then per chunk of ``chunk_size`` pairs two reads
    (statements with trust, stored results) and at most five writes (upsert, delete,
    close superseded conflicts, queue conflicts, outbox).
    """
    started = time.perf_counter()
    ordered = sorted(set(pairs))
    report = RecomputeReport(reason=reason, pairs=len(ordered))
    if not ordered:
        return report
    computed_at = now or datetime.now(UTC)
    await store.lock_vulnerabilities(conn, {v for _, v in ordered})
    counts: Counter[str] = Counter()
    for start in range(0, len(ordered), chunk_size):
        chunk = ordered[start : start + chunk_size]
        filed, trust = await store.load_inputs(conn, store.lookups_for(chunk))
        stored = await store.load_consensus(conn, chunk)
        plan = plan_changes(
            chunk,
            filed,
            trust,
            {pair: row.digest for pair, row in stored.items()},
            reason=reason,
            computed_at=computed_at,
            triggers=triggers,
            default_trigger=default_trigger,
            before={
                pair: Before(status=row.resolved_status, confidence=row.confidence)
                for pair, row in stored.items()
            },
        )
        for decided in plan.decisions:
            log.info("vex.decision", reason=reason, **decided.fields())
        await store.write_consensus(conn, plan.upserts, plan.deletes, computed_at)
        await store.update_conflicts(conn, plan.changed, plan.conflicts, computed_at)
        await outbox.write(conn, [(e.event_id, _encoder.encode(e)) for e in plan.events])
        report.changed += len(plan.changed)
        report.upserted += len(plan.upserts)
        report.deleted += len(plan.deletes)
        report.conflicts_queued += len(plan.conflicts)
        report.events += len(plan.events)
        counts.update(plan.conflict_counts)
    report.conflict_counts = dict(sorted(counts.items()))
    report.seconds = time.perf_counter() - started
    log.info(
        "vex.recomputed",
        reason=reason,
        pairs=report.pairs,
        changed=report.changed,
        deleted=report.deleted,
        conflicts_queued=report.conflicts_queued,
        seconds=round(report.seconds, 6),
    )
    return report


async def withdraw(
    conn: DbConn,
    stored: Mapping[Pair, str],
    *,
    reason: RecomputeReason,
    now: datetime | None = None,
) -> int:
    """Remove the consensus rows of ``stored`` (pair -> stored digest) inside the caller's
    transaction: rows deleted, their open conflicts closed as superseded, a withdrawal
    queued for publishing per pair. Returns how many."""
    if not stored:
        return 0
    at = now or datetime.now(UTC)
    pairs = sorted(stored)
    await store.lock_vulnerabilities(conn, {v for _, v in pairs})
    await store.write_consensus(conn, [], pairs, at)
    await store.update_conflicts(conn, dict.fromkeys(pairs), [], at)
    events = [_event(p, None, stored[p], reason, at, _NO_TRIGGER) for p in pairs]
    await outbox.write(conn, [(e.event_id, _encoder.encode(e)) for e in events])
    return len(events)


class ImportReport(msgspec.Struct, frozen=True, kw_only=True):
    statements: int
    inserted: int
    recompute: RecomputeReport


async def import_documents(
    conn: DbConn, documents: Sequence[ParsedDocument], *, now: datetime | None = None
) -> ImportReport:
    """Store the documents' statements and recompute every pair a new statement touches.

    Run it inside one transaction per document (or per batch) so a document is
    stored whole or not at all. Statements already stored change nothing.
    """
    inserted = await store.insert_statements(conn, documents)
    touched = {(s.component_purl, s.vulnerability_id) for s in inserted}
    pairs = touched | await store.covered_pairs(conn, touched)
    report = await recompute(conn, pairs, reason="ingestion_delta", now=now)
    return ImportReport(
        statements=sum(len(d.records) for d in documents),
        inserted=len(inserted),
        recompute=report,
    )


class TrustReport(msgspec.Struct, frozen=True, kw_only=True):
    changed_issuers: tuple[str, ...]
    recompute: RecomputeReport


async def set_trust(
    conn: DbConn, rows: Sequence[IssuerTrust], *, now: datetime | None = None
) -> TrustReport:
    """Upsert trust rows; recompute every pair an issuer whose row changed spoke about.

    The recompute's reason is ``policy_knob`` when an existing issuer's score or
    priority moved, ``issuer_update`` when issuers only gained rows or changed type.
    The changes are recorded (``vex.trust_changes``) for a worker to export as metrics
    (:mod:`workers.vex_consensus.telemetry`)."""
    before = await issuers.trust_of(conn, [r.issuer_id for r in rows])
    changed = await issuers.upsert_trust(conn, rows)
    changes = telemetry.trust_changes(before, rows, changed)
    pairs: set[Pair] = set()
    if changed:
        spoken = await store.issuer_pairs(conn, changed)
        pairs = spoken | await store.covered_pairs(conn, spoken)
    reason = telemetry.recompute_reason(changes)
    report = await recompute(conn, pairs, reason=reason, now=now)
    await telemetry.record_trust_changes(conn, changes, report.seconds)
    return TrustReport(changed_issuers=tuple(changed), recompute=report)


async def refresh_conflict_gauge(pool: asyncpg.Pool) -> int:
    """Set ``fleet_vex_conflict_queue_depth`` to the open conflicts and
    ``fleet_vex_conflict_queue_tenant_max_depth`` to the deepest tenant's; returns the
    count. A tenant past the alert's threshold is named in a warning line (tenants are
    never labels)."""
    async with pool.acquire() as conn:
        depth = await telemetry.queue_depth(conn)
    metrics.VEX_CONFLICT_QUEUE_DEPTH.set(depth.total)
    metrics.VEX_CONFLICT_QUEUE_TENANT_MAX.set(depth.deepest)
    if depth.deepest > TENANT_QUEUE_ALERT:
        log.warning(
            "vex.conflict_queue_deep",
            tenant_id=str(depth.deepest_tenant),
            depth=depth.deepest,
            threshold=TENANT_QUEUE_ALERT,
        )
    return depth.total
