"""An in-memory inbox: the kernel's guarantees tested without PostgreSQL.

It behaves as :class:`workers.kernel.PgInbox` does where the kernel can tell: a batch
holding an event the group has handled fails whole with ``Redelivered`` and records
nothing; a batch whose ``apply`` raises records nothing; a committed batch's statements
are kept in ``effects``, in commit order.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from workers.kernel.inbox import Redelivered, Statement


class MemoryTx:
    def __init__(self) -> None:
        self.statements: list[tuple[Statement, tuple[Any, ...]]] = []

    async def execute(self, statement: Statement, *params: Any) -> None:
        self.statements.append((statement, params))

    async def connection(self) -> Any:
        raise NotImplementedError("the in-memory inbox has no database connection")


class MemoryInbox:
    def __init__(self) -> None:
        self.handled: set[tuple[str, uuid.UUID]] = set()
        self.effects: list[tuple[Statement, tuple[Any, ...]]] = []
        self.expired_calls = 0

    @contextlib.asynccontextmanager
    async def transaction(self, group: str, ids: Sequence[uuid.UUID]) -> AsyncIterator[MemoryTx]:
        # As the inbox key does: a second copy in the batch, or an event handled before.
        if len(set(ids)) != len(ids) or any((group, i) in self.handled for i in ids):
            raise Redelivered
        tx = MemoryTx()
        yield tx
        self.handled.update((group, i) for i in ids)
        self.effects.extend(tx.statements)

    async def seen(self, group: str, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        return {i for i in ids if (group, i) in self.handled}

    async def expire(self, group: str, days: int) -> int:
        self.expired_calls += 1
        return 0
