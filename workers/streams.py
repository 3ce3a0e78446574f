"""Stream and consumer-group administration shared by the runtime and the CLI.

Each function maps to a handful of Valkey commands, named in its docstring,
so an SRE can see exactly what runs against the server.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import hiredis
import redis.asyncio as aioredis
import redis.asyncio.connection as aioconnection
import redis.exceptions as redis_exc
import structlog

from workers import metrics, netio
from workers.errors import ConfigError, ExitCode
from workers.partitions import dlq_key, logical_stream
from workers.settings import Settings, redact_url

log = structlog.get_logger("workers.streams")

DLQ_PREFIX = "dlq."
_DAY_MS = 86_400_000


def dlq_name(stream: str) -> str:
    """``<stream key>:dlq``: beside a partition's key in its hash slot (``{S:k}:dlq``)."""
    return dlq_key(stream)


class _HiredisPacking:
    """Packs commands with hiredis, in C. redis-py's asyncio connections pack in Python,
    one argument at a time (its sync client uses hiredis when installed): an ``XACK`` of
    a whole batch's ids cost about a microsecond per id that way.

    Also counts a connection opened again after it was lost or went silent
    (``fleet_connection_replaced_total{server="valkey"}``)."""

    _fleet_connected = False

    async def on_connect(self) -> None:
        await super().on_connect()  # type: ignore[misc]  # the connection class it is mixed into
        if self._fleet_connected:
            metrics.CONNECTION_REPLACED.labels("valkey").inc()
            log.warning("valkey.connection_replaced")
        self._fleet_connected = True

    def pack_command(self, *args: Any) -> list[bytes]:
        head = args[0]
        # A command name may carry literal arguments ("CONFIG GET"); the server wants them
        # as separate arguments.
        if isinstance(head, str):
            args = (*head.encode().split(), *args[1:])
        elif b" " in head:
            args = (*head.split(), *args[1:])
        if any(type(arg) is bytearray for arg in args):
            # redis-py sends these as bytes; hiredis takes bytes only.
            args = tuple(bytes(arg) if type(arg) is bytearray else arg for arg in args)
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise redis_exc.DataError(str(exc)) from None


_PACKING_KINDS: dict[type[Any], type[Any]] = {}


def hiredis_packing(cls: type[aioconnection.AbstractConnection]) -> type[Any]:
    kind = _PACKING_KINDS.get(cls)
    if kind is None:
        kind = _PACKING_KINDS[cls] = type(f"Hiredis{cls.__name__}", (_HiredisPacking, cls), {})
    return kind


def connect(settings: Settings) -> aioredis.Redis:
    """A client for ``FLEET_VALKEY_URL`` (``valkey://`` and ``valkeys://`` accepted).

    Its connections are the kind the URL asks for (TCP, TLS, Unix socket) with commands
    packed by hiredis."""
    url = settings.valkey_url
    if url.startswith("valkey://"):
        url = "redis://" + url[len("valkey://") :]
    elif url.startswith("valkeys://"):
        url = "rediss://" + url[len("valkeys://") :]
    # A reply must come within the longest block plus a margin: a connection silent for
    # longer is dropped and opened anew (see workers.netio for TCP connections).
    timeouts: dict[str, Any] = {
        "socket_connect_timeout": 5,
        "socket_timeout": settings.block_ms / 1000 + 5,
        "health_check_interval": 10,
    }
    if url.startswith(("redis://", "rediss://")):
        timeouts |= {"socket_keepalive": True, "socket_keepalive_options": netio.tcp_options()}
    try:
        client = aioredis.Redis.from_url(
            url, decode_responses=False, client_name="streamfleet", **timeouts
        )
    except ValueError as exc:
        raise ConfigError(f"invalid FLEET_VALKEY_URL={redact_url(url)!r}: {exc}") from None
    pool = client.connection_pool
    # Connections open lazily: none exists yet, so every one is of the packing kind.
    pool.connection_class = hiredis_packing(pool.connection_class)
    return client


