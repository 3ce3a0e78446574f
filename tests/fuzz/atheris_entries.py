"""Coverage-guided fuzzing of every parser of untrusted bytes (atheris, run by hand).

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz/atheris_entries.py -atheris_runs=200000
    .venv/bin/python tests/fuzz/atheris_entries.py -max_total_time=600 corpus/

Each input picks a target (the runtime's entry decoding, ``decode_event``,
``fleet publish`` lines, ``fleet vex import``, ``fleet snapshots import``) and
feeds it the rest of the bytes. Anything but the documented failure is a crash
that libFuzzer saves as ``crash-*``; replay one with
``.venv/bin/python tests/fuzz/atheris_entries.py crash-<hash>``.

``FLEET_FUZZ_ALLOW_KNOWN=1`` tolerates the escapes pinned by the strict xfail
tests in ``tests/unit/test_fuzz_inputs.py`` (hostile JSON), to look past them.
Not collected by pytest: its name does not start with ``test_``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import atheris

with atheris.instrument_imports():
    from contracts.registry import STREAMS
    from contracts.wire import DecodeError, decode_event
    from workers.app import WORKERS, available_workers, resolve
    from workers.cli.publish import parse_publish_lines
    from workers.kernel.handling import triage_for
    from workers.kernel.worker import Resources, Worker
    from workers.settings import load_settings
    from workers.snapshot_retention.payload import normalize_payload
    from workers.vex_consensus.documents import DocumentError, parse_document

KNOWN: tuple[type[Exception], ...] = (
    (RecursionError, UnicodeDecodeError) if os.environ.get("FLEET_FUZZ_ALLOW_KNOWN") else ()
)
TYPES = sorted(name for c in STREAMS.values() for name in c.types_by_name())
STREAM_NAMES = sorted(STREAMS)
_settings = load_settings({}, max_deliveries=5)
TRIAGES = [
    triage_for(cls(Resources(settings=_settings, redis=None)))  # type: ignore[arg-type]
    for cls in resolve([n for n in available_workers() if n in WORKERS])
    if isinstance(cls, type) and issubclass(cls, Worker)
]


def _fields(fdp: atheris.FuzzedDataProvider) -> dict[bytes, bytes]:
    fields: dict[bytes, bytes] = {}
    if fdp.ConsumeBool():
        fields[b"type"] = (
            TYPES[fdp.ConsumeIntInRange(0, len(TYPES) - 1)].encode()
            if fdp.ConsumeBool()
            else fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 24))
        )
    if fdp.ConsumeBool():
        fields[fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8))] = fdp.ConsumeBytes(4)
    fields[b"data"] = fdp.ConsumeBytes(fdp.remaining_bytes())
    return fields


def _runtime(fdp: atheris.FuzzedDataProvider) -> None:
    triage = TRIAGES[fdp.ConsumeIntInRange(0, len(TRIAGES) - 1)]
    deliveries = fdp.ConsumeIntInRange(1, 8)
    fields = _fields(fdp)
    out = triage([(b"1-0", fields)], {b"1-0": deliveries})
    placed = len(out.items) + len(out.ack) + len(out.dead)
    if placed != 1:
        raise AssertionError(f"entry placed {placed} times: {fields!r}")
    for dead in out.dead:
        if not dead.reason or not isinstance(dead.error, str):
            raise AssertionError(f"dead letter without a reason: {fields!r}")


def _entry(fdp: atheris.FuzzedDataProvider) -> None:
    fields: dict[Any, Any] = _fields(fdp)
    try:
        decode_event(fields)
    except DecodeError as exc:
        if not exc.reason:
            raise AssertionError("DecodeError without a reason") from exc


def _publish(fdp: atheris.FuzzedDataProvider) -> None:
    stream = STREAM_NAMES[fdp.ConsumeIntInRange(0, len(STREAM_NAMES) - 1)]
    lines = fdp.ConsumeBytes(fdp.remaining_bytes()).split(b"\n")
    numbered = list(enumerate((line + b"\n" for line in lines), start=1))
    entries, problems = parse_publish_lines(stream, iter(numbered))
    if len(entries) + len(problems) != sum(1 for _, line in numbered if line.strip()):
        raise AssertionError("a line was neither published nor reported")
    if not all(p.startswith("line ") for p in problems):
        raise AssertionError(f"a problem without its line number: {problems!r}")


def _vex(fdp: atheris.FuzzedDataProvider) -> None:
    with contextlib.suppress(DocumentError):
        parse_document(fdp.ConsumeBytes(fdp.remaining_bytes()))


def _snapshot(fdp: atheris.FuzzedDataProvider) -> None:
    with contextlib.suppress(ValueError):
        normalize_payload(fdp.ConsumeBytes(fdp.remaining_bytes()), allow_empty=fdp.ConsumeBool())


TARGETS = (_runtime, _entry, _publish, _vex, _snapshot)


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    target = TARGETS[fdp.ConsumeIntInRange(0, len(TARGETS) - 1)]
    with contextlib.suppress(KNOWN):
        target(fdp)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
