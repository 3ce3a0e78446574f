"""The vex-consensus outbox: ``vex.consensus.updated`` events written in the
recompute's transaction and moved to the ``vex:consensus`` stream after it commits.

Rows are keyed by the event's deterministic id (a replayed trigger writes nothing new),
claimed ``FOR UPDATE SKIP LOCKED`` so concurrent flushers (consumers, the CLI) never
publish one row at once, and deleted only once their partition took them. Publishing
is at-least-once: a crash between ``XADD`` and the delete publishes the same event id
again, which consumers recognise.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Final

import asyncpg
import msgspec
import redis.asyncio as aioredis
import structlog

from contracts.base import Event
from contracts.vex import ConsensusUpdated
from workers.db import DbConn
from workers.publishing import PUBLISH_FAILURES
from workers.publishing import publish as publish_events

log = structlog.get_logger("workers.vex_consensus")

CONSENSUS_STREAM: Final = "vex:consensus"


_WRITE_OUTBOX = """
INSERT INTO vex.consensus_outbox (event_id, payload)
SELECT o.event_id, o.payload::jsonb
FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS o(event_id, payload, n)
ORDER BY o.n
ON CONFLICT (event_id) DO NOTHING
"""


async def write(conn: DbConn, events: Sequence[tuple[uuid.UUID, bytes]]) -> None:
    """Queue encoded events for publishing after commit; a known event id is skipped."""
    if events:
        await conn.execute(
            _WRITE_OUTBOX, [e for e, _ in events], [p.decode("utf-8") for _, p in events]
        )


_CLAIM_OUTBOX = """
SELECT event_id, payload::text AS payload FROM vex.consensus_outbox
ORDER BY seq
LIMIT $1
FOR UPDATE SKIP LOCKED
"""


async def claim(conn: DbConn, limit: int) -> list[tuple[uuid.UUID, str]]:
    """The oldest unpublished events, locked so a concurrent flusher skips them."""
    return [(r["event_id"], r["payload"]) for r in await conn.fetch(_CLAIM_OUTBOX, limit)]


async def delete(conn: DbConn, event_ids: Sequence[uuid.UUID]) -> None:
    await conn.execute(
        "DELETE FROM vex.consensus_outbox WHERE event_id = ANY($1::uuid[])", list(event_ids)
    )


async def size(conn: DbConn) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM vex.consensus_outbox") or 0)


_event_decoder = msgspec.json.Decoder(ConsensusUpdated)


async def publish(
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    *,
    batch: int = 500,
    partitions: int = 1,
    replicas: int = 0,
) -> int:
    """Move outbox rows to ``vex:consensus`` (``XADD``), oldest first; returns how many.

    Rows are claimed ``FOR UPDATE SKIP LOCKED``, so concurrent flushers (several
    consumers, the CLI) never publish the same row at once; a row is deleted in
    the same transaction, once its partition's ``XADD`` succeeded (with ``replicas``,
    once they confirmed it or the wait for them ran out: see
    :func:`workers.publishing.publish`). When one partition fails after another took its
    share, only the
    rows taken are deleted and the failure is raised after the commit, so no event is
    announced twice by this function.
    """
    published = 0
    while True:
        failure: BaseException | None = None
        async with pool.acquire() as conn, conn.transaction():
            rows = await claim(conn, batch)
            if not rows:
                return published
            events: list[ConsensusUpdated] = []
            done: list[uuid.UUID] = []
            for event_id, payload in rows:
                problem: str | None = None
                try:
                    events.append(_event_decoder.decode(payload))
                except msgspec.ValidationError as exc:
                    problem = str(exc)
                if problem is not None:
                    # Written by this module, so only a contract limit (e.g. a purl longer
                    # than the contract allows) lands here; it can never be published.
                    log.error("vex.outbox_unpublishable", event_id=str(event_id), error=problem)
                    done.append(event_id)
            unpublishable = len(done)

            def taken(share: list[Event], into: list[uuid.UUID] = done) -> None:
                into.extend(e.event_id for e in share)

            try:
                await publish_events(
                    redis,
                    CONSENSUS_STREAM,
                    events,
                    partitions=partitions,
                    replicas=replicas,
                    accepted=taken,
                )
            except PUBLISH_FAILURES as exc:
                failure = exc
            await delete(conn, done)
        published += len(done) - unpublishable
        if failure is not None:
            raise failure
        if len(rows) < batch:
            return published
