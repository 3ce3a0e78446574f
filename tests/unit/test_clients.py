"""The one error mapping of ``clients()``: each kind of unavailable server becomes one
line that names the server (password redacted) and what to do, with its exit code."""

from __future__ import annotations

import asyncpg
import pytest
import redis.exceptions as redis_exc

from workers.clients import WHAT_TO_DO, clients, dependency_error
from workers.errors import ConfigError, ExitCode
from workers.s3 import S3Error
from workers.settings import load_settings

SETTINGS = load_settings(
    {
        "FLEET_VALKEY_URL": "redis://fleet:valkey-secret@valkey.example:6379/0",
        "FLEET_DATABASE_URL": "postgresql://fleet:pg-secret@db.example:5432/fleet",
    }
)

CASES = [
    (redis_exc.ConnectionError("Connection refused"), ExitCode.VALKEY, "valkey.example"),
    (redis_exc.TimeoutError("Timeout reading"), ExitCode.VALKEY, "valkey.example"),
    (redis_exc.AuthenticationError("WRONGPASS"), ExitCode.VALKEY, "refused the credentials"),
    (
        asyncpg.UndefinedTableError('relation "vex.consensus" does not exist'),
        ExitCode.UNMIGRATED,
        "not migrated",
    ),
    (
        asyncpg.InvalidSchemaNameError('schema "scanner" does not exist'),
        ExitCode.UNMIGRATED,
        "db.example",
    ),
    (asyncpg.AdminShutdownError("terminating connection"), ExitCode.POSTGRES, "db.example"),
    (ConnectionRefusedError(111, "Connection refused"), ExitCode.POSTGRES, "db.example"),
    (asyncpg.InterfaceError("connection is closed"), ExitCode.POSTGRES, "db.example"),
    (S3Error("S3 at http://s3.example is not usable: NoSuchBucket"), ExitCode.S3, "s3.example"),
    (
        ConfigError(
            "cannot reach Valkey at redis://valkey.example:6379/0: refused", ExitCode.VALKEY
        ),
        ExitCode.VALKEY,
        "cannot reach Valkey",
    ),
]


@pytest.mark.parametrize(("exc", "code", "named"), CASES, ids=lambda v: type(v).__name__)
def test_an_unavailable_server_is_one_line_naming_what_to_do(
    exc: BaseException, code: ExitCode, named: str
) -> None:
    mapped = dependency_error(exc, SETTINGS)
    assert mapped is not None
    line = str(mapped)
    assert mapped.exit_code == code
    assert "\n" not in line
    assert named in line
    assert line.endswith(WHAT_TO_DO[code])
    assert "secret" not in line


def test_what_to_do_is_said_once() -> None:
    already = ConfigError(
        "the database is not migrated; run `fleet migrate` first", ExitCode.UNMIGRATED
    )
    mapped = dependency_error(already, SETTINGS)
    assert mapped is not None and str(mapped).count("fleet migrate") == 1


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.UniqueViolationError("duplicate key"),  # a refused statement
        redis_exc.ResponseError("NOGROUP No such key"),  # a refused command
        ValueError("a bug"),
    ],
    ids=lambda v: type(v).__name__,
)
def test_errors_that_are_not_about_availability_are_left_to_the_command(
    exc: BaseException,
) -> None:
    assert dependency_error(exc, SETTINGS) is None


async def test_a_client_that_was_not_asked_for_is_a_bug_not_a_none() -> None:
    async with clients(SETTINGS, need=()) as opened:
        with pytest.raises(RuntimeError, match="Valkey was not among"):
            _ = opened.redis
        with pytest.raises(RuntimeError, match="PostgreSQL was not among"):
            _ = opened.pool


async def test_an_unknown_need_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown clients"):
        async with clients(SETTINGS, need=("kafka",)):
            pass
