"""``fleet dlq``: inspect, replay and purge dead-letter streams."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from workers import streams
from workers.cli.options import check_stream
from workers.clients import clients
from workers.errors import ExitCode
from workers.shell import fail, out, run_async, settings

app = typer.Typer(help="Inspect, replay and purge dead-letter streams.", no_args_is_help=True)


@app.command("list")
def dlq_list(
    stream: Annotated[str, typer.Argument(help="The source stream, e.g. notify:delivery.")],
    count: Annotated[int, typer.Option(min=1, help="Entries to show.")] = 20,
    reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
) -> None:
    """Show dead letters with their reason, error and delivery count."""
    check_stream(stream)
    cfg = settings()

    async def go() -> list[streams.DlqEntry]:
        async with clients(cfg, need=("valkey",)) as opened:
            client = opened.redis
            return await streams.dlq_entries(client, stream, count=count, reason=reason)

    rows = run_async(go)
    table = Table(title=f"{streams.dlq_name(stream)} ({len(rows)} shown)")
    for column in ("id", "type", "reason", "deliveries", "error"):
        table.add_column(column)
    for d in rows:
        f = d.fields
        table.add_row(
            d.id,
            f.get("type", b"-").decode(errors="replace")[:40],
            d.reason,
            f.get("dlq.deliveries", b"?").decode(),
            f.get("dlq.error", b"").decode(errors="replace")[:120],
        )
    out.print(table)


@app.command("replay")
def dlq_replay(
    stream: Annotated[str, typer.Argument(help="The source stream.")],
    ids: Annotated[list[str] | None, typer.Argument(help="Dead-letter ids (default: all).")] = None,
    reason: Annotated[str | None, typer.Option(help="Only entries with this reason.")] = None,
) -> None:
    """Put dead letters back on their stream (atomically moved, never duplicated)."""
    check_stream(stream)
    cfg = settings()

    async def go() -> int:
        async with clients(cfg, need=("valkey",)) as opened:
            client = opened.redis
            return await streams.dlq_replay(client, stream, ids or None, reason=reason)

    out.print(f"replayed {run_async(go)} entr(y/ies) onto {stream}")


@app.command("purge")
def dlq_purge(
    stream: Annotated[str, typer.Argument(help="The source stream.")],
    ids: Annotated[list[str] | None, typer.Argument(help="Dead-letter ids (default: all).")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Required to purge everything.")] = False,
) -> None:
    """Delete dead letters for good."""
    check_stream(stream)
    if not ids and not yes:
        raise fail("purging every dead letter needs --yes", ExitCode.USAGE)
    cfg = settings()

    async def go() -> int:
        async with clients(cfg, need=("valkey",)) as opened:
            client = opened.redis
            return await streams.dlq_purge(client, stream, ids or None)

    out.print(f"purged {run_async(go)} dead letter(s) from {streams.dlq_name(stream)}")