async def ping(client: aioredis.Redis, settings: Settings) -> None:
    """Fail with one line naming the server when Valkey cannot be reached."""
    try:
        await client.ping()
    except redis_exc.AuthenticationError as exc:
        # Before ConnectionError: AuthenticationError is one of its subclasses.
        raise ConfigError(
            f"Valkey at {redact_url(settings.valkey_url)} refused the credentials: {exc}",
            ExitCode.VALKEY,
        ) from None
    except (redis_exc.ConnectionError, redis_exc.TimeoutError, OSError) as exc:
        raise ConfigError(
            f"cannot reach Valkey at {redact_url(settings.valkey_url)}: {exc}", ExitCode.VALKEY
        ) from None
    except redis_exc.RedisError as exc:  # e.g. a bad ssl_* URL parameter, or a refused command
        raise ConfigError(
            f"Valkey at {redact_url(settings.valkey_url)}: {exc}", ExitCode.VALKEY
        ) from None


async def ensure_group(client: aioredis.Redis, stream: str, group: str) -> bool:
    """``XGROUP CREATE stream group 0 MKSTREAM``; True when it was created now.

    Starting at ``0`` means a new group also sees entries published before it existed.
    """
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis_exc.ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise
    return True


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_tuple(entry_id: bytes | str) -> tuple[int, int]:
    text = _s(entry_id)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _id_text(parts: tuple[int, int]) -> str:
    return f"{parts[0]}-{parts[1]}"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry on its way to ``<stream>:dlq``: why, the last error, how often delivered."""

    entry_id: bytes
    fields: dict[bytes, bytes]
    reason: str
    error: str
    deliveries: int


async def dead_letter(
    client: aioredis.Redis,
    stream: str,
    group: str,
    consumer: str,
    entries: Sequence[DeadLetter],
) -> None:
    """``MULTI; XADD <stream>:dlq …; XACK stream group id; EXEC`` per entry.

    The dead-letter entry keeps every original field and adds ``dlq.*`` fields:
    stream, group, consumer, reason, error, deliveries, source_id and at.
    """
    now_ms = str(int(time.time() * 1000))
    async with client.pipeline(transaction=True) as pipe:
        for dead in entries:
            record: dict[Any, Any] = dict(dead.fields)
            record.update(
                {
                    "dlq.stream": stream,
                    "dlq.group": group,
                    "dlq.consumer": consumer,
                    "dlq.reason": dead.reason,
                    "dlq.error": dead.error[:1000],
                    "dlq.deliveries": str(dead.deliveries),
                    "dlq.source_id": dead.entry_id,
                    "dlq.at": now_ms,
                }
            )
            pipe.xadd(dlq_name(stream), record)
            pipe.xack(stream, group, dead.entry_id)
        await pipe.execute()


# ------------------------------------------------------------------ status


@dataclass(frozen=True, slots=True)
class GroupStatus:
    stream: str
    group: str
    length: int
    lag: int | None
    pending: int
    oldest_pending_age_seconds: float
    consumers: int
    dlq_length: int
    last_delivered_id: str
    # True when the lag was counted up to LAG_COUNT_LIMIT and more entries were left:
    # the figure is then a lower bound.
    lag_estimated: bool = False


LAG_COUNT_LIMIT = 100_000
"""Entries counted at most when the server cannot report a group's lag."""


async def group_statuses(client: aioredis.Redis, stream: str) -> list[GroupStatus]:
    """``XLEN``, ``XINFO GROUPS``, ``XPENDING`` (the oldest pending entry, with its idle
    time) and ``XLEN <stream>:dlq``; when ``XINFO`` reports no lag, the undelivered
    entries are counted (``XRANGE``, bounded)."""
    length = int(await client.xlen(stream))
    dlq_length = int(await client.xlen(dlq_name(stream)))
    try:
        groups = await client.xinfo_groups(stream)
    except redis_exc.ResponseError:
        return []
    result: list[GroupStatus] = []
    for info in groups:
        name = _s(info["name"])
        pending = int(info["pending"])
        oldest_age = 0.0
        if pending:
            # Since the oldest pending entry was last delivered, not since it was published:
            # a backlog consumed at full speed keeps this low, a stuck entry makes it grow.
            rows = await client.xpending_range(stream, name, min="-", max="+", count=1)
            if rows:
                oldest_age = max(0.0, int(rows[0]["time_since_delivered"]) / 1000)
        lag_value = info.get("lag")
        estimated = False
        if lag_value is not None:
            lag: int | None = int(lag_value)
        else:
            # The server cannot tell (entries deleted or trimmed across the group's position):
            # the undelivered entries are counted, up to LAG_COUNT_LIMIT.
            last = _s(info["last-delivered-id"])
            lag = await _count_range(client, stream, f"({last}", "+", limit=LAG_COUNT_LIMIT)
            estimated = lag >= LAG_COUNT_LIMIT
        result.append(
            GroupStatus(
                stream=stream,
                group=name,
                length=length,
                lag=lag,
                pending=pending,
                oldest_pending_age_seconds=oldest_age,
                consumers=int(info["consumers"]),
                dlq_length=dlq_length,
                last_delivered_id=_s(info["last-delivered-id"]),
                lag_estimated=estimated,
            )
        )
    return result


