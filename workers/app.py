"""Process wiring: the one place that opens clients, starts workers and closes them.

Start-up order: settings → Valkey client (pinged) → PostgreSQL pool → S3 client
(when a worker needs one) → workers → ops HTTP endpoint. Shutdown stops the
workers (each drains within the grace period), then closes in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import asyncpg
import structlog

from workers import streams
from workers.db import (
    DataStep,
    Failure,
    classify,
    create_pool,
    load_migrations,
    require_migrated,
    schema_dir,
)
from workers.errors import ConfigError, ExitCode, error_text
from workers.http import OpsServer, bind
from workers.kernel import PgInbox, Stopping, StreamConsumer, tune_gc
from workers.kernel.lease import ConsumerLease
from workers.kernel.worker import Resources, Worker
from workers.settings import Settings, redact_url
from workers.vex_consensus.migration import canonicalize_stored_purls

log = structlog.get_logger("workers.app")

T = TypeVar("T")

WORKERS: dict[str, str] = {
    "scan-metrics": "workers.scan_metrics:ScanMetricsWorker",
    "vex-consensus": "workers.vex_consensus:VexConsensusWorker",
    "notify-delivery": "workers.notify_delivery:NotifyDeliveryWorker",
    "snapshot-retention": "workers.snapshot_retention:SnapshotRetentionService",
}
"""Worker names accepted by ``fleet run``, mapped to their implementation."""


def migration_steps() -> dict[int, DataStep]:
    """Migration version -> the Python step run after that migration's SQL."""
    return {7: canonicalize_stored_purls}


class Service(Protocol):
    """A worker that is not a stream consumer (e.g. a scheduled job)."""

    name: str
    uses_s3: bool

    async def run(self, stopping: Stopping) -> None: ...


def available_workers() -> list[str]:
    """Worker names whose implementation is importable in this build."""
    found = []
    for name, target in WORKERS.items():
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        if hasattr(module, attr):
            found.append(name)
    return found


def resolve(names: list[str]) -> list[Any]:
    """Worker classes for ``names`` (all available workers when empty)."""
    chosen = names or available_workers()
    classes = []
    for name in chosen:
        target = WORKERS.get(name)
        if target is None or name not in available_workers():
            known = ", ".join(available_workers())
            raise ConfigError(f"unknown worker {name!r} (known: {known})", ExitCode.USAGE)
        module_name, attr = target.split(":")
        classes.append(getattr(importlib.import_module(module_name), attr))
    return classes


@contextlib.asynccontextmanager
async def open_resources(settings: Settings, *, need_s3: bool) -> AsyncIterator[Resources]:
    redis = streams.connect(settings)
    try:
        await streams.ping(redis, settings)
        pool = await create_pool(settings, max_size=max(4, settings.concurrency + 2))
        try:
            resources = Resources(settings=settings, redis=redis, pool=pool)
            if need_s3:
                from workers.s3 import S3Error, open_s3

                async with contextlib.AsyncExitStack() as stack:
                    try:
                        resources.s3 = await stack.enter_async_context(open_s3(settings))
                    except S3Error as exc:
                        raise ConfigError(
                            f"{exc} (snapshot-retention needs S3: set FLEET_S3_ENDPOINT_URL "
                            "and AWS credentials, or name only the stream workers to `fleet run`)",
                            ExitCode.S3,
                        ) from None
                    yield resources
            else:
                yield resources
        finally:
            await pool.close()
    finally:
        await redis.aclose()


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
        try:
            async with open_resources(settings, need_s3=need_s3) as resources:
                assert resources.pool is not None  # open_resources always opens the pool
                await _check_migrated(resources.pool, settings)
                await self._serve(resources, classes, leases, sock)
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
                    consumer = StreamConsumer(worker, name, inbox)
                    self.consumers.append(consumer)
                    tasks.append(asyncio.create_task(consumer.run(), name=cls.name))
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


async def _check_migrated(pool: Any, settings: Settings, attempts: int = 5) -> None:
    """Refuse an unmigrated database; a connection lost meanwhile is retried a few times,
    then reported in one line (:attr:`ExitCode.POSTGRES`)."""
    where = redact_url(settings.database_url)
    for attempt in range(1, attempts + 1):
        try:
            async with pool.acquire() as conn:
                await require_migrated(conn, load_migrations(schema_dir(settings)), where)
            return
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            if classify(exc) is not Failure.OUTAGE or attempt == attempts:
                raise ConfigError(
                    f"PostgreSQL at {where}: {error_text(exc)}", ExitCode.POSTGRES
                ) from None
            await asyncio.sleep(0.2 * 2**attempt)  # backoff before the next attempt


def run_event_loop(
    main: Coroutine[Any, Any, T], kind: Literal["uvloop", "asyncio"] = "uvloop"
) -> T:
    """Run ``main`` to completion on a new event loop: uvloop when asked for and
    installed (its transports and scheduling cost the consumer about a tenth less CPU
    per event than the standard loop's), else asyncio's."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


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
