"""The one publish function on partitioned streams, and WAIT for replicas (docs/scaling.md)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from contracts import decode_event
from devkit import workload
from workers.errors import ConfigError
from workers.partitions import key_for, stream_keys
from workers.publishing import NotReplicated, publish, tenant_key
from workers.settings import load_settings

STREAM = "notify:delivery"


async def test_each_event_goes_to_its_tenants_partition_in_order(
    real_redis: aioredis.Redis,
) -> None:
    events = list(workload.notification_events(200, seed=5))
    assert await publish(real_redis, STREAM, events, partitions=3, chunk_size=64) == 200
    assert int(await real_redis.exists(STREAM)) == 0
    for key in stream_keys(STREAM, 3):
        rows = await real_redis.xrange(key)
        expected = [e for e in events if key_for(STREAM, tenant_key(e), 3) == key]
        # The same events in the same order (publish stamps a traceparent on each).
        assert [decode_event(f).event_id for _, f in rows] == [e.event_id for e in expected]


async def test_one_partition_publishes_to_todays_key(real_redis: aioredis.Redis) -> None:
    events = list(workload.notification_events(10, seed=6))
    await publish(real_redis, STREAM, events)
    assert int(await real_redis.xlen(STREAM)) == 10


async def test_waiting_for_a_replica_that_does_not_exist_raises_not_replicated(
    real_redis: aioredis.Redis,
) -> None:
    events = list(workload.notification_events(5, seed=7))
    taken: list[object] = []
    with pytest.raises(NotReplicated, match="0 of 1 replica"):
        await publish(
            real_redis, STREAM, events, replicas=1, wait_timeout_ms=50, accepted=taken.extend
        )
    # The entries are on the primary all the same, and the caller is told so (a caller
    # that must announce each event once marks them rather than add them again).
    assert int(await real_redis.xlen(STREAM)) == 5
    assert [e.event_id for e in taken] == [e.event_id for e in events]  # type: ignore[attr-defined]


def test_a_bad_partition_count_is_one_line_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="FLEET_STREAM_PARTITIONS"):
        load_settings({"FLEET_STREAM_PARTITIONS": "0"})
