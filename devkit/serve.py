"""``fleet demo --serve``: the embedded stack and every worker under a steady trickle of
realistic events until Ctrl-C, so a newcomer can watch the fleet work.

It prints where to look: the ops endpoint (``/metrics``, ``/status``), ``fleet top``
with the environment that reaches the embedded Valkey and, when Debian's
``prometheus`` is installed, a Prometheus scraping the fleet with the rules of
``ops/prometheus/rules/`` and its web page. SIGINT or SIGTERM stops the trickle, drains
the workers (graceful shutdown), stops Prometheus and the embedded servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console

from devkit import demo_exports, workload
from devkit.demo import _vex_part
from devkit.embedded import embedded_stack, free_port
from workers.app import Fleet, available_workers, migration_steps
from workers.clients import clients
from workers.db import load_migrations, migrate, schema_dir
from workers.errors import FleetError
from workers.publishing import publish
from workers.settings import Settings, load_settings

RULES = Path(__file__).resolve().parents[1] / "ops" / "prometheus" / "rules"
"""Our alerting and recording rules, when running from a checkout."""


def run_serve(
    state_dir: Path, *, port: int, rate: float, with_prometheus: bool, console: Console
) -> None:
    console.print(f"[bold]streamfleet demo --serve[/] — embedded stack under {state_dir}")
    with embedded_stack(state_dir, shield=True) as stack:
        env = {**stack.env(), "FLEET_EXPORT_KEY_FILE": str(demo_exports.export_key(state_dir))}
        os.environ.update(env)
        settings = load_settings(
            env, http_port=port, block_ms=200, maintenance_interval_seconds=2.0
        )
        asyncio.run(_serve(settings, env, state_dir, rate, with_prometheus, console))
    console.print("stopped; servers stopped")


async def _serve(
    settings: Settings,
    env: dict[str, str],
    state_dir: Path,
    rate: float,
    with_prometheus: bool,
    console: Console,
) -> None:
    async with clients(settings, need=("valkey", "postgres"), migrated=False) as opened:
        async with opened.pool.acquire() as conn:
            await migrate(conn, load_migrations(schema_dir(settings)), steps=migration_steps())
        fleet = Fleet(settings, available_workers())
        # SIGINT/SIGTERM stop the fleet (and with it the trickle): a graceful drain.
        runner = asyncio.create_task(fleet.run(install_signals=True))
        started = asyncio.create_task(fleet.started.wait())
        await asyncio.wait([started, runner], timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if runner.done():
            runner.result()  # re-raises the start-up failure
            raise FleetError("the fleet stopped during start-up")
        if not fleet.started.is_set():
            fleet.stop()
            raise FleetError("the fleet did not start within 60 s")
        components = 60
        if "vex-consensus" in fleet.names:
            await _vex_part(opened.pool, opened.redis, components / 200, console)
        with _prometheus(state_dir, fleet.http_port, with_prometheus) as prometheus_url:
            _where(console, fleet, env, rate, prometheus_url)
            try:
                await _trickle(opened.redis, fleet, settings, rate, components)
            finally:
                fleet.stop()
                await runner
    console.print("workers stopped")


def _where(
    console: Console, fleet: Fleet, env: dict[str, str], rate: float, prometheus: str | None
) -> None:
    base = f"http://127.0.0.1:{fleet.http_port}"
    top_env = f"FLEET_VALKEY_URL={env['FLEET_VALKEY_URL']}"
    every = " ".join(
        f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()) if k.startswith("FLEET_")
    )
    console.print(
        f"serving: {', '.join(fleet.names)} under a steady trickle "
        f"(about {rate:g} notifications/s, a scan every few seconds, an advisory every 10 s)"
    )
    console.print(f"  metrics     {base}/metrics")
    console.print(f"  status      {base}/status")
    console.print(f"  fleet top   {top_env} fleet top")
    console.print(f"  any fleet command, e.g. fleet status:  export {every}", soft_wrap=True)
    if prometheus is not None:
        console.print(f"  prometheus  {prometheus}  (our rules: {prometheus}/alerts)")
    elif shutil.which("prometheus") is None:
        console.print("  prometheus  not installed (Debian's `prometheus` package)")
    console.print("Ctrl-C stops everything.", highlight=False)


async def _trickle(
    client: Any, fleet: Fleet, settings: Settings, rate: float, components: int
) -> None:
    """Publish realistic events every second until the fleet stops."""
    seed = int(time.time())
    tick = 0
    partitions = settings.stream_partitions
    while not fleet.stopping.is_set():
        now = datetime.now(UTC)
        count = max(1, round(rate))
        await publish(
            client,
            "notify:delivery",
            workload.notification_events(count, seed=seed + tick, start=now),
            partitions=partitions,
        )
        if "scan-metrics" in fleet.names and tick % 3 == 0:
            scans = workload.scan_events(1, seed=seed + tick, start=now - timedelta(minutes=3))
            await publish(client, "scanner:events", scans, partitions=partitions)
        if "vex-consensus" in fleet.names and tick % 10 == 0:
            advisories = workload.advisory_events(1, seed=seed + tick, components=components)
            await publish(client, "concelier:drift", advisories, partitions=partitions)
        tick += 1
        if await fleet.stopping.sleep(1.0):
            return


@contextlib.contextmanager
def _prometheus(state_dir: Path, fleet_port: int | None, wanted: bool) -> Iterator[str | None]:
    """A Prometheus scraping the fleet every 5 s with our rules, when installed."""
    binary = shutil.which("prometheus")
    if not wanted or binary is None or fleet_port is None:
        yield None
        return
    folder = state_dir / "prometheus"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    rules = f"  - {RULES}/*.yml\n" if RULES.is_dir() else ""
    config = folder / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n"
        + (f"rule_files:\n{rules}" if rules else "")
        + "scrape_configs:\n  - job_name: streamfleet\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{fleet_port}']\n        labels:\n"
        "          worker: demo\n",
        encoding="utf-8",
    )
    with (folder / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=log,
            # Its own process group: the terminal's Ctrl-C is ours to handle, then we stop it.
            start_new_session=True,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