def summed(statuses: Sequence[GroupStatus]) -> list[GroupStatus]:
    """One row per stream and group over its partitions' rows (``{S:k}`` → ``S``):
    lengths, lags, pending and dead letters added up, the oldest pending age the
    largest, consumers the most any partition has (one process reads every partition
    under one name). Unpartitioned rows come back as they are."""
    merged: dict[tuple[str, str], GroupStatus] = {}
    for st in statuses:
        key = (logical_stream(st.stream), st.group)
        seen = merged.get(key)
        if seen is None:
            merged[key] = replace(st, stream=key[0])
            continue
        merged[key] = replace(
            seen,
            length=seen.length + st.length,
            lag=None if seen.lag is None or st.lag is None else seen.lag + st.lag,
            pending=seen.pending + st.pending,
            oldest_pending_age_seconds=max(
                seen.oldest_pending_age_seconds, st.oldest_pending_age_seconds
            ),
            consumers=max(seen.consumers, st.consumers),
            dlq_length=seen.dlq_length + st.dlq_length,
            last_delivered_id="-",
            lag_estimated=seen.lag_estimated or st.lag_estimated,
        )
    return list(merged.values())


async def refresh_gauges(client: aioredis.Redis, stream: str) -> list[GroupStatus]:
    statuses = await group_statuses(client, stream)
    metrics.STREAM_LENGTH.labels(stream).set(int(await client.xlen(stream)))
    for st in statuses:
        metrics.GROUP_LAG.labels(stream, st.group).set(st.lag if st.lag is not None else 0)
        metrics.GROUP_LAG_ESTIMATED.labels(stream, st.group).set(1 if st.lag_estimated else 0)
        metrics.GROUP_PENDING.labels(stream, st.group).set(st.pending)
        metrics.OLDEST_PENDING_AGE.labels(stream, st.group).set(st.oldest_pending_age_seconds)
        metrics.CONSUMERS.labels(stream, st.group).set(st.consumers)
    return statuses


# ------------------------------------------------------------------ consumers


@dataclass(frozen=True, slots=True)
class PruneResult:
    deleted: list[str]
    claimed: int
    kept: list[str]


async def prune_consumers(
    client: aioredis.Redis,
    stream: str,
    group: str,
    *,
    idle_ms: int,
    claim_to: str | None,
    dry_run: bool = False,
) -> PruneResult:
    """Delete consumers idle longer than ``idle_ms``, never with work still pending.

    ``XINFO CONSUMERS``; for an idle consumer holding entries, ``XPENDING … consumer``
    and ``XCLAIM`` them to ``claim_to`` first; ``XGROUP DELCONSUMER`` only once its
    pending count is zero (DELCONSUMER would otherwise drop those entries).
    """
    try:
        consumers = await client.xinfo_consumers(stream, group)
    except redis_exc.ResponseError:
        return PruneResult([], 0, [])
    deleted: list[str] = []
    kept: list[str] = []
    claimed = 0
    for info in consumers:
        name = _s(info["name"])
        idle = int(info.get("inactive", info["idle"]) or 0)
        if idle < 0:  # Valkey reports -1 for a consumer that never read successfully
            idle = int(info["idle"])
        if name == claim_to or idle < idle_ms:
            continue
        pending = int(info["pending"])
        if pending and claim_to is not None and not dry_run:
            while True:
                rows = await client.xpending_range(
                    stream, group, min="-", max="+", count=1000, consumername=name
                )
                ids: list[Any] = [r["message_id"] for r in rows]
                if not ids:
                    break
                moved = await client.xclaim(
                    stream, group, claim_to, min_idle_time=0, message_ids=ids, justid=True
                )
                claimed += len(moved)
                if len(moved) < len(ids):
                    break
            pending = await _consumer_pending(client, stream, group, name)
        if pending:
            kept.append(name)
            continue
        if not dry_run:
            await client.xgroup_delconsumer(stream, group, name)
        deleted.append(name)
    return PruneResult(deleted, claimed, kept)


