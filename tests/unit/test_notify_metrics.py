"""notify-delivery after its commit: deliveries counted and latencies observed per channel.

(A row converging to its latest attempt whatever the arrival order is proven on
PostgreSQL itself: tests/integration/test_runtime.py.)"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from contracts.notify import NotificationFailed, NotificationSent

AT = datetime(2026, 11, 1, tzinfo=UTC)
DELIVERY = uuid.uuid4()


def _common(attempt: int) -> dict[str, object]:
    return {
        "event_id": uuid.uuid4(),
        "version": 1,
        "tenant_id": uuid.uuid4(),
        "occurred_at": AT,
        "source": "notifier",
        "delivery_id": DELIVERY,
        "channel_id": uuid.uuid4(),
        "channel_type": "email",
        "source_event_id": uuid.uuid4(),
        "attempt": attempt,
    }


def test_after_commit_counts_each_delivery_and_observes_each_latency() -> None:
    from prometheus_client import REGISTRY

    from workers.notify_delivery import NotifyDeliveryWorker

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    common = _common(1)
    events = [
        NotificationSent(
            **{**common, "event_id": uuid.uuid4(), "channel_type": ct, "latency_ms": ms}, sent_at=AT
        )  # type: ignore[arg-type]
        for ct, ms in (("slack", 40), ("slack", 3000), ("teams", None), ("email", 7))
    ] + [
        NotificationFailed(
            **{**common, "event_id": uuid.uuid4(), "channel_type": "slack", "latency_ms": 90},
            failed_at=AT,
        )  # type: ignore[arg-type]
    ]
    keys = [
        ("slack", "sent"),
        ("slack", "failed"),
        ("teams", "sent"),
        ("email", "sent"),
        ("email", "failed"),
    ]
    before = {
        k: sample("fleet_notify_deliveries_total", channel_type=k[0], status=k[1]) for k in keys
    }
    buckets = {
        ct: (
            sample("fleet_notify_delivery_latency_seconds_count", channel_type=ct),
            sample("fleet_notify_delivery_latency_seconds_sum", channel_type=ct),
            sample("fleet_notify_delivery_latency_seconds_bucket", channel_type=ct, le="0.05"),
        )
        for ct in ("slack", "teams", "email")
    }
    worker = NotifyDeliveryWorker.__new__(NotifyDeliveryWorker)  # after_commit needs no resources
    asyncio.run(worker.after_commit(events, None))
    counted = {
        k: sample("fleet_notify_deliveries_total", channel_type=k[0], status=k[1]) - before[k]
        for k in keys
    }
    assert counted == {
        ("slack", "sent"): 2,
        ("slack", "failed"): 1,
        ("teams", "sent"): 1,
        ("email", "sent"): 1,
        ("email", "failed"): 0,
    }
    observed = {
        ct: (
            sample("fleet_notify_delivery_latency_seconds_count", channel_type=ct) - buckets[ct][0],
            round(
                sample("fleet_notify_delivery_latency_seconds_sum", channel_type=ct)
                - buckets[ct][1],
                6,
            ),
            sample("fleet_notify_delivery_latency_seconds_bucket", channel_type=ct, le="0.05")
            - buckets[ct][2],
        )
        for ct in ("slack", "teams", "email")
    }
    # Latencies in seconds; a missing latency is not observed.
    assert observed == {"slack": (3, 3.13, 1), "teams": (0, 0.0, 0), "email": (1, 0.007, 1)}
