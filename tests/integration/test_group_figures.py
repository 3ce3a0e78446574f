"""The figures SREs act on, on fakeredis and real Valkey: a group's lag when the server
cannot report it (entries deleted or trimmed across the group's position), and the age
of the oldest pending entry counted from its last delivery, not from its publication."""

from __future__ import annotations

from typing import Any

from tests.helpers import metric
from workers import streams

STREAM = "notify:delivery"
GROUP = "notify-workers"


async def _fill(redis: Any, n: int) -> list[bytes]:
    return [await redis.xadd(STREAM, {"type": b"x", "data": b"{}"}) for _ in range(n)]


async def _status(redis: Any) -> streams.GroupStatus:
    return {s.group: s for s in await streams.group_statuses(redis, STREAM)}[GROUP]


async def test_lag_is_counted_when_deletions_leave_the_server_unsure(redis: Any) -> None:
    ids = await _fill(redis, 100)
    await streams.ensure_group(redis, STREAM, GROUP)
    await redis.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=30)
    # Entries deleted on both sides of the group's position, and the oldest trimmed.
    await redis.xdel(STREAM, ids[10], ids[50], ids[60], ids[99])
    await redis.xtrim(STREAM, minid=ids[5])
    status = await _status(redis)
    assert status.lag == 70 - 3  # after entry 30: 70 entries, 3 of them deleted
    assert not status.lag_estimated
    await streams.refresh_gauges(redis, STREAM)
    assert metric("fleet_group_lag", stream=STREAM, group=GROUP) == 67


async def test_a_lag_counted_past_the_limit_is_exported_as_a_lower_bound(
    redis: Any, monkeypatch: Any
) -> None:
    ids = await _fill(redis, 60)
    await streams.ensure_group(redis, STREAM, GROUP)
    await redis.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=10)
    await redis.xdel(STREAM, ids[20])  # Valkey can no longer tell the lag
    monkeypatch.setattr(streams, "LAG_COUNT_LIMIT", 25)
    status = await _status(redis)
    assert status.lag is not None and status.lag >= 25 and status.lag_estimated
    await streams.refresh_gauges(redis, STREAM)
    assert metric("fleet_group_lag_estimated", stream=STREAM, group=GROUP) == 1
    monkeypatch.undo()
    await streams.refresh_gauges(redis, STREAM)
    assert metric("fleet_group_lag", stream=STREAM, group=GROUP) == 49
    assert metric("fleet_group_lag_estimated", stream=STREAM, group=GROUP) == 0


async def test_lag_of_a_group_that_read_nothing_counts_the_whole_stream(redis: Any) -> None:
    ids = await _fill(redis, 40)
    await streams.ensure_group(redis, STREAM, GROUP)
    await redis.xdel(STREAM, ids[3])
    assert (await _status(redis)).lag == 39


async def test_oldest_pending_age_counts_from_the_last_delivery(redis: Any) -> None:
    # Entries published long ago (their ids say 2001) and delivered just now: a healthy
    # catch-up of an old backlog, not a stuck entry.
    for n in range(1, 6):
        await redis.xadd(STREAM, {"type": b"x", "data": b"{}"}, id=f"1000000000000-{n}")
    await streams.ensure_group(redis, STREAM, GROUP)
    await redis.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=5)
    status = await _status(redis)
    assert status.pending == 5
    assert status.oldest_pending_age_seconds < 60
