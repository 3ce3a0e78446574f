"""What every ``fleet`` command shares: settings, output, errors, exit codes and the
event loop. The worker packages' commands (``fleet tte``, ``fleet vex``,
``fleet snapshots``) and the root command (:mod:`workers.cli`) all use these, so the
helpers sit below both (``docs/architecture.md``).

Output: tables and progress on :data:`out` / :data:`err` (rich), machine-readable output
through :func:`echo_json` only. Errors: :func:`fail` prints one ``error: …`` line and
returns the :class:`typer.Exit` to raise; :func:`run_async` turns what a command's
coroutine raises into such a line with the exit code of its kind
(:class:`~workers.errors.ExitCode`, README's table).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

import asyncpg
import msgspec
import redis.exceptions as redis_exc
import typer
from rich.console import Console

from workers.errors import ConfigError, ExitCode, FleetError, first_line
from workers.settings import Settings, load_settings

T = TypeVar("T")

out = Console()
err = Console(stderr=True)


class CliError(FleetError):
    """A one-line error for the user; the command failed (:attr:`ExitCode.FAILED`)."""


def fail(message: str, code: int = ExitCode.FAILED) -> typer.Exit:
    """Print ``error: message`` on stderr; the caller raises the returned exit."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def settings() -> Settings:
    """The ``FLEET_*`` settings, as the workers read them."""
    return load_settings()


def echo_json(value: object, *, indent: int = 2) -> None:
    """The one machine-readable output: ``value`` as JSON on stdout (``--json``)."""
    encoded = msgspec.json.encode(value)
    if indent:
        encoded = msgspec.json.format(encoded, indent=indent)
    typer.echo(encoded.decode())


def run_event_loop(
    main: Coroutine[Any, Any, T], kind: Literal["uvloop", "asyncio"] = "uvloop"
) -> T:
    """Run ``main`` to completion on a new event loop: uvloop when asked for and
    installed (its transports and scheduling cost the consumer about a tenth less CPU
    per event than the standard loop's), else asyncio's."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def run_async(
    factory: Callable[[], Coroutine[Any, Any, T]],
    event_loop: Literal["uvloop", "asyncio"] = "asyncio",
) -> T:
    """Run a command's coroutine; what it raises on purpose becomes one ``error:`` line.

    Servers that cannot be used arrive here already mapped by
    :func:`workers.clients.clients` (a :class:`ConfigError` with its exit code); a
    statement or command the server refused is reported as it is, exit code 1."""
    try:
        return run_event_loop(factory(), event_loop)
    except ConfigError as exc:
        raise fail(str(exc), exc.exit_code) from None
    except FleetError as exc:
        raise fail(str(exc)) from None
    except redis_exc.RedisError as exc:
        raise fail(f"Valkey refused the command: {first_line(exc)}") from None
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise fail(f"PostgreSQL: {first_line(exc)}") from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
