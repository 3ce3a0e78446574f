"""Runtime throughput on one stream, three ways, in one run (prints figures, asserts nothing).

(a) bare loop: XREADGROUP COUNT n + msgspec decode + XACK, nothing else;
(b) the runtime with a no-op handler (no database);
(c) notify-delivery end to end into PostgreSQL (inbox + delivery_log, one statement a batch).

Each round publishes a fresh workload and reads it through one consumer group per
contender, each on an event loop of its own; the figures are medians over the rounds
(see ``harness``). Run:
``python tests/perf/bench_runtime.py [--events N] [--batch N] [--concurrency N] [--rounds N]
[--tracing]``.

``--tracing`` runs (b) and (c) with tracing on (``FLEET_TRACING=otlp``, docs/tracing.md):
every event carries a producer context of its own (as from many producers: one link
each, up to 128 a batch), spans go through the SDK's batch processor to an exporter
that encodes each export as the OTLP protobuf request and drops it (the CPU of an
export, no collector). (a) is the bare loop either way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from collections.abc import Sequence
from typing import Any

import msgspec

from contracts import Event
from devkit import workload
from tests.perf.harness import bench_settings, bench_stack, compare_worker
from workers import tracing
from workers.logs import configure_logging
from workers.notify_delivery import NotifyDeliveryWorker

STREAM = "notify:delivery"


def _encoding_exporter() -> Any:
    """A span exporter that builds the OTLP request of every export and drops it."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Encoding(SpanExporter):
        spans = 0

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            encode_spans(spans).SerializeToString()
            Encoding.spans += len(spans)
            return SpanExportResult.SUCCESS

    return Encoding()


def main(total: int, batch: int, concurrency: int, count: int, traced: bool) -> None:
    with bench_stack() as (valkey_url, database_url):
        settings = bench_settings(valkey_url, database_url, batch, concurrency)
        exporter = None
        if traced:
            exporter = _encoding_exporter()
            tracing.configure(msgspec.structs.replace(settings, tracing="otlp"), exporter=exporter)

        def events_for(index: int) -> list[Event]:
            events = workload.notification_events(total, seed=99 + index)
            if not traced:
                return list(events)
            return [
                msgspec.structs.replace(e, traceparent=tracing.new_traceparent()) for e in events
            ]

        print(
            f"events: {total} a round, batch: {batch}, concurrency: {concurrency}, "
            f"tracing: {'on (b, c)' if traced else 'off'}"
        )
        try:
            compare_worker(
                settings,
                NotifyDeliveryWorker,
                events_for,
                count,
                label="notify-delivery into PostgreSQL",
                targets={"b": ">= 0.8", "c": ">= 0.35"},
            )
        finally:
            tracing.shutdown()
        if exporter is not None:
            print(f"spans exported: {type(exporter).spans:,}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tracing", action="store_true", help="(b) and (c) with tracing on")
    args = parser.parse_args()
    # Warnings only: per-batch info lines on the terminal would drown the figures.
    configure_logging("warning", "json", traced=args.tracing)
    main(args.events, args.batch, args.concurrency, args.rounds, args.tracing)
