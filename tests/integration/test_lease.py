"""Consumer names by lease, on fakeredis and on real Valkey: the lowest free slot, a
dead process's slot taken back at once, never two live holders of one name."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import WatchError

from workers.kernel.lease import ConsumerLease, Holder, LeaseLost, lease_key

STREAM = "notify:delivery"
GROUP = "notify-workers"


def _lease(redis: Any, holder: Holder, *, alive: bool = True, seconds: float = 10) -> ConsumerLease:
    return ConsumerLease(
        redis, STREAM, GROUP, seconds=seconds, holder=holder, alive=lambda pid: alive
    )


async def test_each_process_takes_the_lowest_free_name_and_gives_it_back(redis: Any) -> None:
    first = _lease(redis, Holder("host-a", 100, "n1"))
    second = _lease(redis, Holder("host-a", 101, "n2"))
    assert await first.acquire() == "notify-workers-0"
    assert await second.acquire() == "notify-workers-1"
    await first.release()
    assert await redis.get(lease_key(STREAM, "notify-workers-0")) is None
    third = _lease(redis, Holder("host-b", 7, "n3"))
    assert await third.acquire() == "notify-workers-0"


async def test_a_dead_process_of_this_host_gives_its_name_back_at_once(redis: Any) -> None:
    crashed = _lease(redis, Holder("host-a", 100, "old"))
    assert await crashed.acquire() == "notify-workers-0"
    # Restarted on the same host: the old pid is gone, its lease has not expired yet.
    restarted = _lease(redis, Holder("host-a", 200, "new"), alive=False)
    assert await restarted.acquire() == "notify-workers-0"
    with pytest.raises(LeaseLost):
        await crashed.renew()
    await restarted.renew()


async def test_a_restarted_container_with_the_same_pid_takes_its_name_back(redis: Any) -> None:
    before = _lease(redis, Holder("pod-7", 1, "before"))
    assert await before.acquire() == "notify-workers-0"
    after = _lease(redis, Holder("pod-7", 1, "after"))  # pid 1 again, alive: it is us
    assert await after.acquire() == "notify-workers-0"


async def test_a_live_holder_or_another_hosts_holder_keeps_its_name(redis: Any) -> None:
    holder = _lease(redis, Holder("host-a", 100, "n1"))
    assert await holder.acquire() == "notify-workers-0"
    same_host_alive = _lease(redis, Holder("host-a", 101, "n2"), alive=True)
    other_host = _lease(redis, Holder("host-b", 100, "n3"), alive=False)
    assert await same_host_alive.acquire() == "notify-workers-1"
    assert await other_host.acquire() == "notify-workers-2"
    await holder.renew()


async def test_ten_racing_starts_get_ten_names(redis: Any) -> None:
    leases = [_lease(redis, Holder("host-a", 1000 + i, f"n{i}")) for i in range(10)]
    names = await asyncio.gather(*(lease.acquire() for lease in leases))
    assert sorted(names) == sorted(f"notify-workers-{i}" for i in range(10))
    for lease in leases:
        await lease.renew()


async def test_a_lapsed_lease_is_taken_again_unless_someone_else_holds_it(redis: Any) -> None:
    mine = _lease(redis, Holder("host-a", 100, "n1"))
    name = await mine.acquire()
    await redis.delete(lease_key(STREAM, name))  # lapsed (e.g. a Valkey restart)
    await mine.renew()
    assert await redis.get(lease_key(STREAM, name)) == Holder("host-a", 100, "n1").token
    await redis.set(lease_key(STREAM, name), b"host-b/5/other")
    with pytest.raises(LeaseLost):
        await mine.renew()
    await mine.release()  # not ours any more: left alone
    assert await redis.get(lease_key(STREAM, name)) == b"host-b/5/other"


async def test_the_lease_expires_with_its_time(redis: Any) -> None:
    lease = _lease(redis, Holder("host-a", 100, "n1"), seconds=30)
    name = await lease.acquire()
    ttl = await redis.pttl(lease_key(STREAM, name))
    assert 0 < ttl <= 30_000


class _InterruptedWatch:
    """A client whose next ``WATCH`` transactions fail the way redis-py reports a connection
    lost while a key is watched (a Valkey restart, a cluster failover): WatchError."""

    def __init__(self, redis: Any, interruptions: int) -> None:
        self._redis = redis
        self.interruptions = interruptions

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    def pipeline(self, transaction: bool = True) -> Any:
        pipe = self._redis.pipeline(transaction=transaction)
        if self.interruptions:
            self.interruptions -= 1

            async def interrupted(*keys: Any) -> None:
                raise WatchError("An error occurred while watching keys")

            pipe.watch = interrupted
        return pipe


async def test_a_renewal_interrupted_by_a_failover_keeps_the_lease(redis: Any) -> None:
    client = _InterruptedWatch(redis, interruptions=0)
    lease = _lease(client, Holder("host-a", 100, "n1"), seconds=10)
    name = await lease.acquire()
    key = lease_key(STREAM, name)
    await redis.pexpire(key, 2000)
    client.interruptions = 2
    await lease.renew()  # not LeaseLost: the lease still holds this process's token
    assert client.interruptions == 0
    assert await redis.pttl(key) > 2000
    assert await redis.get(key) == Holder("host-a", 100, "n1").token