async def _consumer_pending(client: aioredis.Redis, stream: str, group: str, name: str) -> int:
    rows = await client.xpending_range(stream, group, min="-", max="+", count=1, consumername=name)
    return len(rows)


# ------------------------------------------------------------------ trimming


@dataclass(frozen=True, slots=True)
class TrimPlan:
    stream: str
    length: int
    min_id: str | None  # XTRIM MINID target; None: nothing to trim
    removable: int
    cap_removals: int  # entries the hard cap removes on top of the safe trim
    limited_by: str  # "retention", a group name, or "nothing"
    consumed_bound: str | None = None  # every group is done with entries below this id


async def _count_range(
    client: aioredis.Redis, stream: str, start: str, end: str, *, limit: int | None = None
) -> int:
    """``XRANGE stream start end COUNT 1000`` page by page (bounds as ``XRANGE`` takes
    them, ``(`` for exclusive): the entries between, memory bounded; counting stops once
    ``limit`` is reached."""
    count = 0
    cursor = start
    while limit is None or count < limit:
        page: Any = await client.xrange(stream, cursor, end, count=1000)
        if not page:
            return count
        count += len(page)
        cursor = f"({_s(page[-1][0])}"
    return count


async def plan_trim(
    client: aioredis.Redis,
    stream: str,
    *,
    retention_days: float,
    max_len: int = 0,
    now_ms: int | None = None,
    count: bool = True,
) -> TrimPlan:
    """The lowest id every group is done with, bounded by the retention cutoff.

    A group is done with an entry when it has read it (id ≤ last-delivered-id) and
    acknowledged it (id < its oldest pending id). With ``count`` the plan also counts
    what would go (paged ``XRANGE``); without it, only the bounds are computed.
    """
    length = int(await client.xlen(stream))
    if length == 0:
        return TrimPlan(stream, 0, None, 0, 0, "nothing")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    cutoff = (max(0, now - int(retention_days * _DAY_MS)), 0)
    consumed: tuple[int, int] | None = None
    limited_by = "retention"
    try:
        groups = await client.xinfo_groups(stream)
    except redis_exc.ResponseError:
        groups = []
    group_of_bound = "retention"
    for info in groups:
        name = _s(info["name"])
        last = _id_tuple(info["last-delivered-id"])
        group_bound = (last[0], last[1] + 1)
        if int(info["pending"]):
            summary = await client.xpending(stream, name)
            if summary.get("min"):
                group_bound = min(group_bound, _id_tuple(summary["min"]))
        if consumed is None or group_bound < consumed:
            consumed = group_bound
            group_of_bound = name
    bound = cutoff
    if consumed is not None and consumed < cutoff:
        bound = consumed
        limited_by = group_of_bound
    first: Any = await client.xrange(stream, "-", "+", count=1)
    first_id = _id_tuple(first[0][0]) if first else bound
    trims = bound > first_id
    removable = 0
    if trims and count:
        removable = await _count_range(client, stream, "-", f"({_id_text(bound)}")
    cap_removals = 0
    if max_len and length - removable > max_len:
        cap_removals = length - removable - max_len
    return TrimPlan(
        stream=stream,
        length=length,
        min_id=_id_text(bound) if trims else None,
        removable=removable,
        cap_removals=cap_removals,
        limited_by=limited_by,
        consumed_bound=_id_text(consumed) if consumed is not None else None,
    )


