"""The notify-delivery worker: one set-based upsert per batch."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any, ClassVar

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
    the events whose row is new. The batch travels as one array per column (see
    :func:`_columns`), which PostgreSQL receives in binary and zips back into rows with
    ``unnest``: no per-event parsing on the server. DISTINCT ON keeps the row each
    delivery must converge to; ON CONFLICT only lets a later attempt (or a success at the
    same attempt) replace what is stored.

    ``all_new``: the statement for a batch whose events are all new, the common case. Its
    inbox INSERT has no ON CONFLICT (which spends an extra index probe and WAL record on
    every row), so every event it records is new: the upsert needs no join with the inbox
    rows and nothing is returned. A redelivered event makes it fail on the inbox key
    instead; the batch then takes the other statement, which returns the new event ids."""
    conflict = "" if all_new else "\n    ON CONFLICT DO NOTHING\n    RETURNING event_id"
    source = "batch AS x" if all_new else "batch AS x JOIN inbox ON inbox.event_id = x.event_id"
    result = "SELECT NULL::uuid LIMIT 0" if all_new else "SELECT event_id FROM inbox"
    return f"""
WITH batch AS (
    SELECT * FROM unnest(
        $2::uuid[], $3::uuid[], $4::uuid[], $5::uuid[], $6::text::text[], $7::uuid[],
        $8::text::bool[], $9::text::int[], $10::text::timestamptz[], $11::text::int[],
        $12::text[], $13::text::bool[], $14::text::int[], $15::uuid[]
    ) AS x(
        delivery_id, tenant_id, rule_id, channel_id, channel_type, source_event_id,
        sent, attempt, at, status_code, error, retryable, latency_ms, event_id
    )
),
inbox AS (
    INSERT INTO fleet.inbox (event_id, group_name)
    SELECT DISTINCT event_id, $1 FROM batch
    ORDER BY 1  -- one lock order for every batch: concurrent batches cannot deadlock{conflict}
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
    FROM {source}
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
{result}
"""


_UPSERT = _statement(all_new=False)
_UPSERT_ALL_NEW = _statement(all_new=True)
_INBOX_KEY = "inbox_pkey"

_encoder = msgspec.json.Encoder()
# JSON's list brackets become an array literal's braces; quotes are dropped (see below).
_TO_ARRAY_LITERAL = bytes.maketrans(b"[]", b"{}")
_delivery_id = attrgetter("delivery_id")
_tenant_id = attrgetter("tenant_id")
_rule_id = attrgetter("rule_id")
_channel_id = attrgetter("channel_id")
_channel_type = attrgetter("channel_type")
_source_event_id = attrgetter("source_event_id")
_attempt = attrgetter("attempt")
_status_code = attrgetter("status_code")
_latency_ms = attrgetter("latency_ms")
_event_id = attrgetter("event_id")
_STATUS: dict[type[Event], str] = {NotificationSent: "sent", NotificationFailed: "failed"}


def array_literal(values: Sequence[object]) -> str:
    """A PostgreSQL array literal of ``values`` (``{1,NULL,2026-11-01T00:00:00Z}``) for
    values whose JSON text needs no quoting in one: numbers, booleans, RFC 3339
    timestamps, the contract's channel type names. msgspec writes the JSON list; its
    brackets become braces, its quotes are dropped and ``null`` reads as NULL.

    These columns travel as text because the driver's binary encoding costs more per
    element (a type check per value, and date arithmetic for a timestamp) than the
    server's parsing of such short values."""
    return _encoder.encode(values).translate(_TO_ARRAY_LITERAL, b'"').decode()


def _columns(events: Sequence[Delivery]) -> tuple[Any, ...]:
    """The statement's parameters $2..$15: one value per column, each a list in the
    events' order (UUIDs and error texts, encoded in binary by the driver) or an array
    literal (see :func:`array_literal`)."""
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
        list(map(_event_id, events)),
    )


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
    ) -> Iterable[uuid.UUID]:
        columns = _columns(events)  # type: ignore[arg-type]  # only its event_types reach it
        if not conn.is_in_transaction():
            try:
                await conn.execute(_UPSERT_ALL_NEW, group, *columns)
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != _INBOX_KEY:
                    raise
            else:
                return {e.event_id for e in events}  # all new
        # A redelivery among them, or a caller's transaction, which a failed first
        # attempt would abort.
        rows = await conn.fetch(_UPSERT, group, *columns)
        return [r[0] for r in rows]

    async def after_commit(self, events: Sequence[Event]) -> None:
        channels = list(map(_channel_type, events))
        outcomes = Counter(zip(channels, map(type, events), strict=True))
        for (channel_type, kind), n in outcomes.items():
            metrics.NOTIFY_DELIVERIES.labels(channel_type, _STATUS[kind]).inc(n)
        latencies: dict[str, list[float]] = {}
        for channel_type, latency_ms in zip(channels, map(_latency_ms, events), strict=True):
            if latency_ms is not None:
                latencies.setdefault(channel_type, []).append(latency_ms / 1000)
        for channel_type, values in latencies.items():
            metrics.observe_many(metrics.NOTIFY_DELIVERY_LATENCY.labels(channel_type), values)
