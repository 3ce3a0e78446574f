"""``fleet status``: per stream and group, length, lag, pending, consumers, dead letters."""

from __future__ import annotations

import typer
from rich.table import Table

from workers import streams
from workers.cli.options import JsonOpt, StreamOpt, keys_for
from workers.clients import clients
from workers.partitions import logical_stream
from workers.shell import echo_json, out, run_async, settings

app = typer.Typer()


@app.command()
def status(
    stream: StreamOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Per stream and group: length, lag, pending, oldest pending age, consumers, DLQ length.

    With FLEET_STREAM_PARTITIONS > 1, a row per partition key ({S:k}) and their sum (S);
    with FLEET_STREAM_PARTITIONS_PREVIOUS, the draining keys' rows too, in the sum."""
    cfg = settings()
    names = keys_for(stream, cfg.stream_partitions, previous=cfg.stream_partitions_previous)

    async def go() -> list[streams.GroupStatus]:
        rows: list[streams.GroupStatus] = []
        async with clients(cfg, need=("valkey",)) as opened:
            client = opened.redis
            for name in names:
                found = await streams.group_statuses(client, name)
                if not found:
                    length = int(await client.xlen(name))
                    dlq = int(await client.xlen(streams.dlq_name(name)))
                    found = [streams.GroupStatus(name, "-", length, None, 0, 0.0, 0, dlq, "-")]
                rows.extend(found)
        return rows

    rows = run_async(go)
    if len({logical_stream(n) for n in names}) < len(names):
        rows += streams.summed(rows)
    if as_json:
        echo_json(rows)
        return
    table = Table(title="streamfleet status")
    for column in ("stream", "group", "length", "lag", "pending", "oldest pending", "consumers"):
        table.add_column(column, justify="left" if column in ("stream", "group") else "right")
    table.add_column("dlq", justify="right")
    for r in rows:
        table.add_row(
            r.stream,
            r.group,
            str(r.length),
            "?" if r.lag is None else (f">={r.lag}" if r.lag_estimated else str(r.lag)),
            str(r.pending),
            f"{r.oldest_pending_age_seconds:.1f}s",
            str(r.consumers),
            str(r.dlq_length),
        )
    out.print(table)
