"""Shared pieces of ``fleet snapshots``: options, argument checks and running one
operation with open clients (docs/snapshots.md).

Each command opens its own PostgreSQL pool (and an S3 client only when it touches
payloads), reads the same ``FLEET_*`` settings as the workers, and ends with one
``error: ...`` line and a non-zero exit on failure.
"""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer

from workers.clients import clients
from workers.errors import ExitCode
from workers.logs import configure_logging
from workers.settings import Settings
from workers.shell import fail, run_async, settings
from workers.snapshot_retention.ids import validate_tool
from workers.snapshot_retention.service import Snapshots

T = TypeVar("T")

EXIT_USAGE = ExitCode.USAGE


def default_actor() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in minimal containers
        return "cli"


ToolOpt = Annotated[str, typer.Option("--tool", "-t", help="Tool name, e.g. syft.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
NowOpt = Annotated[
    str | None,
    typer.Option("--now", help="Evaluate at this RFC 3339 instant instead of the clock."),
]
ActorOpt = Annotated[
    str | None,
    typer.Option("--actor", help="Who to record in the audit trail (default: your login)."),
]


def instant_arg(value: str | None, option: str = "--now") -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"{option} {value!r} is not an RFC 3339 timestamp", EXIT_USAGE) from None
    if parsed.tzinfo is None:
        raise fail(f"{option} {value!r} needs a UTC offset (e.g. 2025-12-04T00:00:00Z)", EXIT_USAGE)
    return parsed.astimezone(UTC)


def tool_arg(value: str) -> str:
    try:
        return validate_tool(value)
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None


@contextlib.asynccontextmanager
async def open_snapshots(cfg: Settings, *, s3: bool) -> AsyncIterator[Snapshots]:
    async with clients(cfg, need=("postgres", "s3") if s3 else ("postgres",)) as opened:
        yield Snapshots(cfg, opened.pool, opened.s3 if s3 else None)


def run_op(work: Callable[[Snapshots], Coroutine[Any, Any, T]], *, s3: bool = False) -> T:
    """Run ``work`` with open clients; database errors become one line too."""
    cfg = settings()
    # The command prints its own outcome (and the audit trail records it); log lines would
    # only repeat it, so they appear when debugging.
    configure_logging("debug" if cfg.log_level == "debug" else "critical", cfg.log_format)

    async def go() -> T:
        async with open_snapshots(cfg, s3=s3) as snapshots:
            return await work(snapshots)

    return run_async(go)
