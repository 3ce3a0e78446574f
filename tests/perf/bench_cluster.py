"""One Valkey against the three-primary Valkey Cluster, the same workload on both (prints
figures, asserts nothing; docs/scaling.md).

Each round publishes fresh ``notification.sent`` events and reads them through the
runtime as ``fleet run`` does (one consumer per partition key, uvloop, hiredis
packing), once on one server with ``FLEET_STREAM_PARTITIONS=1`` and once on the
embedded cluster (:mod:`devkit.cluster`) with ``P=3``, for

(b) the runtime with a no-op handler (no database), and
(c) notify-delivery end to end into PostgreSQL (inbox + delivery_log);

the order of single and cluster alternates from round to round. The figure is
events/s from the consumers' start until every partition's group has read and
acknowledged everything, and the ratio cluster/single (target >= 0.8: on two cores no
speed-up is expected, the ratio shows the cost of cluster mode). Events are spread
over the partitions by event id, so each primary gets a third.

The cluster runs without replicas and with one replica a primary (``--replicas 0 1``,
the default: both); with replicas, the single server gets one replica too, so the ratio
shows cluster mode and not replication. Every Valkey runs with the AOF on, no fsync and
no automatic rewrite, as in tests/perf/harness.py.

It also measures Valkey's own CPU per event (``INFO cpu``, user + system, every node
summed): publishing (``XADD`` pipelined by 1,000) and reading + acknowledging
(``XREADGROUP`` + ``XACK`` of the no-op runtime), the inputs of the capacity model.

Run: ``python tests/perf/bench_cluster.py [--events N] [--rounds N] [--replicas 0 1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import msgspec
import redis

from contracts import Event
from devkit import workload
from devkit.cluster import embedded_cluster, server_binary
from devkit.embedded import free_port
from tests.perf.harness import bench_settings, bench_stack, noop_worker
from workers import cluster
from workers.db import create_pool
from workers.kernel import NoInbox, PgInbox, partition_consumers, tune_gc
from workers.kernel.inbox import Inbox
from workers.kernel.worker import Resources, Worker
from workers.logs import configure_logging
from workers.notify_delivery import NotifyDeliveryWorker
from workers.partitions import stream_keys
from workers.publishing import publish
from workers.settings import Settings
from workers.shell import run_event_loop

STREAM = "notify:delivery"
PARTITIONS = 3

MakeWorker = Callable[[Resources, str], Worker[Any, Any]]


def _event_key(event: Event) -> str:
    return str(event.event_id)


def _cpu_seconds(urls: Sequence[str]) -> float:
    """``INFO cpu`` of every server: user + system seconds, summed."""
    total = 0.0
    for url in urls:
        with redis.Redis.from_url(url) as client:
            info = client.info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


@contextlib.contextmanager
def replica_of(primary_url: str, folder: Path) -> Iterator[str]:
    """A ``valkey-server`` replicating ``primary_url`` (AOF on, no fsync), linked: its URL."""
    primary = redis.Redis.from_url(primary_url)
    host = primary.connection_pool.connection_kwargs["host"]
    port = primary.connection_pool.connection_kwargs["port"]
    primary.close()
    own = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    args = [
        str(server_binary()), "--port", str(own), "--bind", "127.0.0.1", "--dir", str(folder),
        "--replicaof", str(host), str(port), "--appendonly", "yes", "--appendfsync", "no",
        "--save", "", "--logfile", "valkey.log",
    ]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{own}/0"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with redis.Redis.from_url(url) as client:
                    if client.info("replication").get("master_link_status") == "up":
                        break
            except redis.ConnectionError:
                pass  # still starting
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the replica did not link; see {folder / 'valkey.log'}")
            time.sleep(0.05)  # the replica syncing
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _quiet_persistence(urls: Sequence[str]) -> None:
    """AOF on, no fsync, no automatic rewrite (as the single server of bench_stack)."""
    for url in urls:
        with redis.Redis.from_url(url) as client:
            client.config_set("appendfsync", "no")
            client.config_set("auto-aof-rewrite-percentage", 0)


async def _publish(settings: Settings, events: Sequence[Event]) -> None:
    client: Any = await cluster.open_client(settings)
    try:
        for key in stream_keys(STREAM, settings.stream_partitions):
            await client.delete(key)
        await publish(
            client,
            STREAM,
            events,
            partitions=settings.stream_partitions,
            partition_key=_event_key,
        )
    finally:
        await client.aclose()


async def _consume(settings: Settings, make: MakeWorker, group: str, total: int) -> float:
    """Run ``make``'s worker as ``fleet run`` would (one consumer per partition key) until
    its group has read and acknowledged ``total`` entries over every key: events/s."""
    client: Any = await cluster.open_client(settings)
    pool = await create_pool(settings, max_size=settings.concurrency + 2)
    try:
        worker = make(Resources(settings=settings, redis=client, pool=pool), group)
        inbox: Inbox = NoInbox() if worker.name == "noop" else PgInbox(pool)
        consumers = partition_consumers(worker, "r1", inbox)
        keys = [c.stream for c in consumers]
        started = time.perf_counter()
        tasks = [asyncio.create_task(c.run()) for c in consumers]
        while True:
            read = pending = 0
            for key in keys:
                try:
                    groups = await client.xinfo_groups(key)
                except redis.ResponseError:
                    groups = []  # the consumer has not created its group yet
                for info in groups:
                    if info["name"] in (group, group.encode()):
                        read += int(info["entries-read"] or 0)
                        pending += int(info["pending"])
            if read >= total and pending == 0:
                break
            await asyncio.sleep(0.01)  # polling the groups' progress
        elapsed = time.perf_counter() - started
        for c in consumers:
            c.stop()
        await asyncio.gather(*tasks)
        return total / elapsed
    finally:
        await pool.close()
        await client.aclose()


class Target:
    """One Valkey deployment: its settings and the servers whose CPU is counted."""

    def __init__(self, name: str, settings: Settings, urls: Sequence[str]) -> None:
        self.name = name
        self.settings = settings
        self.urls = list(urls)

    def measure(self, make: MakeWorker, group: str, events: Sequence[Event]) -> dict[str, float]:
        """Publish ``events``, consume them: events/s and Valkey µs per event for each."""
        cpu = _cpu_seconds(self.urls)
        run_event_loop(_publish(self.settings, events), self.settings.event_loop)
        published = _cpu_seconds(self.urls)
        rate = run_event_loop(
            _consume(self.settings, make, group, len(events)), self.settings.event_loop
        )
        consumed = _cpu_seconds(self.urls)
        count = len(events)
        return {
            "rate": rate,
            "publish_us": (published - cpu) / count * 1e6,
            "read_ack_us": (consumed - published) / count * 1e6,
        }


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def compare(single: Target, clustered: Target, total: int, rounds: int, label: str) -> None:
    contenders: dict[str, MakeWorker] = {
        "b": lambda resources, group: noop_worker(STREAM)(resources, group=group),
        "c": lambda resources, group: NotifyDeliveryWorker(resources, group=group),
    }
    names = {"b": "runtime, no-op handler", "c": "notify-delivery into PostgreSQL"}
    figures: dict[tuple[str, str], list[dict[str, float]]] = {}
    seed = 1000
    for index in range(rounds):
        order = [single, clustered] if index % 2 == 0 else [clustered, single]
        line = []
        for key, make in contenders.items():
            for target in order:
                seed += 1
                events = list(workload.notification_events(total, seed=seed))
                result = target.measure(make, f"{key}-{target.name}-{label}-{index}", events)
                figures.setdefault((key, target.name), []).append(result)
                line.append(f"({key}) {target.name} {result['rate']:>8,.0f}/s")
        print(f"round {index + 1}: " + "  ".join(line), flush=True)
    print(f"medians over {rounds} rounds, cluster {label}:")
    for key, name in names.items():
        one = [r["rate"] for r in figures[(key, single.name)]]
        many = [r["rate"] for r in figures[(key, clustered.name)]]
        ratios = [m / o for m, o in zip(many, one, strict=True)]
        print(
            f"({key}) {name:<32}: single {_median(one):>9,.0f} events/s   "
            f"cluster {_median(many):>9,.0f} events/s   "
            f"ratio cluster/single = {_median(ratios):.2f} "
            f"(range {min(ratios):.2f}-{max(ratios):.2f}, target >= 0.8)"
        )
    for target in (single, clustered):
        rows = figures[("b", target.name)]
        publish_us = _median([r["publish_us"] for r in rows])
        read_ack_us = _median([r["read_ack_us"] for r in rows])
        print(
            f"valkey cpu per event, {target.name} ({len(target.urls)} server(s) summed): "
            f"publish {publish_us:.2f} us, read+ack {read_ack_us:.2f} us, "
            f"events/s per busy core {1e6 / (publish_us + read_ack_us):,.0f}"
        )


def main(total: int, rounds: int, replica_counts: list[int], batch: int, concurrency: int) -> None:
    print(
        f"events: {total} a round, batch: {batch}, concurrency: {concurrency}, "
        f"partitions on the cluster: {PARTITIONS}"
    )
    with bench_stack() as (valkey_url, database_url):
        base = bench_settings(valkey_url, database_url, batch, concurrency)
        tune_gc()
        for replicas in replica_counts:
            label = f"{replicas} replica(s) a primary"
            with contextlib.ExitStack() as stack:
                folder = Path(
                    stack.enter_context(
                        tempfile.TemporaryDirectory(prefix="streamfleet-bench-cluster-")
                    )
                )
                urls = [valkey_url]
                for n in range(replicas):
                    urls.append(stack.enter_context(replica_of(valkey_url, folder / f"r{n}")))
                single = Target("single", base, urls)
                nodes = stack.enter_context(embedded_cluster(folder / "cluster", replicas=replicas))
                _quiet_persistence(nodes.urls())
                settings = msgspec.structs.replace(
                    base, valkey_url=nodes.url, stream_partitions=PARTITIONS
                )
                clustered = Target("cluster", settings, nodes.urls())
                compare(single, clustered, total, rounds, label)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--replicas", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=3)
    args = parser.parse_args()
    configure_logging("warning", "json")
    main(args.events, args.rounds, args.replicas, args.batch, args.concurrency)
