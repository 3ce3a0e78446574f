"""Stream partitions: which Valkey keys one stream is, and which key an event goes to.

Pure functions, no I/O (``docs/scaling.md``):

- ``FLEET_STREAM_PARTITIONS=1`` (the default): stream ``S`` is the key ``S``, its dead
  letters ``S:dlq``, exactly as before partitions existed.
- ``P > 1``: stream ``S`` is the keys ``{S:0}`` … ``{S:P-1}``. The braces are a Valkey
  Cluster hash tag, so ``{S:k}`` and its dead letters ``{S:k}:dlq`` share one hash slot
  and the dead-letter move (``MULTI``/``EXEC``) is never cross-slot.
- An event's partition is ``crc32(utf8(partition key)) mod P``: CRC-32 as in zlib,
  IEEE 802.3 polynomial (Java ``java.util.zip.CRC32``, .NET
  ``System.IO.Hashing.Crc32``, Go ``hash/crc32.ChecksumIEEE``), as an unsigned 32-bit
  number. The partition key is the event's ``tenantId`` (its canonical lower-case
  UUID text) unless the producer says otherwise, so one tenant's events stay in order.
- While ``P`` changes (``FLEET_STREAM_PARTITIONS_PREVIOUS``, ``docs/scaling.md``), the
  keys of the previous layout that the new one lacks are *draining*: consumers read
  them too until ``fleet partitions retire`` removes them, emptied.
"""

from __future__ import annotations

import re
import zlib

_PARTITION_KEY = re.compile(r"^\{(?P<stream>.+):(?P<index>\d+)\}$")


def stream_keys(stream: str, partitions: int) -> list[str]:
    """The keys of ``stream``: ``[stream]`` with one partition, else ``{stream:k}``."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    if partitions == 1:
        return [stream]
    return [partition_key(stream, k) for k in range(partitions)]


def draining_keys(stream: str, partitions: int, previous: int | None) -> list[str]:
    """The keys of the ``previous`` layout that the ``partitions`` layout lacks: ``[S]``
    when raising P from 1, ``{S:P}`` … when lowering it, none when raising from P > 1."""
    if previous is None or previous == partitions:
        return []
    current = set(stream_keys(stream, partitions))
    return [key for key in stream_keys(stream, previous) if key not in current]


def consumed_keys(stream: str, partitions: int, previous: int | None = None) -> list[str]:
    """Every key consumers read: the current layout's, then the draining ones."""
    return stream_keys(stream, partitions) + draining_keys(stream, partitions, previous)


def partition_key(stream: str, index: int) -> str:
    """The key of partition ``index`` of ``stream`` when there are several: ``{S:k}``."""
    return f"{{{stream}:{index}}}"


def partition_of(key: str, partitions: int) -> int:
    """``crc32(key.encode("utf-8")) % partitions``: the documented, stable choice."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    return zlib.crc32(key.encode("utf-8")) % partitions


def key_for(stream: str, key: str, partitions: int) -> str:
    """The Valkey key an event with partition key ``key`` goes to."""
    if partitions == 1:
        return stream
    return partition_key(stream, partition_of(key, partitions))


def logical_stream(key: str) -> str:
    """The stream a key belongs to: ``{S:k}`` → ``S``; any other key is its own stream."""
    match = _PARTITION_KEY.match(key)
    return match.group("stream") if match else key


def partition_index(key: str) -> int | None:
    """``k`` of ``{S:k}``; None for an unpartitioned key."""
    match = _PARTITION_KEY.match(key)
    return int(match.group("index")) if match else None


def dlq_key(key: str) -> str:
    """The dead-letter stream of a stream key: ``S:dlq`` or ``{S:k}:dlq`` (same slot)."""
    return f"{key}:dlq"
