"""The one way events go onto a stream: ``XADD`` in pipelined chunks.

Used by ``fleet publish``, the vex-consensus outbox, the dev kit's demo and workload,
and the tests. Each event is encoded with :func:`contracts.wire.encode_entry`, so every
producer writes the same entry shape (``docs/wire-format.md``).

Every event leaves with a W3C ``traceparent`` (``docs/tracing.md``): its own when it
has one (an event continuing a trace), otherwise the context of this call's ``send``
span with tracing on, or a new root shared by the call's events with tracing off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from contracts.base import Event
from contracts.wire import encode_entry
from workers import tracing

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

    with tracing.producing(stream) as traceparent:
        for event in events:
            chunk.append(
                event
                if event.traceparent is not None
                else msgspec.structs.replace(event, traceparent=traceparent)
            )
            if len(chunk) >= chunk_size:
                await flush()
                count += len(chunk)
                chunk = []
        if chunk:
            await flush()
            count += len(chunk)
    return count
