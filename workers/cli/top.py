"""``fleet top``: a live terminal view of every consumed stream and group.

Per stream and group, refreshed every interval: the rate in (entries added to the stream)
and out (entries the group read), lag, pending, the oldest pending entry's time since
delivery, consumers, and the dead-letter stream's length and growth. Rates are the
difference of two samples (``XINFO STREAM`` ``entries-added``, ``XINFO GROUPS``
``entries-read``) over the time between them; ``--once`` takes two samples and prints one
frame, for scripts.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from workers import streams
from workers.cli.options import StreamOpt, keys_for
from workers.clients import clients
from workers.partitions import logical_stream, partition_index
from workers.shell import out, run_async, settings

app = typer.Typer()


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    added: dict[str, int]
    read: dict[tuple[str, str], int | None]
    statuses: list[streams.GroupStatus]


@dataclass(frozen=True, slots=True)
class Row:
    stream: str
    group: str
    rate_in: float
    rate_out: float | None
    lag: str
    pending: int
    oldest_pending_seconds: float
    consumers: int
    dlq: int
    dlq_rate: float


async def sample(client: Any, names: list[str]) -> Sample:
    """``XINFO STREAM`` and ``XINFO GROUPS`` per stream, with the groups' statuses."""
    added: dict[str, int] = {}
    read: dict[tuple[str, str], int | None] = {}
    statuses: list[streams.GroupStatus] = []
    for name in names:
        try:
            info = await client.xinfo_stream(name)
        except Exception:  # noqa: BLE001 - a stream not created yet has nothing to show
            added[name] = 0
            continue
        added[name] = int(info.get("entries-added") or info.get("length") or 0)
        for group in await client.xinfo_groups(name):
            value = group.get("entries-read")
            read[(name, streams.as_text(group["name"]))] = None if value is None else int(value)
        statuses.extend(await streams.group_statuses(client, name))
    return Sample(time.monotonic(), added, read, statuses)


def frame(before: Sample, after: Sample) -> list[Row]:
    """The rows between two samples (pure)."""
    seconds = max(after.at - before.at, 1e-9)
    dlq_before = {s.stream: s.dlq_length for s in before.statuses}
    rows = []
    for status in after.statuses:
        key = (status.stream, status.group)
        read_now, read_then = after.read.get(key), before.read.get(key)
        rate_out = (
            None if read_now is None or read_then is None else (read_now - read_then) / seconds
        )
        lag = "?" if status.lag is None else str(status.lag)
        if status.lag_estimated:
            lag = f">={lag}"
        rows.append(
            Row(
                stream=status.stream,
                group=status.group,
                rate_in=(after.added.get(status.stream, 0) - before.added.get(status.stream, 0))
                / seconds,
                rate_out=rate_out,
                lag=lag,
                pending=status.pending,
                oldest_pending_seconds=status.oldest_pending_age_seconds,
                consumers=status.consumers,
                dlq=status.dlq_length,
                dlq_rate=(status.dlq_length - dlq_before.get(status.stream, status.dlq_length))
                / seconds,
            )
        )
    return rows


def with_sums(rows: list[Row]) -> list[Row]:
    """``rows`` and, for a partitioned stream, one more row per group summing its
    partitions (``{S:k}`` → ``S``) (pure)."""
    sums: dict[tuple[str, str], Row] = {}
    for r in rows:
        if partition_index(r.stream) is None:
            continue
        key = (logical_stream(r.stream), r.group)
        seen = sums.get(key)
        if seen is None:
            sums[key] = replace(r, stream=key[0])
            continue
        lags = (seen.lag, r.lag)
        sums[key] = replace(
            seen,
            rate_in=seen.rate_in + r.rate_in,
            rate_out=None
            if seen.rate_out is None or r.rate_out is None
            else seen.rate_out + r.rate_out,
            lag=str(int(lags[0]) + int(lags[1])) if all(x.isdigit() for x in lags) else "?",
            pending=seen.pending + r.pending,
            oldest_pending_seconds=max(seen.oldest_pending_seconds, r.oldest_pending_seconds),
            consumers=max(seen.consumers, r.consumers),
            dlq=seen.dlq + r.dlq,
            dlq_rate=seen.dlq_rate + r.dlq_rate,
        )
    return rows + list(sums.values())


def render(rows: list[Row]) -> Table:
    table = Table(title="fleet top")
    columns = ("stream", "group", "in/s", "out/s", "lag", "pending", "oldest pending")
    for column in (*columns, "consumers", "dlq", "dlq/s"):
        table.add_column(column, justify="left" if column in ("stream", "group") else "right")
    for r in rows:
        table.add_row(
            r.stream,
            r.group,
            f"{r.rate_in:,.0f}",
            "?" if r.rate_out is None else f"{r.rate_out:,.0f}",
            r.lag,
            str(r.pending),
            f"{r.oldest_pending_seconds:.1f}s",
            str(r.consumers),
            str(r.dlq),
            f"{r.dlq_rate:,.1f}",
        )
    if not rows:
        table.caption = "no consumer group yet"
    return table


async def frames(client: Any, names: list[str], interval: float) -> Any:
    """Yield a table every ``interval`` seconds."""
    before = await sample(client, names)
    while True:
        await asyncio.sleep(interval)  # the refresh interval of the view
        after = await sample(client, names)
        yield render(with_sums(frame(before, after)))
        before = after


# ------------------------------------------------------------------ the command


@app.command()
def top(
    stream: StreamOpt = None,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between refreshes (and samples).")
    ] = 1.0,
) -> None:
    """Live view per stream and group: rates in and out, lag, pending, consumers, DLQ.

    With FLEET_STREAM_PARTITIONS > 1, a row per partition key ({S:k}) and their sum (S)."""
    cfg = settings()
    names = keys_for(stream, cfg.stream_partitions, previous=cfg.stream_partitions_previous)

    async def go() -> None:
        async with clients(cfg, need=("valkey",)) as opened:
            client = opened.redis
            shown = frames(client, names, interval)
            if once:
                out.print(await anext(shown))
                return
            with Live(console=out, auto_refresh=False) as live:
                async for table in shown:
                    live.update(table, refresh=True)

    run_async(go)
