"""The one way events go onto a stream: ``XADD`` in pipelined chunks.

Used by ``fleet publish``, the vex-consensus outbox, the dev kit's demo and workload,
and the tests. Each event is encoded with :func:`contracts.wire.encode_entry`, so every
producer writes the same entry shape (``docs/wire-format.md``).

Every event leaves with a W3C ``traceparent`` (``docs/tracing.md``): its own when it
has one (an event continuing a trace), otherwise the context of this call's ``send``
span with tracing on, or a new root shared by the call's events with tracing off.

With ``partitions`` > 1 each event goes to the key of its partition
(:func:`workers.partitions.key_for` over its partition key, ``tenantId`` by default),
so one tenant's events keep their order. With ``replicas`` > 0 each chunk is followed
by ``WAIT replicas timeout`` on the same connection, and :class:`NotReplicated` is
raised when fewer replicas confirmed it: a chunk confirmed that way survives the loss
of its primary (``docs/scaling.md``).

Keys are written one after another, so a failure on one key (its primary moved) can
follow success on another: ``accepted`` is told which events each key took, and a
caller that must announce each event once (the export worker, the vex outbox) marks
only those as published. Events a primary took but no replica confirmed in time count
as taken: adding them again would repeat them on every try while a replica is away.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import redis.exceptions as redis_exc

from contracts.base import Event
from contracts.wire import encode_entry
from workers import cluster, tracing
from workers.partitions import key_for

CHUNK = 1000


class NotReplicated(Exception):
    """Fewer replicas than asked for confirmed a chunk within the wait timeout: its
    entries are on the primary, but a failover now could lose them. Publishing the
    chunk again is safe (the consumers' inbox absorbs duplicates)."""

    def __init__(self, key: str, confirmed: int, wanted: int, published: int) -> None:
        super().__init__(
            f"{confirmed} of {wanted} replica(s) confirmed the entries on {key} "
            f"({published} event(s) confirmed before them)"
        )
        self.key = key
        self.confirmed = confirmed
        self.wanted = wanted
        self.published = published


PUBLISH_FAILURES: tuple[type[BaseException], ...] = (
    redis_exc.RedisError,
    redis_exc.RedisClusterException,
    NotReplicated,
    OSError,
)
"""What :func:`publish` raises when Valkey did not take (or confirm) every event: the
caller publishes the rest again later."""


def _wait_ms(target: Any, wanted: int) -> int:
    """``wanted``, or less when the connection would time out first: a ``WAIT`` that
    outlasts the socket timeout reads as a lost connection, not as unconfirmed entries."""
    pool = getattr(target, "connection_pool", None)
    kwargs: dict[str, Any] = getattr(pool, "connection_kwargs", {})
    # A pool made from a URL leaves the timeout to the connection: redis-py's 5 s.
    socket_timeout = kwargs.get("socket_timeout", 5.0)
    if not socket_timeout:
        return wanted
    return max(1, min(wanted, int((float(socket_timeout) - 1.0) * 1000)))


def tenant_key(event: Event) -> str:
    """The default partition key: the tenant id as canonical lower-case UUID text."""
    return str(event.tenant_id)


async def publish(
    client: Any,
    stream: str,
    events: Iterable[Event],
    progress: Callable[[int], object] | None = None,
    *,
    accepted: Callable[[list[Event]], object] | None = None,
    chunk_size: int = CHUNK,
    partitions: int = 1,
    partition_key: Callable[[Event], str] = tenant_key,
    replicas: int = 0,
    wait_timeout_ms: int = 5000,
) -> int:
    """``XADD`` ``events`` to ``stream`` (to the key of each one's partition) in pipelined
    chunks of ``chunk_size`` (no transaction: a chunk is one round trip per key); returns
    how many were published. With ``replicas``, ``WAIT replicas wait_timeout_ms`` after
    each chunk (:class:`NotReplicated` when fewer confirmed).

    ``progress`` is called with the size of each chunk once the server accepted it;
    ``accepted`` with the events of each key's share of a chunk once its server took
    them, before the next key is tried, and before :class:`NotReplicated` when
    ``replicas`` did not confirm them in time (they are on the primary then: adding them
    again would repeat them, however long the replica stays away)."""
    count = 0
    chunk: list[Event] = []
    nodes: dict[str, Any] = {}

    async def send(key: str, entries: list[dict[str, bytes]]) -> int:
        """The entries' ``XADD``s, and with ``replicas`` their ``WAIT``; how many replicas
        confirmed them."""
        if replicas and cluster.is_cluster(client):
            # WAIT counts the replicas holding this connection's writes: the writes and
            # the WAIT go through one connection to the key's primary.
            node = client.get_node_from_key(key)
            target = nodes.get(node.name)
            if target is None:
                target = nodes[node.name] = cluster.node_client(client, key)
            try:
                replies = await _xadd(target, key, entries)
            except (redis_exc.RedisError, OSError):
                # The primary moved (a failover): the cluster client learns where the
                # slot is now from a command of its own, for the caller's next attempt.
                await nodes.pop(node.name).aclose()
                with contextlib.suppress(redis_exc.RedisError, OSError):
                    await client.exists(key)
                raise
        else:
            replies = await _xadd(client, key, entries)
        return int(replies[-1]) if replicas else 0

    async def _xadd(target: Any, key: str, entries: list[dict[str, bytes]]) -> Any:
        async with target.pipeline(transaction=False) as pipe:
            for fields in entries:
                pipe.xadd(key, fields)
            if replicas:
                pipe.execute_command("WAIT", replicas, _wait_ms(target, wait_timeout_ms))
            return await pipe.execute()

    async def flush() -> None:
        by_key: dict[str, list[Event]] = {}
        for event in chunk:
            by_key.setdefault(partitions_key(event), []).append(event)
        for key, share in by_key.items():
            confirmed = await send(key, [encode_entry(event) for event in share])
            if accepted is not None:
                accepted(share)
            if confirmed < replicas:
                raise NotReplicated(key, confirmed, replicas, count)
        if progress is not None:
            progress(len(chunk))

    def partitions_key(event: Event) -> str:
        if partitions == 1:
            return stream
        return key_for(stream, partition_key(event), partitions)

    try:
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
    finally:
        for node_client in nodes.values():
            with contextlib.suppress(Exception):  # closing a spent connection
                await node_client.aclose()
    return count
