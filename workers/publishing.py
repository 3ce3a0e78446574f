"""The one way events go onto a stream: ``XADD`` in pipelined chunks.

Used by ``fleet publish``, the vex-consensus outbox, the dev kit's demo and workload,
and the tests. Each event is encoded with :func:`contracts.wire.encode_entry`, so every
producer writes the same entry shape (``docs/wire-format.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from contracts.base import Event
from contracts.wire import encode_entry

CHUNK = 1000


async def publish(
    client: Any,
    stream: str,
    events: Iterable[Event],
    progress: Callable[[int], object] | None = None,
    *,
    chunk_size: int = CHUNK,
) -> int:
    """``XADD`` ``events`` to ``stream`` in pipelined chunks of ``chunk_size`` (no
    transaction: a chunk is one round trip); returns how many were published.

    ``progress`` is called with the size of each chunk once the server accepted it."""
    count = 0
    chunk: list[Event] = []

    async def flush() -> None:
        async with client.pipeline(transaction=False) as pipe:
            for event in chunk:
                pipe.xadd(stream, encode_entry(event))
            await pipe.execute()
        if progress is not None:
            progress(len(chunk))

    for event in events:
        chunk.append(event)
        if len(chunk) >= chunk_size:
            await flush()
            count += len(chunk)
            chunk = []
    if chunk:
        await flush()
        count += len(chunk)
    return count
