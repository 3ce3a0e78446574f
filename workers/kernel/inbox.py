"""The inbox: the one module that knows how "effectively once" is written down.

A group's handled events are rows ``fleet.inbox (event_id, group_name)``. A batch's
inbox rows and its effects commit together, so an event is applied at most once per
group however often it is delivered. Two ways to write both, chosen by what the
worker does with its :class:`Tx`, never by a flag:

- ``tx.execute(statement, ...)``: the worker's effects as one statement built with
  :func:`compose`, which puts the inbox insert in front of them: one round trip,
  atomic on its own.
- ``await tx.connection()``: a transaction that has already recorded the inbox rows;
  the worker runs any queries in it, and the kernel commits.

A worker that does neither still gets its inbox rows recorded. Rows are inserted
without ``ON CONFLICT``: a batch holding an event the group has already handled
fails as a whole on the inbox key (:class:`Redelivered`), with nothing written; the
kernel then asks :meth:`Inbox.seen` which events were handled and applies the rest.
Redeliveries are rare, so the common batch costs one plain insert and no join.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import asyncpg

from contracts import Event
from workers.db import DbConn, Failure, classify
from workers.errors import Unavailable

E = TypeVar("E", bound=Event)
R = TypeVar("R")

_INBOX_KEY = "inbox_pkey"

# $1: the group, $2: the fresh events' ids in the order they were handed to apply.
# Sorted: one lock order for every batch, so concurrent batches cannot deadlock.
_RECORD = """inbox AS (
    INSERT INTO fleet.inbox (event_id, group_name)
    SELECT e, $1 FROM unnest($2::uuid[]) AS e ORDER BY e
)"""

_RECORD_SQL = "WITH " + _RECORD + "\nSELECT"

_SEEN_SQL = """
SELECT event_id FROM fleet.inbox WHERE group_name = $1 AND event_id = ANY($2::uuid[])
"""

_EXPIRE_SQL = """
DELETE FROM fleet.inbox WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM fleet.inbox
    WHERE group_name = $1 AND processed_at < now() - make_interval(days => $2::int)
    LIMIT 5000
))
"""


@dataclass(frozen=True, slots=True)
class Statement:
    """A worker's effects with the inbox insert composed in front (see :func:`compose`)."""

    sql: str


def compose(effects: str) -> Statement:
    """The one statement template: ``effects`` is the rest of a ``WITH`` list (one or
    more ``name AS (...)`` items) followed by the final statement. ``$1`` is the group and
    ``$2`` the fresh events' ids (``uuid[]``, in the order ``apply`` received them, which
    the effects may use too); the worker's own parameters start at ``$3``."""
    return Statement(f"WITH {_RECORD},\n{effects.strip()}\n")


class Redelivered(Exception):
    """The batch holds an event this group has already handled; nothing was written."""


class Tx(Protocol):
    """A batch's transaction, as ``apply`` sees it."""

    async def execute(self, statement: Statement, *params: Any) -> None:
        """Run the batch's one composed statement. A statement that failed wrote nothing
        (not even the inbox rows); ``apply`` may catch its error and send another."""

    async def connection(self) -> DbConn:
        """The open transaction, inbox rows already recorded."""


