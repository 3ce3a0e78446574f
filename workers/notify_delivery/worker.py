"""The notify-delivery worker: one set-based upsert per batch.

Stream in: ``notify:delivery`` (``notification.sent``, ``notification.failed``), group
``notify-workers``. Effects: ``notify.delivery_log``, one row per delivery id, converging
to its latest attempt whatever the arrival order; the inbox (``eventId``) and the upsert
are one statement, one round trip a batch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from operator import attrgetter
from typing import Any, ClassVar, Final

from contracts import Event
from contracts.notify import NotificationFailed, NotificationSent, NotifyEvent
from workers import metrics
from workers.db import array_literal
from workers.kernel.inbox import Tx, compose
from workers.kernel.worker import Worker

# The batch travels as one array per column (see :func:`_columns`), which PostgreSQL
# receives in binary and zips back into rows with ``unnest``: no per-event parsing on the
# server. ``$2`` is the events' ids, which the inbox records too. DISTINCT ON keeps the row
# each delivery must converge to; ON CONFLICT only lets a later attempt (or a success at
# the same attempt) replace what is stored.
_UPSERT: Final = compose("""
batch AS (
    SELECT * FROM unnest(
        $3::uuid[], $4::uuid[], $5::uuid[], $6::uuid[], $7::text::text[], $8::uuid[],
        $9::text::bool[], $10::text::int[], $11::text::timestamptz[], $12::text::int[],
        $13::text[], $14::text::bool[], $15::text::int[], $2::uuid[]
    ) AS x(
        delivery_id, tenant_id, rule_id, channel_id, channel_type, source_event_id,
        sent, attempt, at, status_code, error, retryable, latency_ms, event_id
    )
),
upsert AS (
    INSERT INTO notify.delivery_log AS d (
        delivery_id, tenant_id, rule_id, channel_id, channel_type, event_id, status,
        attempt, delivered_at, failed_at, status_code, error, retryable, latency_ms,
        last_event_id
    )
    SELECT DISTINCT ON (x.delivery_id)
        x.delivery_id, x.tenant_id, x.rule_id, x.channel_id, x.channel_type,
        x.source_event_id, CASE WHEN x.sent THEN 'sent' ELSE 'failed' END,
        x.attempt, CASE WHEN x.sent THEN x.at END, CASE WHEN NOT x.sent THEN x.at END,
        x.status_code, x.error, x.retryable, x.latency_ms, x.event_id
    FROM batch AS x
    ORDER BY x.delivery_id, x.attempt DESC, x.sent DESC
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
SELECT
""")

_delivery_id = attrgetter("delivery_id")
_tenant_id = attrgetter("tenant_id")
_rule_id = attrgetter("rule_id")
_channel_id = attrgetter("channel_id")
_channel_type = attrgetter("channel_type")
_source_event_id = attrgetter("source_event_id")
_attempt = attrgetter("attempt")
_status_code = attrgetter("status_code")
_latency_ms = attrgetter("latency_ms")
_STATUS: dict[type[Event], str] = {NotificationSent: "sent", NotificationFailed: "failed"}


def _columns(events: Sequence[NotifyEvent]) -> tuple[Any, ...]:
    """The statement's parameters $3..$15: one value per column, each a list in the
    events' order (UUIDs and error texts, encoded in binary by the driver) or an array
    literal (see :func:`workers.db.array_literal`)."""
    sent = [isinstance(e, NotificationSent) for e in events]
    at = [e.sent_at if isinstance(e, NotificationSent) else e.failed_at for e in events]
    error: list[str | None] | None = None
    retryable: list[bool | None] | None = None
    if not all(sent):
        error = [e.error if isinstance(e, NotificationFailed) else None for e in events]
        retryable = [e.retryable if isinstance(e, NotificationFailed) else None for e in events]
    return (
        list(map(_delivery_id, events)),
        list(map(_tenant_id, events)),
        list(map(_rule_id, events)),
        list(map(_channel_id, events)),
        array_literal(list(map(_channel_type, events))),
        list(map(_source_event_id, events)),
        array_literal(sent),
        array_literal(list(map(_attempt, events))),
        array_literal(at),
        array_literal(list(map(_status_code, events))),
        error,
        None if retryable is None else array_literal(retryable),
        array_literal(list(map(_latency_ms, events))),
    )


class NotifyDeliveryWorker(Worker[NotifyEvent, None]):
    name: ClassVar[str] = "notify-delivery"
    stream: ClassVar[str] = "notify:delivery"

    async def apply(self, tx: Tx, fresh: Sequence[NotifyEvent]) -> None:
        await tx.execute(_UPSERT, *_columns(fresh))

    async def after_commit(self, fresh: Sequence[NotifyEvent], result: None) -> None:
        channels = list(map(_channel_type, fresh))
        outcomes = Counter(zip(channels, map(type, fresh), strict=True))
        for (channel_type, kind), n in outcomes.items():
            metrics.NOTIFY_DELIVERIES.labels(channel_type, _STATUS[kind]).inc(n)
        latencies: dict[str, list[float]] = {}
        for channel_type, latency_ms in zip(channels, map(_latency_ms, fresh), strict=True):
            if latency_ms is not None:
                latencies.setdefault(channel_type, []).append(latency_ms / 1000)
        for channel_type, values in latencies.items():
            metrics.observe_many(metrics.NOTIFY_DELIVERY_LATENCY.labels(channel_type), values)
