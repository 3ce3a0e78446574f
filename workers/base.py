"""What a worker is: the contract between a worker subpackage and the runtime.

A worker names its stream, group and the event types it handles, checks each
decoded event (pure), and applies a batch of new events inside one open
PostgreSQL transaction that the runtime also writes the inbox rows into.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from contracts import Event
from contracts.registry import contract_for_stream

if TYPE_CHECKING:
    import asyncpg
    import redis.asyncio as aioredis

    from workers.db import DbConn
    from workers.settings import Settings


@dataclass(slots=True)
class Resources:
    """Clients opened once per process and shared by every worker in it."""

    settings: Settings
    redis: aioredis.Redis
    pool: asyncpg.Pool | None = None
    s3: object | None = None  # an aioboto3 S3 client when the worker needs one
    extras: dict[str, object] = field(default_factory=dict)


class Worker:
    """Base class of every worker. Subclasses set the class attributes and ``apply``."""

    name: ClassVar[str]
    stream: ClassVar[str]
    event_types: ClassVar[tuple[type[Event], ...]]
    uses_database: ClassVar[bool] = True
    # True: the worker writes the inbox rows itself, in the same single statement as its
    # effects (``apply_with_inbox``), saving the transaction's extra round trips.
    writes_inbox: ClassVar[bool] = False
    uses_s3: ClassVar[bool] = False

    def __init__(self, resources: Resources, *, group: str | None = None) -> None:
        self.resources = resources
        contract = contract_for_stream(self.stream)
        chosen = group or contract.default_group
        if chosen is None:
            raise ValueError(f"stream {self.stream} has no default group; pass one")
        self.group = chosen
        self.reclaim_idle_seconds = (
            resources.settings.reclaim_idle_seconds or contract.reclaim_idle_seconds
        )

    def validate(self, event: Event) -> str | None:
        """Pure semantic check; a returned string dead-letters the event with that reason."""
        return None

    async def apply(self, conn: DbConn | None, events: Sequence[Event]) -> None:
        """Write the effects of ``events`` (never seen before by this group) in ``conn``'s
        open transaction. Raise :class:`~workers.errors.Permanent` for an event that can
        never succeed."""
        raise NotImplementedError

    async def apply_with_inbox(
        self, conn: DbConn, group: str, events: Sequence[Event]
    ) -> Iterable[uuid.UUID]:
        """For ``writes_inbox`` workers: atomically insert ``fleet.inbox`` rows for
        ``(group, eventId)`` and apply the effects of the events whose row is new; return
        the new event ids."""
        raise NotImplementedError

    async def after_commit(self, events: Sequence[Event]) -> None:
        """Runs after the transaction committed (e.g. publish derived events)."""

    async def background(self) -> None:
        """Optional long-running task (schedules, outbox flushing); cancelled at shutdown."""
