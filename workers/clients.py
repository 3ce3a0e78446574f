"""The one way a process opens its clients: ``async with clients(settings, need=...)``.

``fleet run``, every ``fleet`` subcommand and the dev kit's demo open Valkey, PostgreSQL
and S3 here, and only here. A server that cannot be used ends the process with one line
naming the server, the setting and what to do, and the exit code of its kind
(:class:`~workers.errors.ExitCode`, listed in README and ``docs/operations.md``):

- Valkey unreachable or refusing the credentials: :attr:`ExitCode.VALKEY`;
- PostgreSQL unreachable or refusing the connection: :attr:`ExitCode.POSTGRES`;
- the database lacks migrations or tables this build needs: :attr:`ExitCode.UNMIGRATED`;
- S3 unreachable or refusing the credentials: :attr:`ExitCode.S3`.

:func:`dependency_error` is that mapping; :func:`clients` applies it to the opening of the
clients and to whatever the block raises.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
import redis.asyncio as aioredis
import redis.exceptions as redis_exc

from workers.cluster import open_client
from workers.db import (
    Failure,
    classify,
    create_pool,
    load_migrations,
    require_migrated,
    schema_dir,
)
from workers.errors import ConfigError, ExitCode, error_text, first_line
from workers.kernel.worker import Resources
from workers.s3 import S3Error, open_s3
from workers.settings import Settings, redact_url

Need = Literal["valkey", "postgres", "s3"]
ALL: tuple[Need, ...] = ("valkey", "postgres", "s3")


WHAT_TO_DO: dict[ExitCode, str] = {
    ExitCode.VALKEY: "check that Valkey runs and FLEET_VALKEY_URL (address, user, password)",
    ExitCode.POSTGRES: "check that PostgreSQL runs and FLEET_DATABASE_URL",
    ExitCode.UNMIGRATED: "run `fleet migrate` first",
    ExitCode.S3: "check FLEET_S3_ENDPOINT_URL, FLEET_S3_BUCKET and the AWS credentials",
}
"""What the one line tells the reader to do, per kind of unavailable server."""


def _line(message: str, code: ExitCode) -> ConfigError:
    """``message``, ending with what to do unless it already says so."""
    hint = WHAT_TO_DO.get(code)
    if hint is not None and hint not in message:
        message = f"{message}; {hint}"
    return ConfigError(message, code)


def dependency_error(exc: BaseException, settings: Settings) -> ConfigError | None:
    """The one-line error for a server that cannot be used, or None when ``exc`` is not
    about the server being unavailable (a refused statement, a missing object: the
    command reports those itself). A :class:`ConfigError` already naming a server (from
    :func:`workers.streams.ping`, :func:`workers.db.create_pool`, the migration check)
    keeps its words and gains what to do."""
    if isinstance(exc, ConfigError):
        return _line(str(exc), exc.exit_code)
    valkey = redact_url(settings.valkey_url)
    database = redact_url(settings.database_url)
    if isinstance(exc, redis_exc.AuthenticationError):
        return _line(
            f"Valkey at {valkey} refused the credentials ({first_line(exc)})", ExitCode.VALKEY
        )
    if isinstance(exc, redis_exc.ConnectionError | redis_exc.TimeoutError):
        return _line(f"cannot reach Valkey at {valkey} ({first_line(exc)})", ExitCode.VALKEY)
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.InvalidSchemaNameError):
        return _line(
            f"the database at {database} is not migrated ({first_line(exc)})",
            ExitCode.UNMIGRATED,
        )
    if isinstance(exc, asyncpg.InterfaceError | OSError) or (
        isinstance(exc, asyncpg.PostgresError) and classify(exc) is Failure.OUTAGE
    ):
        return _line(f"lost PostgreSQL at {database} ({first_line(exc)})", ExitCode.POSTGRES)
    if isinstance(exc, S3Error):
        return _line(first_line(exc), ExitCode.S3)
    return None


@dataclass(slots=True)
class Clients:
    """The clients one process opened; asking for one that was not opened is a bug."""

    settings: Settings
    opened: frozenset[str]
    _redis: aioredis.Redis | None = None
    _pool: asyncpg.Pool | None = None
    _s3: Any = None

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError("Valkey was not among clients(need=...)")
        return self._redis

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("PostgreSQL was not among clients(need=...)")
        return self._pool

    @property
    def s3(self) -> Any:
        """An aioboto3 S3 client with the bucket ensured."""
        if self._s3 is None:
            raise RuntimeError("S3 was not among clients(need=...)")
        return self._s3

    def resources(self) -> Resources:
        """What the workers are given: the same clients, shared by every worker."""
        return Resources(settings=self.settings, redis=self.redis, pool=self._pool, s3=self._s3)


@contextlib.asynccontextmanager
async def clients(
    settings: Settings,
    *,
    need: Collection[str] = ("valkey", "postgres"),
    migrated: bool = True,
    pool_size: int = 2,
) -> AsyncIterator[Clients]:
    """Open the clients in ``need`` (Valkey pinged, then PostgreSQL, then S3 with its
    bucket ensured), check that the database is migrated (unless ``migrated=False``,
    for ``fleet migrate``), yield them, and close them in reverse order.

    Any failure to use a server, while opening or inside the block, is re-raised as the
    one-line :class:`ConfigError` of :func:`dependency_error`."""
    unknown = set(need) - set(ALL)
    if unknown:
        raise ValueError(f"unknown clients {sorted(unknown)} (known: {', '.join(ALL)})")
    opened = Clients(settings, frozenset(need))
    async with contextlib.AsyncExitStack() as stack:
        try:
            if "valkey" in need:
                opened._redis = await open_client(settings)
                stack.push_async_callback(opened._redis.aclose)
            if "postgres" in need:
                opened._pool = await create_pool(settings, max_size=pool_size)
                stack.push_async_callback(opened._pool.close)
                if migrated:
                    await check_migrated(opened._pool, settings)
            if "s3" in need:
                opened._s3 = await stack.enter_async_context(open_s3(settings))
        except (ConfigError, S3Error) as exc:
            raise _mapped(exc, settings) from None
        try:
            yield opened
        except (redis_exc.RedisError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # A server lost while in use: the same one line as when it is missing at the
            # start. Anything else (a refused statement, a NOGROUP) is the command's own.
            mapped = dependency_error(exc, settings)
            if mapped is None:
                raise
            raise mapped from None


def _mapped(exc: BaseException, settings: Settings) -> ConfigError:
    mapped = dependency_error(exc, settings)
    assert mapped is not None  # the caller catches only kinds that have their line
    return mapped


async def check_migrated(pool: asyncpg.Pool, settings: Settings, attempts: int = 5) -> None:
    """Refuse an unmigrated database (:attr:`ExitCode.UNMIGRATED`); a connection lost
    meanwhile is retried a few times, then reported in one line (:attr:`ExitCode.POSTGRES`)."""
    where = redact_url(settings.database_url)
    for attempt in range(1, attempts + 1):
        try:
            async with pool.acquire() as conn:
                await require_migrated(conn, load_migrations(schema_dir(settings)), where)
            return
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            if classify(exc) is not Failure.OUTAGE or attempt == attempts:
                raise ConfigError(
                    f"PostgreSQL at {where}: {error_text(exc)}", ExitCode.POSTGRES
                ) from None
            await asyncio.sleep(0.2 * 2**attempt)  # backoff before the next attempt
