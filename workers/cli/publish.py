"""``fleet publish``: validate JSON lines against a stream's contracts, then publish them
with the one publish function (:func:`workers.publishing.publish`)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.progress import Progress

from contracts.base import Event
from contracts.registry import contract_for_stream
from contracts.wire import DecodeError, decode_data, encode_entry
from workers.cli.options import check_stream
from workers.clients import clients
from workers.errors import ConfigError, ExitCode
from workers.publishing import NotReplicated
from workers.publishing import publish as publish_events
from workers.shell import err, fail, out, run_async, settings
from workers.tracing import tracing_for

app = typer.Typer()


def _read_lines(source: str) -> Iterator[tuple[int, bytes]]:
    if source == "-":
        for number, line in enumerate(sys.stdin.buffer, start=1):
            yield number, line
        return
    path = Path(source)
    if not path.is_file():
        raise fail(f"{source}: no such file", ExitCode.USAGE)
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            yield number, line


def parse_publish_lines(
    stream: str, lines: Iterator[tuple[int, bytes]]
) -> tuple[list[Event], list[str]]:
    """Validate JSON lines against ``stream``'s contracts: (events, problems by line)."""
    types = contract_for_stream(stream).types_by_name()
    entries: list[Event] = []
    problems: list[str] = []
    for number, raw in lines:
        line = raw.strip()
        if not line:
            continue
        try:
            head = msgspec.json.decode(line)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            problems.append(f"line {number}: not JSON ({exc})")
            continue
        if not isinstance(head, dict):
            problems.append(f"line {number}: expected a JSON object")
            continue
        type_name = head.get("type")
        cls = types.get(type_name) if isinstance(type_name, str) else None
        if cls is None:
            known = ", ".join(sorted(types))
            problems.append(
                f"line {number}: type {type_name!r} does not belong on {stream} ({known})"
            )
            continue
        try:
            event = decode_data(cls, line)
        except DecodeError as exc:
            problems.append(f"line {number}: {exc}")
            continue
        entries.append(event)
    return entries, problems


def partition_keys(events: list[Event], field: str) -> dict[uuid.UUID, str]:
    """Each event's partition key by its ``eventId``: the text of its top-level wire field
    ``field``. (Keyed by id, not by object: the publish function stamps a ``traceparent``
    on a copy of each event.)"""
    keys: dict[uuid.UUID, str] = {}
    for number, event in enumerate(events, start=1):
        value = msgspec.json.decode(encode_entry(event)["data"]).get(field)
        if value is None or isinstance(value, dict | list):
            raise fail(f"event {number}: no text field {field!r} to partition by", ExitCode.USAGE)
        text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
        keys[event.event_id] = text
    return keys


@app.command()
def publish(
    stream: Annotated[str, typer.Argument(help="Target stream, e.g. notify:delivery.")],
    source: Annotated[str, typer.Argument(help="A file of JSON lines (one event each), or -.")],
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Publish the valid lines even if some are bad.")
    ] = False,
    replicas: Annotated[
        int,
        typer.Option(
            min=0, help="Wait until this many replicas have each chunk (WAIT); fail if fewer."
        ),
    ] = 0,
    wait_timeout: Annotated[
        float, typer.Option(min=0.001, help="Seconds WAIT waits for the replicas.")
    ] = 5.0,
    partition_key: Annotated[
        str,
        typer.Option(help="The event field choosing the partition (FLEET_STREAM_PARTITIONS > 1)."),
    ] = "tenantId",
) -> None:
    """Validate events against the contracts, then XADD them (all or, by default, none).

    With FLEET_STREAM_PARTITIONS > 1 each event goes to partition
    crc32(utf-8 of its partition key) mod P (docs/scaling.md)."""
    check_stream(stream)
    entries, problems = parse_publish_lines(stream, _read_lines(source))
    for problem in problems[:50]:
        err.print(f"[red]{problem}[/]", highlight=False)
    if len(problems) > 50:
        err.print(f"… and {len(problems) - 50} more bad lines")
    if problems and not skip_invalid:
        raise fail(f"{len(problems)} invalid line(s); nothing was published")
    cfg = settings()
    keys = partition_keys(entries, partition_key) if cfg.stream_partitions > 1 else {}

    async def go() -> None:
        async with clients(cfg, need=("valkey",)) as opened:
            with Progress(console=err, transient=True) as progress:
                task = progress.add_task(f"publishing to {stream}", total=len(entries))
                await publish_events(
                    opened.redis,
                    stream,
                    entries,
                    lambda n: progress.advance(task, n),
                    partitions=cfg.stream_partitions,
                    partition_key=lambda event: keys[event.event_id],
                    replicas=replicas,
                    wait_timeout_ms=max(1, int(wait_timeout * 1000)),
                )

    try:
        with tracing_for(cfg):
            run_async(go)
    except ConfigError as exc:
        raise fail(str(exc), exc.exit_code) from None
    except NotReplicated as exc:
        raise fail(f"not replicated: {exc}", ExitCode.FAILED) from None
    skipped = f", skipped {len(problems)} invalid" if problems else ""
    out.print(f"published {len(entries)} event(s) to {stream}{skipped}")
    if problems:
        raise typer.Exit(ExitCode.FAILED)
