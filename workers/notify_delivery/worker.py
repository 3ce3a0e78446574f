"""The notify-delivery worker: one set-based upsert per batch."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

from contracts import Event
from contracts.notify import NotificationFailed, NotificationSent
from workers import metrics
from workers.base import Worker

if TYPE_CHECKING:
    from workers.db import DbConn

Delivery = NotificationSent | NotificationFailed

_UPSERT = """
INSERT INTO notify.delivery_log AS d (
    delivery_id, tenant_id, rule_id, channel_id, channel_type, event_id, status, attempt,
    delivered_at, failed_at, status_code, error, retryable, latency_ms, last_event_id
)
SELECT * FROM unnest(
    $1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::uuid[], $7::text[],
    $8::int[], $9::timestamptz[], $10::timestamptz[], $11::int[], $12::text[], $13::bool[],
    $14::int[], $15::uuid[]
)
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
"""


def _rank(event: Delivery) -> tuple[int, bool]:
    return (event.attempt, isinstance(event, NotificationSent))


def latest_per_delivery(events: Sequence[Delivery]) -> list[Delivery]:
    """One event per delivery id, the one the row must converge to (pure)."""
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

    async def apply(self, conn: DbConn | None, events: Sequence[Event]) -> None:
        assert conn is not None
        deliveries = [e for e in events if isinstance(e, NotificationSent | NotificationFailed)]
        rows = latest_per_delivery(deliveries)
        columns: list[list[object]] = [[] for _ in range(15)]
        for e in rows:
            sent_at: datetime | None = e.sent_at if isinstance(e, NotificationSent) else None
            failed = e if isinstance(e, NotificationFailed) else None
            values = (
                e.delivery_id,
                e.tenant_id,
                e.rule_id,
                e.channel_id,
                e.channel_type,
                e.source_event_id,
                "sent" if failed is None else "failed",
                e.attempt,
                sent_at,
                failed.failed_at if failed else None,
                e.status_code,
                failed.error if failed else None,
                failed.retryable if failed else None,
                e.latency_ms,
                e.event_id,
            )
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        await conn.execute(_UPSERT, *columns)

    async def after_commit(self, events: Sequence[Event]) -> None:
        counts: Counter[tuple[str, str]] = Counter()
        for e in events:
            if not isinstance(e, NotificationSent | NotificationFailed):
                continue
            status = "sent" if isinstance(e, NotificationSent) else "failed"
            counts[(e.channel_type, status)] += 1
            if e.latency_ms is not None:
                metrics.NOTIFY_DELIVERY_LATENCY.labels(e.channel_type).observe(e.latency_ms / 1000)
        for (channel_type, status), n in counts.items():
            metrics.NOTIFY_DELIVERIES.labels(channel_type, status).inc(n)
