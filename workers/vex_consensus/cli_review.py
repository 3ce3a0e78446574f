"""``fleet vex conflicts list|resolve``: work the consensus review queue."""

from __future__ import annotations

import uuid
from typing import Annotated

import asyncpg
import typer
from rich.table import Table

from contracts.vex import VexStatus
from workers.errors import ExitCode
from workers.shell import CliError, echo_json, fail, out
from workers.vex_consensus import outbox, review, service
from workers.vex_consensus.cli_common import JsonOpt, publish_pending, published_line, run_with_pool
from workers.vex_consensus.consensus import STATUSES

review_app = typer.Typer(
    help="The review queue: conflicts whose deciding level disagrees.", no_args_is_help=True
)


@review_app.command("list")
def conflicts_list(
    include_closed: Annotated[
        bool, typer.Option("--all", help="Closed conflicts too, with who closed them and why.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Open conflicts, oldest first."""

    async def work(pool: asyncpg.Pool) -> list[review.Conflict]:
        async with pool.acquire() as conn:
            return await review.list_conflicts(conn, include_closed=include_closed, limit=limit)

    rows = run_with_pool(work)
    if as_json:
        echo_json([review.as_json(r) for r in rows])
        return
    table = Table(title="VEX conflicts" + (" (all)" if include_closed else " (open)"))
    for column in ("conflict", "purl", "vulnerability", "statuses", "detected", "resolution"):
        table.add_column(column, overflow="fold")
    for r in rows:
        resolution = "-"
        if r.resolved_at is not None:
            resolution = f"{r.resolution}" + (
                f" by {r.resolved_by}: {r.resolution_note}" if r.resolved_by else ""
            )
            if r.decided_status:
                resolution += f" → {r.decided_status}"
        table.add_row(
            str(r.conflict_id),
            r.component_purl,
            r.vulnerability_id,
            ", ".join(r.statuses),
            f"{r.detected_at:%Y-%m-%d %H:%M}",
            resolution,
        )
    out.print(table)
    if not rows:
        out.print("no conflicts" if include_closed else "no open conflicts")


@review_app.command("resolve")
def conflicts_resolve(
    conflict_id: Annotated[str, typer.Argument(help="Conflict id (from `conflicts list`).")],
    by: Annotated[str, typer.Option("--by", help="Who resolves it (recorded).")],
    why: Annotated[str, typer.Option("--why", help="Why (recorded).")],
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="The decided status; stored as a review statement and input to recomputes.",
        ),
    ] = None,
) -> None:
    """Close a conflict, recording who and why; with --status, decide the pair."""
    try:
        ident = uuid.UUID(conflict_id)
    except ValueError:
        raise fail(f"CONFLICT {conflict_id!r} is not a UUID", ExitCode.USAGE) from None
    if not by.strip() or not why.strip():
        raise fail("--by and --why must not be blank", ExitCode.USAGE)
    if status is not None and status not in STATUSES:
        raise fail(f"--status {status!r} is not one of {', '.join(STATUSES)}", ExitCode.USAGE)
    decided: VexStatus | None = status

    async def work(
        pool: asyncpg.Pool,
    ) -> tuple[review.Conflict, service.RecomputeReport | None, str]:
        try:
            async with pool.acquire() as conn, conn.transaction():
                closed, report = await review.resolve(
                    conn, ident, by=by.strip(), why=why.strip(), status=decided
                )
        except review.ResolveError as exc:
            raise CliError(str(exc)) from None
        if report is not None:
            report.observe()
        published, deferred = await publish_pending(pool)
        async with pool.acquire() as conn:
            pending = await outbox.size(conn)
        return closed, report, published_line(published, deferred, pending)

    closed, report, published = run_with_pool(work)
    decided_text = (
        f"; decided {closed.decided_status}: recomputed {report.pairs} pair(s), "
        f"{report.changed} changed; {published}"
        if report is not None
        else ""
    )
    out.print(
        f"conflict {closed.conflict_id} ({closed.component_purl} / {closed.vulnerability_id}) "
        f"resolved by {closed.resolved_by}: {closed.resolution_note}{decided_text}",
        highlight=False,
        soft_wrap=True,
    )