class Inbox(Protocol):
    """Where a group's handled events are remembered."""

    def transaction(
        self, group: str, ids: Sequence[uuid.UUID]
    ) -> contextlib.AbstractAsyncContextManager[Tx]:
        """A transaction recording ``ids`` for ``group``; raises :class:`Redelivered`."""

    async def seen(self, group: str, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of ``ids`` the group has already handled."""

    async def expire(self, group: str, days: int) -> int:
        """Forget (a bounded batch of) the group's events handled more than ``days`` ago."""


async def apply_new(
    inbox: Inbox,
    group: str,
    apply: Callable[[Tx, list[E]], Awaitable[R]],
    events: Sequence[E],
) -> tuple[list[E], R | None]:
    """Apply the events of ``events`` that ``group`` has not handled, each once, in one
    transaction that records them: ``(the events applied, apply's result)``.

    All are presumed new and distinct (the common case costs no look-up at all). When the
    inbox key says otherwise, a second copy of an event within the batch is dropped, the
    inbox says which events were handled before, and the rest are applied.
    ``([], None)`` when every event had been handled."""
    fresh = list(events)
    while fresh:
        ids = [e.event_id for e in fresh]
        try:
            async with inbox.transaction(group, ids) as tx:
                return fresh, await apply(tx, fresh)
        except Redelivered:
            distinct = _first_of_each(fresh)
            seen = await inbox.seen(group, [e.event_id for e in distinct])
            left = [e for e in distinct if e.event_id not in seen]
            if len(left) == len(fresh):
                raise RuntimeError("the inbox refused events it has not seen") from None
            fresh = left
    return fresh, None


def _first_of_each(events: Sequence[E]) -> list[E]:
    first: dict[uuid.UUID, E] = {}
    for event in events:
        first.setdefault(event.event_id, event)
    return list(first.values())


def _is_inbox_key(exc: asyncpg.UniqueViolationError) -> bool:
    return exc.constraint_name == _INBOX_KEY


class _PgTx:
    __slots__ = ("_conn", "_group", "_ids", "_tx", "used")

    def __init__(self, conn: DbConn, group: str, ids: Sequence[uuid.UUID]) -> None:
        self._conn = conn
        self._group = group
        self._ids = ids
        self._tx: Any = None
        self.used = False

    async def execute(self, statement: Statement, *params: Any) -> None:
        if self.used:
            raise RuntimeError("a composed statement must be the batch's only statement")
        try:
            await self._conn.execute(statement.sql, self._group, self._ids, *params)
        except asyncpg.UniqueViolationError as exc:
            if _is_inbox_key(exc):
                raise Redelivered from None
            raise
        # Only a statement that succeeded counts: one that failed ran alone and wrote
        # nothing, so the worker may send another in its place.
        self.used = True

    async def connection(self) -> DbConn:
        if self._tx is None:
            if self.used:
                raise RuntimeError("a composed statement must be the batch's only statement")
            self.used = True
            self._tx = self._conn.transaction()
            await self._tx.start()
            await self._record()
        return self._conn

    async def _record(self) -> None:
        try:
            await self._conn.execute(_RECORD_SQL, self._group, self._ids)
        except asyncpg.UniqueViolationError as exc:
            if _is_inbox_key(exc):
                raise Redelivered from None
            raise

    async def finish(self, failed: bool) -> None:
        if self._tx is not None:
            if not failed:
                await self._tx.commit()
                return
            # The error being raised says what went wrong; a lost connection cannot roll
            # back, and the pool discards it.
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                await self._tx.rollback()
        elif not self.used and not failed and self._ids:
            await self._record()


class PgInbox:
    """The inbox in PostgreSQL, on the worker's pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @contextlib.asynccontextmanager
    async def transaction(self, group: str, ids: Sequence[uuid.UUID]) -> AsyncIterator[Tx]:
        async with self.pool.acquire() as conn:
            tx = _PgTx(conn, group, ids)
            try:
                yield tx
            except BaseException as exc:
                lost = classify(exc) is Failure.OUTAGE and not isinstance(exc, Unavailable)
                if isinstance(exc, Exception) and lost:
                    # Lost, or silent past the statement timeout: nothing said on this
                    # connection can be trusted to arrive. Closed at once (the server rolls
                    # back), so the pool opens a new one instead of waiting on this one.
                    conn.terminate()
                else:
                    await tx.finish(failed=True)
                raise
            await tx.finish(failed=False)

    async def seen(self, group: str, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        rows = await self.pool.fetch(_SEEN_SQL, group, list(ids))
        return {r[0] for r in rows}

    async def expire(self, group: str, days: int) -> int:
        status = await self.pool.execute(_EXPIRE_SQL, group, days)
        return int(status.rsplit(" ", 1)[-1])


class _NoTx:
    async def execute(self, statement: Statement, *params: Any) -> None:
        raise RuntimeError("this worker runs without a database")

    async def connection(self) -> DbConn:
        raise RuntimeError("this worker runs without a database")


class NoInbox:
    """For workers without database effects: nothing is recorded, nothing is seen."""

    @contextlib.asynccontextmanager
    async def transaction(self, group: str, ids: Sequence[uuid.UUID]) -> AsyncIterator[Tx]:
        yield _NoTx()

    async def seen(self, group: str, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        return set()

    async def expire(self, group: str, days: int) -> int:
        return 0
