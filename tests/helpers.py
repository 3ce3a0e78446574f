"""Test helpers: polling with a deadline (never sleeping as synchronisation),
running a consumer in the background, and subprocess workers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from prometheus_client import REGISTRY

from workers.app import migration_steps
from workers.db import load_migrations, migrate, schema_dir
from workers.kernel import NoInbox, PgInbox, StreamConsumer
from workers.kernel.inbox import Inbox, apply_new
from workers.kernel.worker import Resources, Worker


async def poll(
    predicate: Callable[[], Awaitable[bool]], *, timeout: float = 30.0, what: str = "condition"
) -> None:
    """Re-check ``predicate`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if await predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(
    worker: Worker[Any, Any], consumer: str = "c1", inbox: Inbox | None = None
) -> AsyncIterator[StreamConsumer]:
    """Run ``worker`` as one consumer until the block exits, then stop it gracefully.
    The inbox defaults to the worker's database (none without a pool)."""
    runner = StreamConsumer(worker, consumer, inbox or inbox_of(worker))
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(runner.ready.wait(), timeout=10)
    try:
        yield runner
    finally:
        runner.stop()
        await asyncio.wait_for(task, timeout=30)


async def apply_directly(
    worker: Worker[Any, Any], pool: asyncpg.Pool, events: Any, *, group: str | None = None
) -> Any:
    """Apply ``events`` through ``worker`` as the kernel would, without a stream: one
    transaction recording them in the inbox of ``group`` (by default a new group each
    call, so applying the same events again exercises the statement, not the inbox).
    Returns ``apply``'s result."""
    chosen = group or f"direct-{uuid.uuid4().hex[:8]}"
    _, result = await apply_new(PgInbox(pool), chosen, worker.apply, list(events))
    return result


class OpenTx:
    """The kernel's transaction as ``apply`` sees it, over a connection whose transaction
    the test opened itself (for workers that use ``tx.connection()``)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, statement: Any, *params: Any) -> None:
        raise NotImplementedError("use apply_directly for composed statements")

    async def connection(self) -> Any:
        return self._conn


def inbox_of(worker: Worker[Any, Any]) -> Inbox:
    pool = worker.resources.pool
    return NoInbox() if pool is None else PgInbox(pool)


@contextlib.contextmanager
def server_dir(prefix: str) -> Iterator[Path]:
    """A fresh folder for the servers a test starts, removed afterwards. PostgreSQL runs
    as an unprivileged user when the tests run as root, so the folder is world-readable
    and outside pytest's private (0700) temporary tree."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def with_database(url: str, database: str) -> str:
    """Swap the database name in a libpq URL (works with ``?host=`` socket URLs too)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


async def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name`` on the server of ``server_url`` if it exists, connections and all."""
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def empty_database(server_url: str, name: str) -> str:
    """(Re)create database ``name``, empty, on the server of ``server_url``; its URL."""
    await drop_database(server_url, name)
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return with_database(server_url, name)


async def migrated_database(server_url: str, name: str) -> str:
    """(Re)create database ``name`` on the server of ``server_url``, apply every
    migration, and return its URL."""
    url = await empty_database(server_url, name)
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, load_migrations(schema_dir()), steps=migration_steps())
    finally:
        await conn.close()
    return url


def metric(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def resources(settings: Any, redis: Any, pool: Any = None) -> Resources:
    return Resources(settings=settings, redis=redis, pool=pool)


def fleet_process(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    """Start ``fleet <args>`` as a real subprocess with ``env`` on top of ours.

    Output goes to a temporary file (``proc.log_path``), never a pipe nobody reads.
    """
    full = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    fd, log_path = tempfile.mkstemp(prefix="fleet-", suffix=".log")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers", *args], env=full, stdout=fd, stderr=fd
        )
    finally:
        os.close(fd)
    proc.log_path = log_path  # type: ignore[attr-defined]
    return proc


def process_log(proc: subprocess.Popen[bytes]) -> str:
    path: str = proc.log_path  # type: ignore[attr-defined]
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.read()


def fleet_cli(env: dict[str, str], *args: str, stdin: bytes | None = None, timeout: float = 60):  # type: ignore[no-untyped-def]
    full = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "workers", *args],
        env=full,
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def fleet_in_process(capsys: Any, monkeypatch: Any, *args: str) -> tuple[int, str, str]:
    """``fleet ARGS`` through the real entry point in this process: (exit code, stdout,
    stderr). For commands that run no event loop of their own (argument errors, local
    files), where a subprocess would only add its start-up time."""
    from workers.cli import main

    monkeypatch.setattr(sys, "argv", ["fleet", *args])
    try:
        main()
    except SystemExit as exited:
        code = exited.code
    else:  # main always exits
        raise AssertionError("fleet returned without exiting")
    captured = capsys.readouterr()
    return int(code or 0), captured.out, captured.err.strip()
