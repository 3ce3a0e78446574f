"""A delivery's row converges to its latest attempt whatever the arrival order."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime

from contracts.notify import NotificationFailed, NotificationSent
from workers.notify_delivery.worker import latest_per_delivery

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


def test_latest_attempt_wins_in_every_order() -> None:
    first_failure = NotificationFailed(**_common(1), failed_at=AT, error="timeout")  # type: ignore[arg-type]
    second_failure = NotificationFailed(**_common(2), failed_at=AT, error="503")  # type: ignore[arg-type]
    success = NotificationSent(**_common(3), sent_at=AT)  # type: ignore[arg-type]
    for order in itertools.permutations([first_failure, second_failure, success]):
        assert latest_per_delivery(list(order)) == [success]


def test_success_beats_failure_at_the_same_attempt() -> None:
    failed = NotificationFailed(**_common(2), failed_at=AT)  # type: ignore[arg-type]
    sent = NotificationSent(**_common(2), sent_at=AT)  # type: ignore[arg-type]
    assert latest_per_delivery([sent, failed]) == [sent]
    assert latest_per_delivery([failed, sent]) == [sent]
