"""Valkey Cluster: detecting it, its client, and what differs from one server.

The fleet runs on Valkey Cluster when ``FLEET_VALKEY_CLUSTER=true``, or when that is
unset and ``INFO cluster`` reports ``cluster_enabled:1``; it then talks through redis-py's
:class:`~redis.asyncio.cluster.RedisCluster`, which routes each command to the primary
owning its key's hash slot and follows failovers (``docs/scaling.md``).

No command the fleet sends is ever cross-slot: every multi-key operation (the
dead-letter move, replay) touches one stream key and its dead letters, which share a
slot through the ``{…}`` hash tag of partitioned keys (:mod:`workers.partitions`). On
a cluster, unpartitioned keys (``S`` and ``S:dlq``) would hash to different slots, so a
cluster with ``FLEET_STREAM_PARTITIONS=1`` is refused at start-up.
"""

from __future__ import annotations

import inspect
from typing import Any, cast

import redis.asyncio as aioredis
import redis.exceptions as redis_exc
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, SSLConnection

from workers import streams
from workers.errors import ConfigError, ExitCode
from workers.settings import Settings, redact_url

TRANSIENT: tuple[type[BaseException], ...] = (
    redis_exc.ClusterDownError,
    redis_exc.TryAgainError,
    redis_exc.SlotNotCoveredError,
    redis_exc.RedisClusterUnreachableError,
)
"""Raised by the cluster client while a slot has no reachable primary (a failover in
progress): handled like a lost connection, retried."""


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


async def cluster_enabled(client: aioredis.Redis) -> bool:
    """``INFO cluster``: whether the server runs in cluster mode. A server (or ACL) that
    refuses ``INFO`` is taken as a single server; set ``FLEET_VALKEY_CLUSTER`` then."""
    try:
        info = await client.info("cluster")
    except redis_exc.ResponseError:
        return False
    return str(info.get("cluster_enabled", "0")) == "1"


def check_partitions(settings: Settings) -> None:
    """A cluster needs partitioned keys (hash tags) so no command is cross-slot."""
    if settings.stream_partitions < 2:
        raise ConfigError(
            f"Valkey at {redact_url(settings.valkey_url)} is a cluster: set "
            "FLEET_STREAM_PARTITIONS to 2 or more (docs/scaling.md), so each stream key "
            "and its dead letters share a hash slot",
            ExitCode.CONFIG,
        )
    if settings.stream_partitions_previous == 1:
        raise ConfigError(
            f"Valkey at {redact_url(settings.valkey_url)} is a cluster: "
            "FLEET_STREAM_PARTITIONS_PREVIOUS=1 names unpartitioned keys, which a cluster "
            "cannot hold with their dead letters (docs/scaling.md)",
            ExitCode.CONFIG,
        )


def _cluster_client(settings: Settings, probe: aioredis.Redis) -> RedisCluster:
    kwargs = dict(probe.connection_pool.connection_kwargs)
    if "path" in kwargs:
        raise ConfigError(
            f"invalid FLEET_VALKEY_URL={redact_url(settings.valkey_url)!r}: a Valkey Cluster "
            "is reached over TCP, not a Unix socket",
            ExitCode.CONFIG,
        )
    # What the URL said (credentials, TLS files, timeouts), as far as a cluster client
    # takes it; the rest are per-connection internals of the single-server pool.
    accepted = set(inspect.signature(RedisCluster.__init__).parameters) - {"db", "path"}
    kwargs = {k: v for k, v in kwargs.items() if k in accepted and v is not None}
    if probe.connection_pool.connection_class.__name__.endswith("SSLConnection"):
        kwargs["ssl"] = True
    host = kwargs.pop("host")
    port = kwargs.pop("port")
    # Kept to the options a cluster client accepts; the rest are per connection.
    client = RedisCluster(host=host, port=port, **kwargs)
    # Commands packed by hiredis, as on one server (workers.streams): every node created
    # from now on uses the packing connection kind.
    template = client.nodes_manager.connection_kwargs
    packing = streams.hiredis_packing(template.get("connection_class", Connection))
    template["connection_class"] = packing
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = packing
    return client


async def open_client(settings: Settings) -> aioredis.Redis:
    """The client for ``FLEET_VALKEY_URL``: one server's (:func:`workers.streams.connect`),
    or a cluster client when the server is a cluster node. Pinged; one line on failure.

    A cluster client has every command method of the single-server one the fleet uses, so
    it is typed as one; :func:`is_cluster` tells them apart where it matters."""
    probe = streams.connect(settings)
    try:
        await streams.ping(probe, settings)
        clustered = settings.valkey_cluster
        if clustered is None:
            clustered = await cluster_enabled(probe)
        if not clustered:
            return probe
        check_partitions(settings)
        client = _cluster_client(settings, probe)
    except BaseException:
        await probe.aclose()
        raise
    await probe.aclose()
    try:
        await client.initialize()
    except (redis_exc.RedisError, redis_exc.RedisClusterException, OSError) as exc:
        await client.aclose()
        raise ConfigError(
            f"cannot use the Valkey Cluster at {redact_url(settings.valkey_url)}: {exc}",
            ExitCode.VALKEY,
        ) from None
    return cast(aioredis.Redis, client)


def reads_client(client: Any, shape: Any) -> Any:
    """A client whose ``XREADGROUP`` replies are shaped by ``shape``: a second client on
    the same connection pool for one server; the cluster client itself (its only
    ``XREADGROUP`` caller is the reader, workers/kernel/reading.py)."""
    if is_cluster(client):
        client.set_response_callback("XREADGROUP", shape)
        return client
    reads = aioredis.Redis(connection_pool=client.connection_pool)
    reads.set_response_callback("XREADGROUP", shape)
    return reads


def node_client(client: Any, key: str) -> aioredis.Redis:
    """A single-server client on the primary holding ``key`` (for ``WAIT``, which counts
    the replicas that have the writes of its own connection)."""
    node = client.get_node_from_key(key)
    accepted = set(inspect.signature(aioredis.Redis.__init__).parameters) - {
        "host", "port", "connection_class", "retry", "connection_pool",
    }  # fmt: skip
    kwargs = {k: v for k, v in node.connection_kwargs.items() if k in accepted}
    # The cluster says TLS by its connection kind, not by a keyword: say it again here,
    # or the node's TLS port would be spoken to in plain text.
    if issubclass(node.connection_class, SSLConnection):
        kwargs["ssl"] = True
    return aioredis.Redis(host=node.host, port=node.port, **kwargs)
