"""``fleet dlq``: inspect, replay and purge dead-letter streams."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from workers import streams
from workers.cli.options import PartitionOpt, check_stream, keys_for
from workers.clients import clients
from workers.errors import ExitCode
from workers.shell import fail, out, run_async, settings

app = typer.Typer(help="Inspect, replay and purge dead-letter streams.", no_args_is_help=True)


@app.command("list")
def dlq_list(
    stream: Annotated[str, typer.Argument(help="The source stream, e.g. notify:delivery.")],
    count: Annotated[int, typer.Option(min=1, help="Entries to show.")] = 20,
    reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
    partition: PartitionOpt = None,
) -> None:
    """Show dead letters with their reason, error and delivery count (of every partition,
    or of --partition K)."""
    check_stream(stream)
    cfg = settings()
    keys = keys_for(
        stream, cfg.stream_partitions, partition, previous=cfg.stream_partitions_previous
    )

    async def go() -> list[tuple[str, streams.DlqEntry]]:
        found: list[tuple[str, streams.DlqEntry]] = []
        async with clients(cfg, need=("valkey",)) as opened:
            client = opened.redis
            for key in keys:
                left = count - len(found)
                if left <= 0:
                    break
                rows = await streams.dlq_entries(client, key, count=left, reason=reason)
                found.extend((key, d) for d in rows)
        return found

    rows = run_async(go)
    title = ", ".join(streams.dlq_name(k) for k in keys)
    table = Table(title=f"{title} ({len(rows)} shown)")
    several = len(keys) > 1  # partitions: which dead-letter stream each entry is on
    for column in ("dead-letter stream",) * several + ("id", "type", "reason", "deliveries"):
        table.add_column(column)
    table.add_column("error")
    for key, d in rows:
        f = d.fields
        table.add_row(
            *(streams.dlq_name(key),) * several,
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
    partition: PartitionOpt = None,
) -> None:
    """Put dead letters back on their stream (atomically moved, never duplicated); each
    partition's onto that partition (MULTI within its hash slot)."""
    check_stream(stream)
    cfg = settings()
    keys = keys_for(
        stream, cfg.stream_partitions, partition, previous=cfg.stream_partitions_previous
    )
    _ids_need_partition(ids, keys)

    async def go() -> int:
        replayed = 0
        async with clients(cfg, need=("valkey",)) as opened:
            client = opened.redis
            for key in keys:
                replayed += await streams.dlq_replay(client, key, ids or None, reason=reason)
        return replayed

    out.print(f"replayed {run_async(go)} entr(y/ies) onto {stream}")


@app.command("purge")
def dlq_purge(
    stream: Annotated[str, typer.Argument(help="The source stream.")],
    ids: Annotated[list[str] | None, typer.Argument(help="Dead-letter ids (default: all).")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Required to purge everything.")] = False,
    partition: PartitionOpt = None,
) -> None:
    """Delete dead letters for good."""
    check_stream(stream)
    if not ids and not yes:
        raise fail("purging every dead letter needs --yes", ExitCode.USAGE)
    cfg = settings()
    keys = keys_for(
        stream, cfg.stream_partitions, partition, previous=cfg.stream_partitions_previous
    )
    _ids_need_partition(ids, keys)

    async def go() -> int:
        purged = 0
        async with clients(cfg, need=("valkey",)) as opened:
            client = opened.redis
            for key in keys:
                purged += await streams.dlq_purge(client, key, ids or None)
        return purged

    where = ", ".join(streams.dlq_name(k) for k in keys)
    out.print(f"purged {run_async(go)} dead letter(s) from {where}")


def _ids_need_partition(ids: list[str] | None, keys: list[str]) -> None:
    """Entry ids are unique within one dead-letter stream only."""
    if ids and len(keys) > 1:
        raise fail(
            "dead-letter ids name entries of one partition: add --partition K", ExitCode.USAGE
        )
