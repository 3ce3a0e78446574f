"""The vex-consensus worker: advisory drift in, changed consensus results out.

Stream in: ``concelier:drift`` (``advisory.new``, ``advisory.updated``), group
``vex-consensus``. Stream out: ``vex:consensus`` (``vex.consensus.updated``),
through the ``vex.consensus_outbox`` table written in the batch's transaction.
Idempotency: the inbox (``eventId``) for the batch; derived events have
deterministic ids, so a second advisory with the same content publishes nothing.

Every pair an advisory names (affected purls x advisory id and aliases) is
recomputed from the stored statements and trust, whatever the event type or its
``withdrawn`` flag: the consensus depends on VEX statements, not on the advisory, so
events converge to the same state in any order. Affected purls are taken in canonical
form; an advisory naming one the purl specification refuses is dead-lettered with the
reason (``validate``). Results, the review queue and the
outbox commit with the inbox rows; ``after_commit`` publishes the outbox, and the
background task publishes whatever a crash left in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import ClassVar, Final

import asyncpg
import structlog

from contracts.concelier import ConcelierEvent
from workers import metrics, tracing
from workers.kernel.inbox import Tx
from workers.kernel.stopping import Stopping
from workers.kernel.trimming import trim_stream
from workers.kernel.worker import Resources, Worker
from workers.publishing import PUBLISH_FAILURES
from workers.vex_consensus import keys, outbox, service, telemetry
from workers.vex_consensus.purls import canonical_purls, purl_problem
from workers.vex_consensus.service import RecomputeReport, Trigger
from workers.vex_consensus.store import Pair

log = structlog.get_logger("workers.vex_consensus")


MAX_PAIRS_PER_ADVISORY: Final = 1_000_000
"""An advisory naming more pairs than this is dead-lettered rather than recomputed."""

_PUBLISH_ERRORS: tuple[type[BaseException], ...] = (
    *PUBLISH_FAILURES,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


def vulnerability_ids(event: ConcelierEvent) -> list[str]:
    """The advisory id and its aliases, each once, in order."""
    names = (name.strip() for name in (event.advisory_id, *event.aliases))
    return list(dict.fromkeys(name for name in names if name))


def advisory_pairs(
    events: Sequence[ConcelierEvent], traceparent: str | None = None
) -> dict[Pair, Trigger]:
    """Every (purl, vulnerability) pair the advisories touch, with the first event
    that touched it (pure): affected purls (canonical) x (advisory id + aliases).

    The events published for a pair continue ``traceparent`` (the batch's process span)
    when given, else the triggering event's own trace."""
    pairs: dict[Pair, Trigger] = {}
    for event in events:
        trigger = Trigger(
            tenant_id=event.tenant_id,
            causation_id=str(event.event_id),
            correlation_id=event.correlation_id,
            traceparent=traceparent or event.traceparent,
        )
        purls = canonical_purls(a.purl for a in event.affected)
        for vulnerability_id in vulnerability_ids(event):
            for purl in purls:
                pairs.setdefault((purl, vulnerability_id), trigger)
    return pairs


class VexConsensusWorker(Worker[ConcelierEvent, RecomputeReport]):
    name: ClassVar[str] = "vex-consensus"
    stream: ClassVar[str] = "concelier:drift"

    def __init__(self, resources: Resources, *, group: str | None = None) -> None:
        super().__init__(resources, group=group)
        self._log = log.bind(stream=self.stream, group=self.group)

    def validate(self, event: ConcelierEvent) -> str | None:
        ids = vulnerability_ids(event)
        if not ids:
            return "advisory has neither an advisoryId nor aliases"
        pairs = len(ids) * len({a.purl for a in event.affected})
        if pairs > MAX_PAIRS_PER_ADVISORY:
            return f"advisory touches {pairs} pairs; the limit is {MAX_PAIRS_PER_ADVISORY}"
        return purl_problem(a.purl for a in event.affected)

    async def apply(self, tx: Tx, fresh: Sequence[ConcelierEvent]) -> RecomputeReport:
        triggers = advisory_pairs(fresh, tracing.current_traceparent())
        return await service.recompute(
            await tx.connection(), triggers, reason="advisory_drift", triggers=triggers
        )

    async def after_commit(self, fresh: Sequence[ConcelierEvent], result: RecomputeReport) -> None:
        now = datetime.now(UTC)
        for event in fresh:
            metrics.VEX_CONSENSUS_LATENCY.observe(
                max(0.0, (now - event.occurred_at).total_seconds())
            )
        result.observe()
        if result.events:
            await self._publish()
        if result.changed:
            await self._refresh_gauge()

    async def background(self, stopping: Stopping) -> None:
        """Publish outbox rows a crash left behind, refresh the queue depth gauges, export
        trust changes made elsewhere (:mod:`~workers.vex_consensus.telemetry`), and trim
        ``vex:consensus`` by the stream retention."""
        settings = self.resources.settings
        pool = self.resources.pool
        assert pool is not None
        seen = await self._last_rejection()
        while True:
            try:
                await self._publish()
                await self._refresh_gauge()
                await telemetry.observe_trust_changes(pool)
                seen = await self._count_rejections(seen)
                await trim_stream(
                    self.resources.redis,
                    outbox.CONSENSUS_STREAM,
                    retention_days=settings.stream_retention_days,
                    max_len=settings.stream_max_len,
                )
            except Exception as exc:  # noqa: BLE001 - one failed pass must not end the loop; the next retries
                self._log.warning("vex.maintenance_failed", error=str(exc)[:200])
            if await stopping.sleep(settings.maintenance_interval_seconds):
                return

    async def _publish(self) -> None:
        pool = self.resources.pool
        assert pool is not None
        try:
            settings = self.resources.settings
            published = await outbox.publish(
                pool,
                self.resources.redis,
                partitions=settings.stream_partitions,
                replicas=settings.publish_replicas,
            )
        except _PUBLISH_ERRORS as exc:
            # Committed results stay in the outbox; the background task publishes them.
            self._log.warning("vex.publish_deferred", error=str(exc)[:200])
            return
        if published:
            self._log.debug("vex.published", events=published)

    async def _last_rejection(self) -> int | None:
        """Rejections already stored when this process started are not counted again."""
        pool = self.resources.pool
        assert pool is not None
        try:
            async with pool.acquire() as conn:
                return await keys.last_rejection_id(conn)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            return None

    async def _count_rejections(self, seen: int | None) -> int | None:
        """Count documents ``fleet vex import`` refused since the last pass (any process
        may import; this long-running one is the one Prometheus scrapes)."""
        pool = self.resources.pool
        assert pool is not None
        async with pool.acquire() as conn:
            if seen is None:
                return await keys.last_rejection_id(conn)
            newest, counts = await keys.rejections_after(conn, seen)
        for reason, n in counts.items():
            metrics.VEX_DSSE_FAILURES.labels(reason).inc(n)
            self._log.warning("vex.signed_document_refused", reason=reason, documents=n)
        return newest

    async def _refresh_gauge(self) -> None:
        pool = self.resources.pool
        assert pool is not None
        try:
            await service.refresh_conflict_gauge(pool)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            self._log.warning("vex.gauge_refresh_failed", error=str(exc)[:200])
