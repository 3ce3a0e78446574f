"""Process wiring for ``fleet run``: the worker registry, starting workers, stopping them.

Start-up order: settings → the HTTP port → clients (:func:`workers.clients.clients`:
Valkey pinged, PostgreSQL pool, migrations checked, S3 when a worker needs it) →
workers → ops HTTP endpoint. Shutdown stops the workers (each drains within the grace
period), then closes in reverse order.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from workers.clients import clients
from workers.db import DataStep
from workers.errors import ConfigError, ExitCode
from workers.export import ExportWorker
from workers.http import OpsServer, bind
from workers.kernel import PgInbox, Stopping, StreamConsumer, partition_consumers, tune_gc
from workers.kernel.lease import ConsumerLease
from workers.kernel.worker import Resources, Worker
from workers.notify_delivery import NotifyDeliveryWorker
from workers.scan_metrics import ScanMetricsWorker
from workers.settings import Settings
from workers.snapshot_retention import SnapshotRetentionService
from workers.vex_consensus import VexConsensusWorker
from workers.vex_consensus.migration import canonicalize_stored_purls

log = structlog.get_logger("workers.app")

WORKERS: dict[str, type[Any]] = {
    "scan-metrics": ScanMetricsWorker,
    "vex-consensus": VexConsensusWorker,
    "notify-delivery": NotifyDeliveryWorker,
    "snapshot-retention": SnapshotRetentionService,
    "export": ExportWorker,
}
"""Worker names accepted by ``fleet run``, mapped to their implementation."""


def migration_steps() -> dict[int, DataStep]:
    """Migration version -> the Python step run after that migration's SQL."""
    return {7: canonicalize_stored_purls}


def available_workers() -> list[str]:
    """Worker names accepted by ``fleet run``."""
    return list(WORKERS)


def resolve(names: list[str]) -> list[Any]:
    """Worker classes for ``names`` (every worker when empty)."""
    unknown = [name for name in names if name not in WORKERS]
    if unknown:
        known = ", ".join(WORKERS)
        raise ConfigError(f"unknown worker {unknown[0]!r} (known: {known})", ExitCode.USAGE)
    return [WORKERS[name] for name in names or WORKERS]


