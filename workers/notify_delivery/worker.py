"""The notify-delivery worker: one set-based upsert per batch."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import asyncpg
import msgspec

from contracts import Event
from contracts.notify import NotificationFailed, NotificationSent
from workers import metrics
from workers.base import Worker

if TYPE_CHECKING:
    from workers.db import DbConn

Delivery = NotificationSent | NotificationFailed


def _statement(*, all_new: bool) -> str:
    """The batch statement, atomic on its own: it writes the inbox rows and the effects of
    the events whose row is new. The batch travels as one JSON array of the events
    themselves: PostgreSQL parses it (on its own core) instead of the driver encoding
    fifteen typed arrays element by element. DISTINCT ON keeps the row each delivery must
    converge to; ON CONFLICT only lets a later attempt (or a success at the same attempt)
    replace what is stored.

    ``all_new``: the statement for a batch whose events are all new, the common case. Its
    inbox INSERT has no ON CONFLICT (which spends an extra index probe and WAL record on
    every row), so every event it records is new and the upsert needs no join with the
    inbox rows. A redelivered event makes it fail on the inbox key instead; the batch then
    takes the other statement."""
    conflict = "" if all_new else "\n    ON CONFLICT DO NOTHING"
    source = "batch AS x" if all_new else 'batch AS x JOIN inbox ON inbox.event_id = x."eventId"'
    return f"""
WITH batch AS (
    SELECT * FROM json_to_recordset($2::text::json) AS x(
        "deliveryId" uuid, "tenantId" uuid, "ruleId" uuid, "channelId" uuid,
        "channelType" text, "sourceEventId" uuid, type text, attempt int,
        "sentAt" timestamptz, "failedAt" timestamptz, "statusCode" int, error text,
        retryable bool, "latencyMs" int, "eventId" uuid
    )
),
inbox AS (
    INSERT INTO fleet.inbox (event_id, group_name)
    SELECT DISTINCT "eventId", $1 FROM batch
    ORDER BY 1  -- one lock order for every batch: concurrent batches cannot deadlock{conflict}
    RETURNING event_id
),
upsert AS (
    INSERT INTO notify.delivery_log AS d (
        delivery_id, tenant_id, rule_id, channel_id, channel_type, event_id, status,
        attempt, delivered_at, failed_at, status_code, error, retryable, latency_ms,
        last_event_id
    )
    SELECT DISTINCT ON (x."deliveryId")
        x."deliveryId", x."tenantId", x."ruleId", x."channelId", x."channelType",
        x."sourceEventId",
        CASE x.type WHEN 'notification.sent' THEN 'sent' ELSE 'failed' END,
        x.attempt, x."sentAt", x."failedAt", x."statusCode",
        CASE x.type WHEN 'notification.failed' THEN x.error END,
        CASE x.type WHEN 'notification.failed' THEN x.retryable END,
        x."latencyMs", x."eventId"
    FROM {source}
    ORDER BY x."deliveryId", x.attempt DESC, (x.type = 'notification.sent') DESC
    ON CONFLICT (delivery_id) DO UPDATE SET
        status = EXCLUDED.status,
        attempt = EXCLUDED.attempt,
        delivered_at = COALESCE(EXCLUDED.delivered_at, d.delivered_at),
        failed_at = COALESCE(EXCLUDED.failed_at, d.failed_at),
        status_code = EXCLUDED.status_code,
        error = EXCLUDED.error,
        retryable = EXCLUDED.retryable,
        latency_ms = EXCLUDED.latency_ms,
        last_event_id = EXCLUDED.last_event_id,
        recorded_at = now()
    WHERE (EXCLUDED.attempt, EXCLUDED.status = 'sent') > (d.attempt, d.status = 'sent')
)
SELECT event_id FROM inbox
"""


_UPSERT = _statement(all_new=False)
_UPSERT_ALL_NEW = _statement(all_new=True)
_INBOX_KEY = "inbox_pkey"

_encoder = msgspec.json.Encoder()


def _rank(event: Delivery) -> tuple[int, bool]:
    return (event.attempt, type(event) is NotificationSent)


def latest_per_delivery(events: Sequence[Delivery]) -> list[Delivery]:
    """One event per delivery id, the one the row must converge to (pure; the SQL above
    applies the same rule within a batch and against the stored row)."""
    best: dict[uuid.UUID, Delivery] = {}
    for event in events:
        current = best.get(event.delivery_id)
        if current is None or _rank(event) > _rank(current):
            best[event.delivery_id] = event
    return list(best.values())


class NotifyDeliveryWorker(Worker):
    name: ClassVar[str] = "notify-delivery"
    stream: ClassVar[str] = "notify:delivery"
    event_types: ClassVar[tuple[type[Event], ...]] = (NotificationSent, NotificationFailed)
    writes_inbox: ClassVar[bool] = True

    async def apply_with_inbox(
        self, conn: DbConn, group: str, events: Sequence[Event]
    ) -> list[uuid.UUID]:
        batch = _encoder.encode(events).decode()
        if conn.is_in_transaction():
            # A failed statement would abort the caller's transaction: no first attempt.
            rows = await conn.fetch(_UPSERT, group, batch)
        else:
            try:
                rows = await conn.fetch(_UPSERT_ALL_NEW, group, batch)
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != _INBOX_KEY:
                    raise
                rows = await conn.fetch(_UPSERT, group, batch)
        return [r[0] for r in rows]

    async def after_commit(self, events: Sequence[Event]) -> None:
        counts: Counter[tuple[str, str]] = Counter()
        latencies: dict[str, list[float]] = {}
        for e in events:
            if type(e) is NotificationSent:
                status = "sent"
            elif type(e) is NotificationFailed:
                status = "failed"
            else:
                continue
            counts[(e.channel_type, status)] += 1
            if e.latency_ms is not None:
                latencies.setdefault(e.channel_type, []).append(e.latency_ms / 1000)
        for (channel_type, status), n in counts.items():
            metrics.NOTIFY_DELIVERIES.labels(channel_type, status).inc(n)
        for channel_type, values in latencies.items():
            metrics.observe_many(metrics.NOTIFY_DELIVERY_LATENCY.labels(channel_type), values)
