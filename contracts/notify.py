"""Contracts of the ``notify:delivery`` stream: notification delivery outcomes.

Event types: ``notification.sent`` and ``notification.failed`` (version 1).
``deliveryId`` identifies one delivery across its attempts.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import msgspec

from contracts.base import INT32_MAX, Event, Int32Count, UtcDateTime

ChannelType = Literal["slack", "teams", "email", "webhook"]
Attempt = Annotated[int, msgspec.Meta(ge=1, le=INT32_MAX)]


class _Delivery(Event, frozen=True, kw_only=True):
    delivery_id: uuid.UUID
    rule_id: uuid.UUID | None = None
    channel_id: uuid.UUID
    channel_type: ChannelType
    source_event_id: uuid.UUID
    attempt: Attempt = 1
    status_code: Annotated[int, msgspec.Meta(ge=0, le=999)] | None = None
    latency_ms: Int32Count | None = None


class NotificationSent(_Delivery, frozen=True, kw_only=True, tag="notification.sent"):
    sent_at: UtcDateTime


class NotificationFailed(_Delivery, frozen=True, kw_only=True, tag="notification.failed"):
    failed_at: UtcDateTime
    error: str = ""
    retryable: bool = False


NotifyEvent = NotificationSent | NotificationFailed
