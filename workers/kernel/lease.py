"""Consumer names by lease: a restarted worker takes its name back and drains its own
pending entries at once.

Unless ``FLEET_CONSUMER_NAME`` is set, a process names its consumer of a group after
the lowest free slot (``notify-workers-0``, ``notify-workers-1``, …). A slot is the key
``<stream>:lease:<name>`` holding the holder's ``host/pid/nonce``, set with ``SET … NX
PX`` and renewed while the process lives (``FLEET_CONSUMER_LEASE_SECONDS``, renewed
every third of it), deleted on a graceful stop. Renewing and releasing compare the
holder first (``WATCH``/``GET``/``MULTI``/``EXEC``), so a process never extends or
deletes a lease it no longer holds.

A slot is free when its key is absent (released, or expired after a crash), or when
its holder was a process of this same host that is no longer running (a worker
restarted in place after a SIGKILL or an OOM kill, a container restarted in its pod):
that process's name, and so its pending list, is taken back at once instead of after
the lease expires. Two live processes never hold the same name; a process that finds
its lease gone stops, so that it restarts under a name of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.exceptions as redis_exc

from workers.errors import ConfigError, ExitCode, error_text
from workers.kernel.stopping import Stopping

MAX_SLOTS = 1000


class LeaseLost(Exception):
    """Another process holds this consumer name now: this one must stop consuming."""


def lease_key(stream: str, name: str) -> str:
    return f"{stream}:lease:{name}"


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process of this host (a zombie is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lease: host name, process id, and a nonce unique to the holding."""

    host: str
    pid: int
    nonce: str

    @classmethod
    def me(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex[:12])

    @property
    def token(self) -> bytes:
        return f"{self.host}/{self.pid}/{self.nonce}".encode()

    @classmethod
    def parse(cls, token: bytes) -> Holder | None:
        host, _, rest = token.decode(errors="replace").rpartition("/")
        host, _, pid = host.rpartition("/")
        return cls(host, int(pid), rest) if pid.isdigit() and host else None


class ConsumerLease:
    """The lease on one consumer name of one group."""

    def __init__(
        self,
        redis: Any,
        stream: str,
        group: str,
        *,
        seconds: float,
        holder: Holder | None = None,
        alive: Callable[[int], bool] = pid_alive,
    ) -> None:
        self._redis = redis
        self._stream = stream
        self._group = group
        self._ms = max(int(seconds * 1000), 1)
        self._holder = holder or Holder.me()
        self._alive = alive
        self.name: str | None = None

    @property
    def renew_every(self) -> float:
        return self._ms / 3000

    async def acquire(self, attempts: int = 8) -> str:
        """``SET <stream>:lease:<group>-<n> holder NX PX ms`` for n = 0, 1, … until one is
        free or was held by a dead process of this host; the consumer name. A connection
        lost meanwhile is retried (``attempts`` times, backing off to about 30 s in all)."""
        for attempt in range(1, attempts):
            try:
                return await self._acquire()
            except (redis_exc.ConnectionError, redis_exc.TimeoutError, OSError):
                await asyncio.sleep(min(0.25 * 2**attempt, 8.0))  # backoff before retrying
        return await self._acquire()

    async def _acquire(self) -> str:
        token = self._holder.token
        try:
            for slot in range(MAX_SLOTS):
                name = f"{self._group}-{slot}"
                key = lease_key(self._stream, name)
                if await self._redis.set(key, token, nx=True, px=self._ms):
                    self.name = name
                    return name
                current = await self._redis.get(key)
                if current is None:  # expired just now: try the slot again
                    if await self._redis.set(key, token, nx=True, px=self._ms):
                        self.name = name
                        return name
                    continue
                if self._left_behind(current) and await self._swap(key, current, token):
                    self.name = name
                    return name
        except redis_exc.ResponseError as exc:
            raise ConfigError(
                f"cannot lease a consumer name on {self._stream} ({error_text(exc)}): grant the "
                f"worker's Valkey user ~{self._stream}:lease:* and +set +get +pexpire +del "
                "+watch +unwatch, or set FLEET_CONSUMER_NAME",
                ExitCode.VALKEY,
            ) from None
        raise ConfigError(
            f"every consumer name of group {self._group} ({MAX_SLOTS}) is leased by a live "
            "process; set FLEET_CONSUMER_NAME",
            ExitCode.VALKEY,
        )

    def _left_behind(self, current: bytes) -> bool:
        """Held by a process of this host that is gone (or by an earlier process with this
        very pid, as in a restarted container)."""
        other = Holder.parse(current)
        me = self._holder
        if other is None or other.host != me.host or other.nonce == me.nonce:
            return False
        return other.pid == me.pid or not self._alive(other.pid)

    async def _swap(self, key: str, expected: bytes, new: bytes | None) -> bool:
        """Replace (``new``) or delete (``None``) the lease, and extend it when ``new`` is
        our own token, only while it still holds ``expected``."""
        async with self._redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                if await pipe.get(key) != expected:
                    await pipe.unwatch()
                    return False
                pipe.multi()
                if new is None:
                    pipe.delete(key)
                elif new == expected:
                    pipe.pexpire(key, self._ms)
                else:
                    pipe.set(key, new, px=self._ms)
                await pipe.execute()
            except redis_exc.WatchError:
                return False
        return True

    async def renew(self) -> None:
        """Extend the lease; :class:`LeaseLost` when another process holds it now."""
        assert self.name is not None
        token = self._holder.token
        key = lease_key(self._stream, self.name)
        for _ in range(3):
            if await self._swap(key, token, token):
                return
            # The check-and-extend failed. redis-py reports a connection lost while a
            # key is watched (a Valkey restart; on a cluster, any error, such as the
            # slot's primary dying) as a changed key: when the lease still holds our
            # token, it is ours; try again.
            if await self._redis.get(key) != token:
                break
        # Lapsed (a long pause, a Valkey restart without persistence): take it again if
        # nobody else has.
        if not await self._redis.set(key, token, nx=True, px=self._ms):
            raise LeaseLost(f"another process holds consumer name {self.name} now")

    async def keep(self, stopping: Stopping, log: Any) -> None:
        """Renew until ``stopping``; a Valkey hiccup is retried at the next renewal (the
        lease outlives two missed ones); :class:`LeaseLost` ends the loop."""
        while not await stopping.sleep(self.renew_every):
            try:
                await self.renew()
            except (redis_exc.ConnectionError, redis_exc.TimeoutError, OSError) as exc:
                log.warning("lease.renew_failed", consumer=self.name, error=error_text(exc))

    async def release(self) -> None:
        """Give the name back (graceful stop): the next process to start takes it."""
        if self.name is None:
            return
        with contextlib.suppress(redis_exc.RedisError, OSError):
            token = self._holder.token
            await self._swap(lease_key(self._stream, self.name), token, None)
        self.name = None
