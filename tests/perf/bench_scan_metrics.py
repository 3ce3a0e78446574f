"""scan-metrics throughput beside the bare stream loop, in one run (prints figures, asserts
nothing).

(a) bare loop: XREADGROUP COUNT n + msgspec decode + XACK, nothing else (the foundation
    benchmark's loop, on these entries);
(b) the runtime with a no-op handler (no database), for reference;
(c) scan-metrics end to end into PostgreSQL: decode, validate, inbox + one set-based
    statement per batch (scan_metrics and six execution_phases rows per scan), XACK;
ceiling: PostgreSQL alone, sent the very statements (c)'s worker builds for as many
    other scans, built before the clock starts, on as many connections as (c) runs
    batches at once: no worker, no Valkey. ``c/ceiling`` is (c) as a fraction of it.

Every entry is a ``scan.completed`` with six phases. Each round publishes fresh scans and
reads them through one consumer group per contender, each on an event loop of its own;
the figures are medians over the rounds (see ``harness``). Run:
``python tests/perf/bench_scan_metrics.py [--scans N] [--batch N] [--concurrency N]
[--rounds N]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from contracts import Event
from contracts.scanner import ScanCompleted
from devkit import workload
from tests.perf.harness import bench_settings, bench_stack, compare_worker
from workers.logs import configure_logging
from workers.scan_metrics import ScanMetricsWorker

STREAM = "scanner:events"


def completed_scans(total: int, seed: int) -> list[Event]:
    scans = workload.scan_lifecycles(total, seed=seed, failure_rate=0.0, replay_rate=0.0)
    events: list[Event] = []
    for _, outcome in scans:
        assert isinstance(outcome, ScanCompleted) and len(outcome.phases) == 6
        events.append(outcome)
    return events


def main(total: int, batch: int, concurrency: int, count: int) -> None:
    with bench_stack() as (valkey_url, database_url):
        settings = bench_settings(valkey_url, database_url, batch, concurrency)
        sample = completed_scans(100, seed=1)
        size = sum(len(msgspec.json.encode(e)) for e in sample) / len(sample)
        print(
            f"scan.completed events: {total} a round (six phases each, ~{size:,.0f} bytes), "
            f"batch: {batch}, concurrency: {concurrency}"
        )
        compare_worker(
            settings,
            ScanMetricsWorker,
            lambda index: completed_scans(total, seed=99 + index),
            count,
            label="scan-metrics into PostgreSQL",
            targets={"c": ">= 0.2", "ceiling": ">= 0.8"},
            ceiling_events_for=lambda index: completed_scans(total, seed=10_099 + index),
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scans", type=int, default=30_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    configure_logging("warning", "json")
    main(args.scans, args.batch, args.concurrency, args.rounds)
