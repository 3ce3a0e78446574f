"""Realistic synthetic events for the demo, the tests and the benchmarks.

Deterministic for a given seed, so a test can recompute expected results.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from contracts.base import Event
from contracts.notify import NotificationFailed, NotificationSent

TENANTS = [uuid.UUID(int=0xA0000000_0000_4000_8000_000000000000 + i) for i in range(1, 6)]
CHANNEL_TYPES = ("slack", "teams", "email", "webhook")
BASE_TIME = datetime(2026, 11, 1, tzinfo=UTC)


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def notification_events(
    count: int, *, seed: int = 7, failure_rate: float = 0.05, start: datetime | None = None
) -> Iterator[Event]:
    """``count`` notification outcomes with unique delivery ids; ~``failure_rate`` failed."""
    rng = random.Random(seed)
    t0 = start or BASE_TIME
    channels = {ct: [_uuid(rng) for _ in range(3)] for ct in CHANNEL_TYPES}
    for i in range(count):
        channel_type = CHANNEL_TYPES[i % len(CHANNEL_TYPES)]
        at = t0 + timedelta(milliseconds=i * 37)
        common = {
            "event_id": _uuid(rng),
            "version": 1,
            "tenant_id": TENANTS[i % len(TENANTS)],
            "occurred_at": at,
            "source": "notifier",
            "delivery_id": _uuid(rng),
            "rule_id": _uuid(rng),
            "channel_id": rng.choice(channels[channel_type]),
            "channel_type": channel_type,
            "source_event_id": _uuid(rng),
            "attempt": 1,
            "latency_ms": int(rng.lognormvariate(5.0, 0.6)),
        }
        if rng.random() < failure_rate:
            yield NotificationFailed(
                **common,  # type: ignore[arg-type]  # keys match the struct's fields
                failed_at=at,
                status_code=rng.choice((429, 500, 503)),
                error="upstream rejected the message",
                retryable=True,
            )
        else:
            yield NotificationSent(**common, sent_at=at, status_code=200)  # type: ignore[arg-type]  # keys match the struct's fields
