"""PostgreSQL access: pools, transient-error classification, and migrations.

Migrations are ordered ``schema/NNNN_name.sql`` files, each applied in one
transaction and recorded in ``schema_migrations(version, description,
applied_at, checksum)``. A migration whose data change needs Python runs that step
(the ``steps`` the caller passes: ``workers.app.migration_steps``) after its SQL, in the
same transaction. A
session-level advisory lock makes concurrent ``fleet migrate`` runs apply each file
once. A changed checksum of an applied file is refused.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import asyncpg.exceptions as pgexc
import asyncpg.pool
import msgspec
import structlog

from workers import metrics, netio
from workers.errors import ConfigError, ExitCode, FleetError, Unavailable, first_line
from workers.settings import Settings, redact_url

log = structlog.get_logger("workers.db")

DbConn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
"""A plain connection or one borrowed from a pool: both run queries the same way."""

MIGRATION_LOCK_KEY = 0x5F1EE7_0001  # arbitrary, fixed: one lock per database for migrations


class Failure(enum.Enum):
    """What a failed database call says about trying again."""

    OUTAGE = "outage"
    """The server is unreachable or going away (refused, lost, shutting down, starting
    up): wait and try again for as long as it takes; the event is not at fault."""
    CONTENTION = "contention"
    """Serialization failure, deadlock, lock or statement timeout: worth a few more tries
    within a budget; an event that keeps hitting it is released for redelivery."""
    REJECTED = "rejected"
    """A data exception (SQLSTATE class 22) or integrity constraint violation (23): the
    same statement with the same event can never succeed."""
    OTHER = "other"
    """Anything else: not retried in process; redelivered up to ``max_deliveries``."""


_OUTAGE_SQLSTATES = frozenset(
    {
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now
        "53300",  # too_many_connections
    }
)
_CONTENTION_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
        "57014",  # query_canceled (statement timeout)
    }
)


def classify(exc: BaseException) -> Failure:
    """Sort a failure of a database call into a :class:`Failure`."""
    if isinstance(exc, pgexc.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        if sqlstate in _OUTAGE_SQLSTATES or sqlstate.startswith("08"):
            return Failure.OUTAGE
        if sqlstate in _CONTENTION_SQLSTATES:
            return Failure.CONTENTION
        if sqlstate[:2] in ("22", "23"):
            return Failure.REJECTED
        return Failure.OTHER
    if isinstance(exc, Unavailable):
        return Failure.OUTAGE
    if isinstance(exc, TimeoutError):
        # The driver's own timeout, a moment past the server's statement timeout: the
        # server did not even report its timeout, so the connection is silent (a
        # partition, a peer that vanished) and is not to be trusted again.
        return Failure.OUTAGE
    if isinstance(
        exc,
        (
            ConnectionError,
            OSError,
            pgexc.InterfaceError,
            pgexc.ConnectionDoesNotExistError,
        ),
    ):
        return Failure.OUTAGE
    return Failure.OTHER


def sqlstate_of(exc: BaseException) -> str | None:
    value = getattr(exc, "sqlstate", None)
    return value if isinstance(value, str) else None


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=_json_dumps, decoder=_json_loads, schema="pg_catalog", format="text"
    )
    await conn.set_type_codec(
        "json", encoder=_json_dumps, decoder=_json_loads, schema="pg_catalog", format="text"
    )


def _pool_init(max_size: int) -> Callable[[asyncpg.Connection], Coroutine[Any, Any, None]]:
    """A pool's ``init``: keepalive and the user timeout on each new connection (see
    :mod:`workers.netio`), and every connection opened beyond the pool's size counted as
    one that replaced a lost or silent connection (idle connections are not recycled, so
    nothing else opens one)."""
    opened = 0

    async def init(conn: asyncpg.Connection) -> None:
        nonlocal opened
        opened += 1
        transport = getattr(conn, "_transport", None)  # asyncpg keeps its transport private
        if transport is not None:
            netio.tune(transport.get_extra_info("socket"))
        if opened > max_size:
            metrics.CONNECTION_REPLACED.labels("postgres").inc()
            log.warning("postgres.connection_replaced")
        await _init_connection(conn)

    return init


_array_encoder = msgspec.json.Encoder()
# JSON's list brackets become an array literal's braces; quotes are dropped (see below).
_TO_ARRAY_LITERAL = bytes.maketrans(b"[]", b"{}")


def array_literal(values: Sequence[object]) -> str:
    """A PostgreSQL array literal of ``values`` (``{1,NULL,2026-11-01T00:00:00Z}``) for
    values whose JSON text needs no quoting in one: numbers, booleans, RFC 3339
    timestamps, the contracts' enumerated names. msgspec writes the JSON list; its
    brackets become braces, its quotes are dropped and ``null`` reads as NULL.

    Workers send such columns as text (``$n::text::int[]``) because the driver's binary
    encoding costs more per element (a type check per value, and date arithmetic for a
    timestamp) than the server's parsing of such short values."""
    return _array_encoder.encode(values).translate(_TO_ARRAY_LITERAL, b'"').decode()


def _json_dumps(value: Any) -> str:
    import msgspec

    return msgspec.json.encode(value).decode()


def _json_loads(value: str) -> Any:
    import msgspec

    return msgspec.json.decode(value)