@dataclass
class Fleet:
    """Every worker of one process, the ops endpoint, and their shutdown."""

    settings: Settings
    names: list[str]
    consumers: list[StreamConsumer] = field(default_factory=list)
    services: list[Any] = field(default_factory=list)
    stopping: Stopping = field(default_factory=Stopping)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    server: OpsServer | None = None
    http_port: int | None = None
    failed: bool = False

    def stop(self) -> None:
        self.stopping.set()
        for consumer in self.consumers:
            consumer.stop()

    def status(self) -> dict[str, Any]:
        return {
            "workers": self.names,
            "http_port": self.http_port,
            "consumers": [
                {"stream": c.stream, "group": c.group, "consumer": c.consumer}
                for c in self.consumers
            ],
        }

    async def run(self, *, install_signals: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if install_signals:
            # Installed before any connection is opened: a SIGTERM during start-up is a
            # request to stop, honoured once started, never an abrupt exit.
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            if early_stop_requested():
                self.stop()
        try:
            await self._run()
        finally:
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    async def _run(self) -> None:
        classes = resolve(self.names)
        self.names = [cls.name for cls in classes]
        need_s3 = any(getattr(cls, "uses_s3", False) for cls in classes)
        settings = self.settings
        # The port first: taken, it is one line and an immediate exit.
        sock = bind(settings.http_host, settings.http_port)
        leases: list[ConsumerLease] = []
        need = ("valkey", "postgres", "s3") if need_s3 else ("valkey", "postgres")
        try:
            async with clients(
                settings, need=need, pool_size=max(4, settings.concurrency + 2)
            ) as opened:
                await self._serve(opened.resources(), classes, leases, sock)
        finally:
            sock.close()

    async def _serve(
        self,
        resources: Resources,
        classes: list[Any],
        leases: list[ConsumerLease],
        sock: socket.socket,
    ) -> None:
        settings = self.settings
        tasks: list[asyncio.Task[None]] = []
        extra_routes: list[Any] = []
        assert resources.pool is not None
        inbox = PgInbox(resources.pool)
        try:
            for cls in classes:
                if isinstance(cls, type) and issubclass(cls, Worker):
                    worker = cls(resources)
                    name = settings.consumer_name
                    if name is None:
                        lease = ConsumerLease(
                            resources.redis,
                            worker.stream,
                            worker.group,
                            seconds=settings.consumer_lease_seconds,
                        )
                        leases.append(lease)
                        name = await lease.acquire()
                    # One consumer per partition of the worker's stream, one name for all.
                    partitioned = partition_consumers(worker, name, inbox)
                    self.consumers.extend(partitioned)
                    tasks.append(asyncio.create_task(_run_all(partitioned), name=cls.name))
                else:
                    service = cls(resources)
                    self.services.append(service)
                    extra_routes.extend(getattr(service, "routes", list)())
                    tasks.append(asyncio.create_task(service.run(self.stopping), name=cls.name))
            # Leases are renewed through the drain, and released once it is over.
            leases_end = Stopping()
            keepers = [
                asyncio.create_task(lease.keep(leases_end, log), name=f"lease:{lease.name}")
                for lease in leases
            ]
            tune_gc()
            self.server = OpsServer(
                resources, status=self.status, checks=_checks(resources), extra_routes=extra_routes
            )
            port = await self.server.start(settings.http_host, settings.http_port, sock)
            self.http_port = port
            log.info(
                "fleet.started",
                workers=self.names,
                consumers=[c.consumer for c in self.consumers],
                http_port=port,
            )
            self.started.set()
            try:
                waiter = asyncio.create_task(self.stopping.wait())
                await asyncio.wait([waiter, *tasks, *keepers], return_when=asyncio.FIRST_COMPLETED)
                if not self.stopping.is_set():
                    self.failed = True
                    self.stop()
                waiter.cancel()
                log.info("fleet.stopping", grace_seconds=settings.shutdown_grace_seconds)
                results = await asyncio.gather(*tasks, return_exceptions=True)
                leases_end.set()
                results += await asyncio.gather(*keepers, return_exceptions=True)
                for name, result in zip(
                    [*self.names, *(k.get_name() for k in keepers)], results, strict=False
                ):
                    if isinstance(result, BaseException):
                        self.failed = True
                        log.error("worker.failed", worker=name, error=repr(result))
            finally:
                for task in [*tasks, *keepers]:
                    task.cancel()
                await self.server.stop()
        finally:
            for lease in leases:
                await lease.release()
        log.info("fleet.stopped")


async def _run_all(consumers: list[StreamConsumer]) -> None:
    """Run a worker's partition consumers together; the first failure is the worker's."""
    await asyncio.gather(*(consumer.run() for consumer in consumers))


_early_stop = False


def _note_early_stop(signum: int, frame: object) -> None:
    global _early_stop
    _early_stop = True


def catch_early_stop() -> None:
    """Remember a SIGTERM/SIGINT that arrives before the event loop runs."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _note_early_stop)


def early_stop_requested() -> bool:
    return _early_stop


def _checks(resources: Resources) -> dict[str, Callable[[], Awaitable[None]]]:
    async def valkey() -> None:
        await resources.redis.ping()

    async def postgres() -> None:
        assert resources.pool is not None
        async with resources.pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")

    checks: dict[str, Callable[[], Awaitable[None]]] = {"valkey": valkey, "postgres": postgres}
    if resources.s3 is not None:
        s3 = resources.s3
        bucket = resources.settings.s3_bucket

        async def s3_check() -> None:
            await s3.head_bucket(Bucket=bucket)  # type: ignore[attr-defined]  # aioboto3 client is untyped here

        checks["s3"] = s3_check
    return checks
