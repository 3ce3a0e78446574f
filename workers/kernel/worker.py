"""The worker contract: what a worker subpackage gives the kernel.

A worker names its stream (its event types come from ``contracts.registry``),
checks each decoded event (pure, optional), applies a batch of events its group
has not seen before inside the kernel's transaction and returns a result, and
receives that same batch's result once the transaction has committed. Nothing
is kept on the instance between the two calls: several batches of one worker
are in flight at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from contracts import Event
from contracts.registry import contract_for_stream

if TYPE_CHECKING:
    import asyncpg
    import redis.asyncio as aioredis

    from workers.kernel.inbox import Tx
    from workers.kernel.stopping import Stopping
    from workers.settings import Settings

E = TypeVar("E", bound=Event)
R = TypeVar("R")


@dataclass(slots=True)
class Resources:
    """Clients opened once per process and shared by every worker in it."""

    settings: Settings
    redis: aioredis.Redis
    pool: asyncpg.Pool | None = None
    s3: object | None = None  # an aioboto3 S3 client when the worker needs one


class Worker(Generic[E, R]):
    """Base class of every stream worker: set ``name`` and ``stream``, write ``apply``.

    ``E`` is the union of the stream's event types, ``R`` what ``apply`` returns for a
    batch (``None`` for most workers)."""

    name: ClassVar[str]
    stream: ClassVar[str]
    event_types: ClassVar[tuple[type[Event], ...]]
    """Derived from the stream's contract (``contracts.registry``), never repeated."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        stream = cls.__dict__.get("stream")
        if isinstance(stream, str):
            cls.event_types = contract_for_stream(stream).event_types

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

    def validate(self, event: E) -> str | None:
        """Pure semantic check; a returned string dead-letters the event with that reason.
        Not called at all unless a worker overrides it."""
        return None

    async def apply(self, tx: Tx, fresh: Sequence[E]) -> R:
        """Write the effects of ``fresh`` (events this group has not seen before, each
        once) through ``tx``: one composed statement (``tx.execute``) or any number of
        queries on ``await tx.connection()``. Raise :class:`~workers.errors.Permanent`
        for an event that can never succeed."""
        raise NotImplementedError

    async def after_commit(self, fresh: Sequence[E], result: R) -> None:
        """Runs once the batch's transaction committed, with that batch's own ``apply``
        result (e.g. publish derived events, observe metrics). Never retried: a failure
        is logged and counted, the batch is not applied again."""

    async def background(self, stopping: Stopping) -> None:
        """Optional long-running task (schedules, outbox flushing); waits with
        ``stopping.sleep`` and returns once a stop is requested."""
