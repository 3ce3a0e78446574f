"""Safe trimming: ``XTRIM … MINID`` never past what a group has not read or acknowledged.

Used by every consumer's housekeeping (``FLEET_STREAM_RETENTION_DAYS``,
``FLEET_STREAM_MAX_LEN``), the vex-consensus worker for ``vex:consensus`` and
``fleet trim``. Only the optional hard cap may remove entries a group has not consumed,
and each is counted in ``fleet_stream_trimmed_unconsumed_total`` (docs/guarantees.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as redis_exc

from workers import metrics, streams

_DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class TrimPlan:
    stream: str
    length: int
    min_id: str | None  # XTRIM MINID target; None: nothing to trim
    removable: int
    cap_removals: int  # entries the hard cap removes on top of the safe trim
    limited_by: str  # "retention", a group name, or "nothing"
    consumed_bound: str | None = None  # every group is done with entries below this id


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
        name = streams.as_text(info["name"])
        last = streams.id_tuple(info["last-delivered-id"])
        group_bound = (last[0], last[1] + 1)
        if int(info["pending"]):
            summary = await client.xpending(stream, name)
            if summary.get("min"):
                group_bound = min(group_bound, streams.id_tuple(summary["min"]))
        if consumed is None or group_bound < consumed:
            consumed = group_bound
            group_of_bound = name
    bound = cutoff
    if consumed is not None and consumed < cutoff:
        bound = consumed
        limited_by = group_of_bound
    first: Any = await client.xrange(stream, "-", "+", count=1)
    first_id = streams.id_tuple(first[0][0]) if first else bound
    trims = bound > first_id
    removable = 0
    if trims and count:
        removable = await streams.count_range(client, stream, "-", f"({streams.id_text(bound)}")
    cap_removals = 0
    if max_len and length - removable > max_len:
        cap_removals = length - removable - max_len
    return TrimPlan(
        stream=stream,
        length=length,
        min_id=streams.id_text(bound) if trims else None,
        removable=removable,
        cap_removals=cap_removals,
        limited_by=limited_by,
        consumed_bound=streams.id_text(consumed) if consumed is not None else None,
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
            consumed_left = await streams.count_range(
                client, stream, "-", f"({plan.consumed_bound}"
            )
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