async def create_pool(settings: Settings, *, max_size: int = 4) -> asyncpg.Pool:
    """Open a pool or fail with one line naming the database (password redacted).

    Every statement on it is bounded by ``FLEET_DB_STATEMENT_TIMEOUT_MS`` on the server
    (``statement_timeout``, SQLSTATE 57014 when hit), and by the driver a second later:
    a connection that has not answered by then is silent, and is replaced."""
    timeout_ms = settings.db_statement_timeout_ms
    try:
        pool = await asyncpg.create_pool(
            settings.database_url,
            min_size=1,
            max_size=max_size,
            init=_pool_init(max_size),
            max_inactive_connection_lifetime=0,
            timeout=10,
            command_timeout=timeout_ms / 1000 + 1,
            server_settings={"statement_timeout": str(timeout_ms)},
        )
    except (
        OSError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        TimeoutError,
        ValueError,
    ) as exc:
        raise ConfigError(
            f"cannot connect to PostgreSQL at {redact_url(settings.database_url)}: "
            f"{_one_line(exc, settings.database_url)}",
            ExitCode.POSTGRES,
        ) from None
    assert pool is not None
    return pool


def _one_line(exc: BaseException, secret_url: str | None = None) -> str:
    text = first_line(exc)
    if secret_url:
        text = text.replace(secret_url, redact_url(secret_url))
    return text


# ---------------------------------------------------------------- migrations

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(FleetError):
    pass


DataStep = Callable[["DbConn"], Awaitable[str]]
"""A migration's Python step: rewrites rows the SQL cannot; returns a summary line."""


def schema_dir(settings: Settings | None = None) -> Path:
    if settings is not None and settings.schema_dir:
        return Path(settings.schema_dir)
    return Path(__file__).resolve().parent.parent / "schema"


def load_migrations(directory: Path) -> list[Migration]:
    if not directory.is_dir():
        raise MigrationError(f"migrations folder {directory} does not exist")
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        found.append(
            Migration(
                version=int(match.group(1)),
                description=match.group(2).replace("_", " "),
                path=path,
                sql=path.read_text(encoding="utf-8"),
            )
        )
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS public.schema_migrations (
    version     INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    checksum    VARCHAR(64) NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class MigrationPlan:
    applied: list[int]
    pending: list[Migration]


async def _plan(conn: DbConn, migrations: list[Migration]) -> MigrationPlan:
    rows = await conn.fetch("SELECT version, checksum FROM public.schema_migrations")
    applied = {r["version"]: r["checksum"] for r in rows}
    for m in migrations:
        if m.version in applied and applied[m.version] != m.checksum:
            raise MigrationError(
                f"migration {m.path.name} was changed after it was applied "
                f"(checksum {applied[m.version][:12]}… in the database, {m.checksum[:12]}… "
                "on disk); add a new migration instead of editing an applied one"
            )
    known = {m.version for m in migrations}
    unknown = sorted(set(applied) - known)
    if unknown:
        raise MigrationError(
            f"the database has migrations this build does not know: {unknown}; run a newer build"
        )
    return MigrationPlan(
        applied=sorted(applied), pending=[m for m in migrations if m.version not in applied]
    )


async def migrate(
    conn: DbConn,
    migrations: list[Migration],
    *,
    check_only: bool = False,
    on_applied: Callable[[Migration], None] | None = None,
    steps: Mapping[int, DataStep],
) -> MigrationPlan:
    """Apply pending migrations under an advisory lock; with ``check_only`` apply nothing.

    ``steps`` (migration version -> Python step) run after their migration's SQL, in the
    same transaction; a caller that applies this project's migrations passes
    ``workers.app.migration_steps()``."""
    python_steps = steps
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    # A migration may rewrite a large table: the workers' statement timeout is not for it.
    await conn.execute("SET statement_timeout = 0")
    try:
        await conn.execute(_MIGRATIONS_TABLE)
        plan = await _plan(conn, migrations)
        if check_only:
            return plan
        for m in plan.pending:
            async with conn.transaction():
                await conn.execute(m.sql)
                step = python_steps.get(m.version)
                if step is not None:
                    summary = await step(conn)
                    log.info("migration.step", version=m.version, summary=summary)
                await conn.execute(
                    "INSERT INTO public.schema_migrations (version, description, checksum) "
                    "VALUES ($1, $2, $3)",
                    m.version,
                    m.description,
                    m.checksum,
                )
            log.info("migration.applied", version=m.version, description=m.description)
            if on_applied is not None:
                on_applied(m)
        return plan
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def require_migrated(conn: DbConn, migrations: list[Migration], where: str) -> None:
    """Refuse to start on a database that lacks migrations this build needs (one line,
    :attr:`ExitCode.UNMIGRATED`). Reads only; takes no lock."""
    if not await table_exists(conn, "public.schema_migrations"):
        missing = [m.path.name for m in migrations]
    else:
        try:
            plan = await _plan(conn, migrations)
        except MigrationError as exc:
            raise ConfigError(f"the database at {where}: {exc}", ExitCode.UNMIGRATED) from None
        missing = [m.path.name for m in plan.pending]
    if missing:
        shown = ", ".join(missing[:3]) + (" …" if len(missing) > 3 else "")
        raise ConfigError(
            f"the database at {where} is not migrated ({len(missing)} pending: {shown}); "
            "run `fleet migrate` first",
            ExitCode.UNMIGRATED,
        )


async def table_exists(conn: DbConn, qualified: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", qualified))