async def trim_stream(
    client: aioredis.Redis,
    stream: str,
    *,
    retention_days: float,
    max_len: int = 0,
    dry_run: bool = False,
    now_ms: int | None = None,
) -> TrimPlan:
    """``XTRIM stream MINID = <safe id>``; then ``XTRIM MAXLEN = cap`` only past the cap.

    Entries the cap removes before every group consumed them are counted in
    ``fleet_stream_trimmed_unconsumed_total``.
    """
    plan = await plan_trim(
        client,
        stream,
        retention_days=retention_days,
        max_len=max_len,
        now_ms=now_ms,
        count=dry_run,
    )
    if dry_run:
        return plan
    removed = 0
    if plan.min_id is not None:
        removed = int(await client.xtrim(stream, minid=plan.min_id, approximate=False))
    remaining = plan.length - removed
    cap_removals = remaining - max_len if max_len and remaining > max_len else 0
    if cap_removals:
        # Entries every group already consumed may still be inside the retention period;
        # the cap removing those loses nothing, so only the others are counted.
        consumed_left = 0
        if plan.consumed_bound is not None:
            consumed_left = await _count_range(client, stream, "-", f"({plan.consumed_bound}")
        cut = int(await client.xtrim(stream, maxlen=max_len, approximate=False))
        unconsumed = max(0, cut - consumed_left)
        if unconsumed:
            metrics.TRIMMED_UNCONSUMED.labels(stream).inc(unconsumed)
    return TrimPlan(
        stream=plan.stream,
        length=plan.length,
        min_id=plan.min_id,
        removable=removed,
        cap_removals=cap_removals,
        limited_by=plan.limited_by,
        consumed_bound=plan.consumed_bound,
    )


# ------------------------------------------------------------------ dead letters


@dataclass(frozen=True, slots=True)
class DlqEntry:
    """An entry of ``<stream>:dlq`` as read back: its id and fields (``dlq.*`` and the
    original ones)."""

    id: str
    fields: dict[str, bytes]

    @property
    def reason(self) -> str:
        return self.fields.get("dlq.reason", b"").decode(errors="replace")

    def original_fields(self) -> dict[str, bytes]:
        return {k: v for k, v in self.fields.items() if not k.startswith(DLQ_PREFIX)}


async def _dlq_pages(
    client: aioredis.Redis, stream: str, page: int = 500
) -> AsyncIterator[list[DlqEntry]]:
    """``XRANGE <stream>:dlq (<last> + COUNT page`` until the end, oldest first."""
    cursor = "-"
    while True:
        rows: Any = await client.xrange(dlq_name(stream), cursor, "+", count=page)
        if not rows:
            return
        yield [DlqEntry(_s(eid), {_s(k): v for k, v in f.items()}) for eid, f in rows]
        cursor = f"({_s(rows[-1][0])}"


async def dlq_entries(
    client: aioredis.Redis, stream: str, *, count: int = 100, reason: str | None = None
) -> list[DlqEntry]:
    """The first ``count`` dead letters (with ``reason``, when given), oldest first."""
    found: list[DlqEntry] = []
    async for page in _dlq_pages(client, stream):
        found.extend(d for d in page if reason is None or d.reason == reason)
        if len(found) >= count:
            break
    return found[:count]


async def dlq_replay(
    client: aioredis.Redis, stream: str, ids: Sequence[str] | None, *, reason: str | None = None
) -> int:
    """Put dead letters back on their stream: ``MULTI; XADD stream <original fields>;
    XDEL <stream>:dlq id; EXEC`` for each, so an entry is never both or neither.

    The whole dead-letter stream is paged through, so a filter by ids or reason finds
    matches however far back they are.
    """
    wanted = set(ids) if ids is not None else None
    replayed = 0
    async for page in _dlq_pages(client, stream):
        batch = [
            d
            for d in page
            if (wanted is None or d.id in wanted) and (reason is None or d.reason == reason)
        ]
        if not batch:
            continue
        async with client.pipeline(transaction=True) as pipe:
            for dead in batch:
                pipe.xadd(stream, dead.original_fields())  # type: ignore[arg-type]  # str keys, bytes values are valid fields
                pipe.xdel(dlq_name(stream), dead.id)
            await pipe.execute()
        replayed += len(batch)
    return replayed


async def dlq_purge(client: aioredis.Redis, stream: str, ids: Sequence[str] | None = None) -> int:
    """``XDEL`` the given dead letters, or ``DEL <stream>:dlq`` for all of them."""
    if ids:
        return int(await client.xdel(dlq_name(stream), *ids))
    length = int(await client.xlen(dlq_name(stream)))
    await client.delete(dlq_name(stream))
    return length
