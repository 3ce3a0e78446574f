"""Arguments several root commands share: a stream name, checked against the contracts."""

from __future__ import annotations

from typing import Annotated

import typer

from contracts.registry import STREAMS, contract_for_stream
from workers.errors import ExitCode
from workers.partitions import draining_keys, stream_keys
from workers.shell import fail

StreamOpt = Annotated[
    str | None, typer.Option("--stream", "-s", help="One stream (default: every consumed stream).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def check_stream(stream: str) -> None:
    """A usage error (exit 2) unless ``stream`` is one of the contracts' streams."""
    try:
        contract_for_stream(stream)
    except KeyError as exc:
        raise fail(str(exc.args[0]), ExitCode.USAGE) from None


PartitionOpt = Annotated[
    int | None,
    typer.Option(
        "--partition", "-p", min=0, help="Only this partition (FLEET_STREAM_PARTITIONS > 1)."
    ),
]


def keys_for(
    stream: str | None,
    partitions: int,
    partition: int | None = None,
    *,
    previous: int | None = None,
) -> list[str]:
    """The Valkey keys of :func:`streams_for`: one per partition of each stream
    (docs/scaling.md), or only partition ``partition``; with ``previous``
    (``FLEET_STREAM_PARTITIONS_PREVIOUS``) and no ``partition``, the draining keys too."""
    if partition is not None and partition >= partitions:
        raise fail(
            f"--partition {partition}: FLEET_STREAM_PARTITIONS is {partitions} "
            f"(partitions 0 to {partitions - 1})",
            ExitCode.USAGE,
        )
    keys: list[str] = []
    for name in streams_for(stream):
        found = stream_keys(name, partitions)
        keys.extend(found if partition is None or partitions == 1 else [found[partition]])
        if partition is None:
            keys.extend(draining_keys(name, partitions, previous))
    return keys


def streams_for(stream: str | None) -> list[str]:
    """``[stream]`` (checked), or every stream a worker group consumes."""
    if stream is None:
        return [s for s, c in STREAMS.items() if c.default_group]
    check_stream(stream)
    return [stream]
