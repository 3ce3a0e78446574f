"""``fleet partitions``: the keys of each stream while ``FLEET_STREAM_PARTITIONS``
changes, and retiring the keys of the previous layout once they are drained
(``docs/scaling.md``, "Changing the number of partitions").

With ``FLEET_STREAM_PARTITIONS_PREVIOUS`` set, the keys of the previous layout that the
current one lacks are *draining*: the workers read them besides the current keys. A
draining key is drained when every group on it has read and acknowledged every entry
(no lag, nothing pending) and its dead-letter stream is empty; ``retire`` then deletes
it with its dead-letter stream, under ``WATCH`` so an entry added meanwhile (a
producer still on the old layout) keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import redis.exceptions as redis_exc
import typer
from rich.table import Table

from workers import cluster, streams
from workers.cli.options import JsonOpt, StreamOpt, streams_for
from workers.clients import clients
from workers.errors import ExitCode
from workers.partitions import dlq_key, draining_keys, stream_keys
from workers.settings import Settings
from workers.shell import echo_json, fail, out, run_async, settings

app = typer.Typer(
    help="Stream partitions: the keys in use, and retiring a previous layout's keys.",
    no_args_is_help=True,
)


@dataclass(frozen=True, slots=True)
class KeyState:
    """One key of a stream: whether it is current or draining, and what is left on it."""

    stream: str
    key: str
    role: str  # "current" or "draining"
    length: int
    groups: int
    unfinished: int  # entries some group has not read, plus those read but not acknowledged
    dead_letters: int
    node: str = "-"  # on a cluster, the primary serving the key's slot (host:port)

    @property
    def drained(self) -> bool:
        """Nothing left for anyone: no group behind, no dead letter, and no entry that
        no group exists to read."""
        return (
            self.unfinished == 0
            and self.dead_letters == 0
            and (self.groups > 0 or self.length == 0)
        )


async def key_state(client: Any, stream: str, key: str, role: str) -> KeyState:
    """``XLEN``, ``XINFO GROUPS``, ``XPENDING`` and ``XLEN <key>:dlq`` of one key
    (:func:`workers.streams.group_statuses`)."""
    statuses = await streams.group_statuses(client, key)
    length = int(await client.xlen(key))
    unfinished = 0
    for st in statuses:
        # An unknown lag is counted (bounded) by group_statuses; None only if it cannot be.
        unfinished += st.pending + (length if st.lag is None else st.lag)
    node = "-"
    if cluster.is_cluster(client):
        serving = client.get_node_from_key(key)
        node = f"{serving.host}:{serving.port}"
    return KeyState(
        stream=stream,
        key=key,
        role=role,
        length=length,
        groups=len(statuses),
        unfinished=unfinished,
        dead_letters=int(await client.xlen(dlq_key(key))),
        node=node,
    )


def _layout(cfg: Settings, stream: str | None) -> list[tuple[str, str, str]]:
    """(stream, key, role) of every key of the streams asked for."""
    keys: list[tuple[str, str, str]] = []
    for name in streams_for(stream):
        keys.extend((name, k, "current") for k in stream_keys(name, cfg.stream_partitions))
        draining = draining_keys(name, cfg.stream_partitions, cfg.stream_partitions_previous)
        keys.extend((name, k, "draining") for k in draining)
    return keys


@app.command("status")
def partitions_status(stream: StreamOpt = None, as_json: JsonOpt = False) -> None:
    """Every key of each stream, current or draining, the node serving it on a cluster,
    and what is left on it. Exit 1 while a draining key still holds unfinished entries or
    dead letters."""
    cfg = settings()
    layout = _layout(cfg, stream)

    async def go() -> list[KeyState]:
        async with clients(cfg, need=("valkey",)) as opened:
            return [await key_state(opened.redis, s, k, role) for s, k, role in layout]

    states = run_async(go)
    if as_json:
        echo_json([{**_as_dict(st), "drained": st.drained} for st in states])
    else:
        previous = cfg.stream_partitions_previous
        title = f"partitions: {cfg.stream_partitions}" + (
            f" (previous: {previous})" if previous is not None else ""
        )
        table = Table(title=title)
        for column in ("stream", "key", "role", "length", "groups", "unfinished", "dlq"):
            table.add_column(
                column, justify="left" if column in ("stream", "key", "role") else "right"
            )
        table.add_column("drained")
        for st in states:
            drained = ("yes" if st.drained else "no") if st.role == "draining" else "-"
            table.add_row(
                st.stream, st.key, st.role, st.node, str(st.length), str(st.groups),
                str(st.unfinished), str(st.dead_letters), drained,
            )  # fmt: skip
        out.print(table)
    if any(st.role == "draining" and not st.drained for st in states):
        raise typer.Exit(ExitCode.FAILED)


@app.command("retire")
def partitions_retire(
    stream: StreamOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would go.")] = False,
) -> None:
    """Delete the draining keys (FLEET_STREAM_PARTITIONS_PREVIOUS) that are drained, with
    their dead-letter streams; keys still holding work are kept (exit 1)."""
    cfg = settings()
    if cfg.stream_partitions_previous is None:
        raise fail(
            "FLEET_STREAM_PARTITIONS_PREVIOUS is not set: no key is draining "
            "(docs/scaling.md, changing the number of partitions)",
            ExitCode.USAGE,
        )
    layout = [(s, k) for s, k, role in _layout(cfg, stream) if role == "draining"]

    async def go() -> list[tuple[KeyState, str]]:
        results: list[tuple[KeyState, str]] = []
        async with clients(cfg, need=("valkey",)) as opened:
            for name, key in layout:
                results.append(await _retire(opened.redis, name, key, dry_run=dry_run))
        return results

    results = run_async(go)
    if not results:
        out.print("no draining key: the previous layout's keys are all in the current one")
    kept = 0
    for st, outcome in results:
        if outcome == "kept":
            kept += 1
            out.print(
                f"{st.key}: kept, {st.unfinished} unfinished entr(y/ies) and "
                f"{st.dead_letters} dead letter(s) left"
                + ("" if st.groups or not st.length else f", {st.length} never read by a group")
            )
        elif outcome == "changed":
            kept += 1
            out.print(f"{st.key}: kept, an entry arrived while retiring it (a producer on P=old?)")
        else:
            out.print(f"{st.key}: {outcome} ({st.length} entr(y/ies), all acknowledged)")
    if kept:
        raise typer.Exit(ExitCode.FAILED)


async def _retire(client: Any, stream: str, key: str, *, dry_run: bool) -> tuple[KeyState, str]:
    """``WATCH key``, the checks of :func:`key_state`, then ``MULTI; DEL key;
    DEL key:dlq; EXEC`` (one hash slot): a write to the key after the checks aborts it."""
    async with client.pipeline(transaction=True) as pipe:
        await pipe.watch(key)
        state = await key_state(client, stream, key, "draining")
        if not state.drained:
            await pipe.unwatch()
            return state, "kept"
        if dry_run:
            await pipe.unwatch()
            return state, "would retire"
        pipe.multi()
        pipe.delete(key)
        pipe.delete(dlq_key(key))
        try:
            await pipe.execute()
        except redis_exc.WatchError:
            return state, "changed"
    return state, "retired"


def _as_dict(st: KeyState) -> dict[str, Any]:
    return {
        "stream": st.stream,
        "key": st.key,
        "role": st.role,
        "length": st.length,
        "groups": st.groups,
        "unfinished": st.unfinished,
        "dead_letters": st.dead_letters,
        "node": st.node,
    }
