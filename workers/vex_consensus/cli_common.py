"""What the ``fleet vex`` command modules share: a pool for one command, publishing
the outbox after a change, and the ``--json`` option."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

import asyncpg
import typer

from workers.clients import clients
from workers.errors import ConfigError, first_line
from workers.logs import configure_logging
from workers.publishing import PUBLISH_FAILURES
from workers.shell import run_async, settings
from workers.vex_consensus import outbox

T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def run_with_pool(work: Callable[[asyncpg.Pool], Coroutine[Any, Any, T]]) -> T:
    """Run ``work`` with a pool from :func:`workers.clients.clients` (its one-line errors)."""
    cfg = settings()
    # The command prints its own outcome; log lines would repeat it, except when debugging.
    configure_logging("debug" if cfg.log_level == "debug" else "critical", cfg.log_format)

    async def go() -> T:
        async with clients(cfg, need=("postgres",)) as opened:
            return await work(opened.pool)

    return run_async(go)


async def publish_pending(pool: asyncpg.Pool) -> tuple[int, str | None]:
    """Publish the outbox; (events published, why publishing was deferred or None)."""
    try:
        cfg = settings()
        async with clients(cfg, need=("valkey",)) as opened:
            published = await outbox.publish(
                pool,
                opened.redis,
                partitions=cfg.stream_partitions,
                replicas=cfg.publish_replicas,
            )
            return published, None
    except ConfigError as exc:
        return 0, str(exc)
    except PUBLISH_FAILURES as exc:
        return 0, f"Valkey: {first_line(exc)}"


def published_line(published: int, deferred: str | None, pending: int) -> str:
    if deferred is None:
        return f"published {published} event(s) to {outbox.CONSENSUS_STREAM}"
    return (
        f"warning: {deferred}; {pending} event(s) wait in vex.consensus_outbox for a "
        "running vex-consensus worker"
    )
