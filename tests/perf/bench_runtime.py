"""Runtime throughput on one stream, three ways, in one run (prints figures, asserts nothing).

(a) bare loop: XREADGROUP COUNT n + msgspec decode + XACK, nothing else;
(b) the runtime with a no-op handler (no database);
(c) notify-delivery end to end into PostgreSQL (inbox + delivery_log, one statement a batch).

Each round publishes a fresh workload and reads it through one consumer group per
contender, each on an event loop of its own; the figures are medians over the rounds
(see ``harness``). Run:
``python tests/perf/bench_runtime.py [--events N] [--batch N] [--concurrency N] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from devkit import workload
from tests.perf.harness import bench_settings, bench_stack, compare_worker
from workers.logs import configure_logging
from workers.notify_delivery import NotifyDeliveryWorker

STREAM = "notify:delivery"


def main(total: int, batch: int, concurrency: int, count: int) -> None:
    with bench_stack() as (valkey_url, database_url):
        settings = bench_settings(valkey_url, database_url, batch, concurrency)
        print(f"events: {total} a round, batch: {batch}, concurrency: {concurrency}")
        compare_worker(
            settings,
            NotifyDeliveryWorker,
            lambda index: list(workload.notification_events(total, seed=99 + index)),
            count,
            label="notify-delivery into PostgreSQL",
            targets={"b": ">= 0.8", "c": ">= 0.35"},
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    # Warnings only: per-batch info lines on the terminal would drown the figures.
    configure_logging("warning", "json")
    main(args.events, args.batch, args.concurrency, args.rounds)
