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

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar, Final

import asyncpg
import redis.exceptions as redis_exc
import structlog

from contracts import Event
from contracts.concelier import AdvisoryNew, AdvisoryUpdated
from workers import metrics, streams
from workers.base import Resources, Worker
from workers.vex_consensus import service
from workers.vex_consensus.purls import canonical_purls, purl_problem
from workers.vex_consensus.service import RecomputeReport, Trigger
from workers.vex_consensus.store import Pair

if TYPE_CHECKING:
    from workers.db import DbConn

log = structlog.get_logger("workers.vex_consensus")

Advisory = AdvisoryNew | AdvisoryUpdated

MAX_PAIRS_PER_ADVISORY: Final = 1_000_000
"""An advisory naming more pairs than this is dead-lettered rather than recomputed."""

_PUBLISH_ERRORS = (
    redis_exc.ConnectionError,
    redis_exc.TimeoutError,
    redis_exc.ResponseError,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


def vulnerability_ids(event: Advisory) -> list[str]:
    """The advisory id and its aliases, each once, in order."""
    names = (name.strip() for name in (event.advisory_id, *event.aliases))
    return list(dict.fromkeys(name for name in names if name))


def advisory_pairs(events: Sequence[Event]) -> dict[Pair, Trigger]:
    """Every (purl, vulnerability) pair the advisories touch, with the first event
    that touched it (pure): affected purls (canonical) x (advisory id + aliases)."""
    pairs: dict[Pair, Trigger] = {}
    for event in events:
        if not isinstance(event, AdvisoryNew | AdvisoryUpdated):
            continue
        trigger = Trigger(
            tenant_id=event.tenant_id,
            causation_id=str(event.event_id),
            correlation_id=event.correlation_id,
        )
        purls = canonical_purls(a.purl for a in event.affected)
        for vulnerability_id in vulnerability_ids(event):
            for purl in purls:
                pairs.setdefault((purl, vulnerability_id), trigger)
    return pairs


class VexConsensusWorker(Worker):
    name: ClassVar[str] = "vex-consensus"
    stream: ClassVar[str] = "concelier:drift"
    event_types: ClassVar[tuple[type[Event], ...]] = (AdvisoryNew, AdvisoryUpdated)

    def __init__(self, resources: Resources, *, group: str | None = None) -> None:
        super().__init__(resources, group=group)
        # Set by apply, consumed by the after_commit of the same (committed) attempt.
        self._report: RecomputeReport | None = None
        self._log = log.bind(stream=self.stream, group=self.group)

    def validate(self, event: Event) -> str | None:
        if not isinstance(event, AdvisoryNew | AdvisoryUpdated):
            return None
        ids = vulnerability_ids(event)
        if not ids:
            return "advisory has neither an advisoryId nor aliases"
        pairs = len(ids) * len({a.purl for a in event.affected})
        if pairs > MAX_PAIRS_PER_ADVISORY:
            return f"advisory touches {pairs} pairs; the limit is {MAX_PAIRS_PER_ADVISORY}"
        return purl_problem(a.purl for a in event.affected)

    async def apply(self, conn: DbConn | None, events: Sequence[Event]) -> None:
        assert conn is not None  # uses_database: the runtime always passes a connection
        triggers = advisory_pairs(events)
        self._report = await service.recompute(
            conn, triggers, reason="advisory_drift", triggers=triggers
        )

    async def after_commit(self, events: Sequence[Event]) -> None:
        report, self._report = self._report, None
        now = datetime.now(UTC)
        for event in events:
            metrics.VEX_CONSENSUS_LATENCY.observe(
                max(0.0, (now - event.occurred_at).total_seconds())
            )
        if report is None:
            return
        report.observe()
        if report.events:
            await self._publish()
        if report.changed:
            await self._refresh_gauge()

    async def background(self) -> None:
        """Publish outbox rows a crash left behind, refresh the queue depth gauge, and
        trim ``vex:consensus`` by the stream retention."""
        settings = self.resources.settings
        while True:
            try:
                await self._publish()
                await self._refresh_gauge()
                await streams.trim_stream(
                    self.resources.redis,
                    service.CONSENSUS_STREAM,
                    retention_days=settings.stream_retention_days,
                    max_len=settings.stream_max_len,
                )
            except Exception as exc:  # noqa: BLE001 - one failed pass must not end the loop; the next retries
                self._log.warning("vex.maintenance_failed", error=str(exc)[:200])
            await asyncio.sleep(settings.maintenance_interval_seconds)

    async def _publish(self) -> None:
        pool = self.resources.pool
        assert pool is not None
        try:
            published = await service.publish_outbox(pool, self.resources.redis)
        except _PUBLISH_ERRORS as exc:
            # Committed results stay in the outbox; the background task publishes them.
            self._log.warning("vex.publish_deferred", error=str(exc)[:200])
            return
        if published:
            self._log.debug("vex.published", events=published)

    async def _refresh_gauge(self) -> None:
        pool = self.resources.pool
        assert pool is not None
        try:
            await service.refresh_conflict_gauge(pool)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            self._log.warning("vex.gauge_refresh_failed", error=str(exc)[:200])
