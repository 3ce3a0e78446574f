"""``fleet consumers prune`` and ``fleet trim``: keep groups and streams small."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from workers import streams
from workers.cli.options import StreamOpt, keys_for
from workers.clients import clients
from workers.kernel.trimming import TrimPlan, trim_stream
from workers.shell import out, run_async, settings

app = typer.Typer()
consumers_app = typer.Typer(help="Consumer maintenance.", no_args_is_help=True)
app.add_typer(consumers_app, name="consumers")


@consumers_app.command("prune")
def consumers_prune(
    stream: StreamOpt = None,
    idle: Annotated[
        float, typer.Option(min=0, help="Prune consumers idle longer than this many seconds.")
    ] = 3600.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would go.")] = False,
) -> None:
    """Delete idle consumers. Their pending entries first move to the group's most recently
    active consumer (never pruned itself); a consumer still holding entries is never deleted."""
    cfg = settings()
    names = keys_for(stream, cfg.stream_partitions, previous=cfg.stream_partitions_previous)

    async def go() -> list[tuple[str, str, streams.PruneResult]]:
        results = []
        async with clients(cfg, need=("valkey",)) as opened:
            client = opened.redis
            for name in names:
                for st in await streams.group_statuses(client, name):
                    target = await _most_active_consumer(client, name, st.group)
                    result = await streams.prune_consumers(
                        client,
                        name,
                        st.group,
                        idle_ms=int(idle * 1000),
                        claim_to=target,
                        dry_run=dry_run,
                    )
                    results.append((name, st.group, result))
        return results

    for name, group, result in run_async(go):
        verb = "would delete" if dry_run else "deleted"
        out.print(
            f"{name} / {group}: {verb} {len(result.deleted)} consumer(s), moved {result.claimed} "
            f"pending entr(y/ies), kept {len(result.kept)} holding work"
        )


async def _most_active_consumer(client: Any, stream: str, group: str) -> str | None:
    """The consumer that read most recently: it receives the pruned consumers' entries
    and is itself never pruned in the same run."""
    consumers = await client.xinfo_consumers(stream, group)
    if not consumers:
        return None
    best = min(consumers, key=lambda c: int(c["idle"]))
    name = best["name"]
    return str(name.decode() if isinstance(name, bytes) else name)


@app.command()
def trim(
    stream: StreamOpt = None,
    retention_days: Annotated[
        float | None, typer.Option(min=0, help="Override FLEET_STREAM_RETENTION_DAYS.")
    ] = None,
    max_len: Annotated[
        int | None, typer.Option(min=0, help="Hard cap (entries); 0 disables it.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show the plan.")] = False,
) -> None:
    """Trim streams by retention, never past an entry some group has not acknowledged."""
    cfg = settings()
    names = keys_for(stream, cfg.stream_partitions, previous=cfg.stream_partitions_previous)
    days = cfg.stream_retention_days if retention_days is None else retention_days
    cap = cfg.stream_max_len if max_len is None else max_len

    async def go() -> list[TrimPlan]:
        async with clients(cfg, need=("valkey",)) as opened:
            client = opened.redis
            return [
                await trim_stream(client, name, retention_days=days, max_len=cap, dry_run=dry_run)
                for name in names
            ]

    for plan in run_async(go):
        verb = "would remove" if dry_run else "removed"
        line = (
            f"{plan.stream}: {verb} {plan.removable} of {plan.length} "
            f"(limited by {plan.limited_by})"
        )
        if plan.cap_removals:
            line += f"; hard cap {verb.split()[-1]} {plan.cap_removals} unconsumed"
        out.print(line)
