"""``fleet demo``: the embedded stack, every worker, a realistic workload, a summary."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from contracts.base import Event
from devkit import demo_exports, workload
from devkit.embedded import embedded_stack
from workers import streams
from workers.app import Fleet, available_workers, migration_steps
from workers.clients import clients
from workers.db import load_migrations, migrate, schema_dir
from workers.errors import FleetError
from workers.publishing import publish
from workers.settings import Settings, load_settings


async def wait_consumed(client: Any, groups: list[tuple[str, str]], deadline_s: float) -> bool:
    """Poll until every (stream, group) has no lag and nothing pending, or time runs out."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        done = True
        for stream, group in groups:
            statuses = {s.group: s for s in await streams.group_statuses(client, stream)}
            st = statuses.get(group)
            if st is None or st.pending or (st.lag or 0):
                done = False
                break
        if done:
            return True
        await asyncio.sleep(0.2)
    return False


def run_demo(state_dir: Path, *, scale: float, console: Console) -> None:
    console.print(f"[bold]streamfleet demo[/] — embedded stack under {state_dir}")
    started = time.monotonic()
    with embedded_stack(state_dir) as stack:
        console.print(
            f"  valkey {stack.valkey_url}  postgres (unix socket)  s3 {stack.s3_endpoint_url}"
        )
        env = {**stack.env(), "FLEET_EXPORT_KEY_FILE": str(demo_exports.export_key(state_dir))}
        import os

        os.environ.update(env)
        settings = load_settings(
            env,
            http_port=0,
            consumer_name="demo-1",
            block_ms=200,
            maintenance_interval_seconds=2.0,
        )
        asyncio.run(_demo(settings, scale=scale, console=console))
    console.print(f"done in {time.monotonic() - started:.1f}s; servers stopped")


async def _demo(settings: Settings, *, scale: float, console: Console) -> None:
    async with clients(settings, need=("valkey", "postgres"), migrated=False) as opened:
        async with opened.pool.acquire() as conn:
            plan = await migrate(
                conn, load_migrations(schema_dir(settings)), steps=migration_steps()
            )
        console.print(f"  migrations: {len(plan.pending)} applied now, {len(plan.applied)} before")
        await _run_fleet(settings, opened.redis, opened.pool, scale=scale, console=console)


async def _run_fleet(
    settings: Settings, client: Any, pool: Any, *, scale: float, console: Console
) -> None:
    names = available_workers()
    fleet = Fleet(settings, names)
    runner = asyncio.create_task(fleet.run(install_signals=False))
    started = asyncio.create_task(fleet.started.wait())
    await asyncio.wait([started, runner], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if runner.done():
        runner.result()  # re-raises the start-up failure
        raise FleetError("the fleet stopped during start-up")
    if not fleet.started.is_set():
        raise FleetError("the fleet did not start within 60 s")
    console.print(f"  workers: {', '.join(fleet.names)}")

    try:
        n_notify = max(1, int(10_000 * scale))
        parts: list[tuple[str, Iterable[Event], int]] = [
            (
                "notify:delivery",
                workload.notification_events(n_notify, seed=int(time.time())),
                n_notify,
            ),
        ]
        signed_counted: float | None = None
        if "vex-consensus" in fleet.names:
            parts.append(await _vex_part(pool, client, scale, console))
            signed_counted = await demo_exports.signed_vex(
                pool, client, max(20, int(200 * scale)), console
            )
        if "scan-metrics" in fleet.names:
            parts.append(_scan_part(scale))
        total = sum(n for _, _, n in parts)
        with Progress(console=console) as progress:
            task = progress.add_task("publishing events", total=total)
            for stream, events, _ in parts:
                await publish(
                    client,
                    stream,
                    events,
                    lambda n: progress.advance(task, n),
                    partitions=settings.stream_partitions,
                )
        groups = [(c.stream, c.group) for c in fleet.consumers]
        t0 = time.monotonic()
        if not await wait_consumed(client, groups, deadline_s=90):
            raise FleetError("the workload was not consumed within 90 s; see `fleet status`")
        console.print(f"  consumed {total} events in {time.monotonic() - t0:.1f}s")
        await _summary(pool, client, groups, console)
        if "vex-consensus" in fleet.names:
            await _vex_summary(pool, client, console)
        if signed_counted is not None:
            await demo_exports.await_counted(signed_counted, console)
        if "export" in fleet.names:
            await demo_exports.export_vex(settings, pool, client, console)
        if "scan-metrics" in fleet.names:
            await _scan_summary(pool, console)
        for service in fleet.services:
            if getattr(service, "name", None) == "snapshot-retention":
                await _snapshot_part(service.snapshots, console)
    finally:
        fleet.stop()
        await runner


async def _summary(pool: Any, client: Any, groups: list[tuple[str, str]], console: Console) -> None:
    table = Table(title="streams")
    for column in ("stream", "group", "length", "pending", "lag", "dlq"):
        table.add_column(column)
    for stream, _group in groups:
        for st in await streams.group_statuses(client, stream):
            table.add_row(
                st.stream,
                st.group,
                str(st.length),
                str(st.pending),
                str(st.lag),
                str(st.dlq_length),
            )
    console.print(table)
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT channel_type, status, count(*) AS n FROM notify.delivery_log "
            "GROUP BY 1, 2 ORDER BY 1, 2"
        )
    deliveries = Table(title="notify.delivery_log")
    for column in ("channel", "status", "rows"):
        deliveries.add_column(column)
    for r in rows:
        deliveries.add_row(r["channel_type"], r["status"], str(r["n"]))
    console.print(deliveries)


# ------------------------------------------------------------------ VEX part


async def _vex_part(
    pool: Any, client: Any, scale: float, console: Console
) -> tuple[str, Iterable[Event], int]:
    """Import the demo's VEX documents and trust rows (as ``fleet vex`` would), publish
    the results, and return the advisories for ``concelier:drift``."""
    from workers.vex_consensus import outbox
    from workers.vex_consensus import service as vex
    from workers.vex_consensus.documents import parse_document

    started = time.monotonic()
    components = max(20, int(200 * scale))
    documents = [parse_document(data) for _, data in workload.vex_documents(components)]
    async with pool.acquire() as conn, conn.transaction():
        trusted = await vex.set_trust(conn, workload.vex_trust())
        imported = await vex.import_documents(conn, documents)
    trusted.recompute.observe()
    imported.recompute.observe()
    published = await outbox.publish(pool, client)
    console.print(
        f"  vex: {len(documents)} OpenVEX documents from {len(documents)} issuers, "
        f"{imported.inserted} new statements, {published} consensus results published "
        f"in {time.monotonic() - started:.1f}s"
    )
    n_advisories = max(1, int(40 * scale))
    return (
        "concelier:drift",
        workload.advisory_events(n_advisories, seed=int(time.time()), components=components),
        n_advisories,
    )


async def _vex_summary(pool: Any, client: Any, console: Console) -> None:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT resolved_status, count(*) AS n, "
            "count(*) FILTER (WHERE conflict_detected) AS conflicts "
            "FROM vex.consensus GROUP BY 1 ORDER BY 1"
        )
        open_conflicts = await conn.fetchval(
            "SELECT count(*) FROM vex.consensus_conflicts WHERE resolved_at IS NULL"
        )
        waiting = await conn.fetchval("SELECT count(*) FROM vex.consensus_outbox")
    table = Table(title="vex.consensus")
    for column in ("resolved status", "pairs", "with conflict"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["resolved_status"], str(r["n"]), str(r["conflicts"]))
    console.print(table)
    console.print(
        f"  vex: {sum(r['n'] for r in rows)} consensus rows, {open_conflicts} open conflicts "
        f"in the review queue, {int(await client.xlen('vex:consensus'))} events on "
        f"vex:consensus, {waiting} waiting in the outbox"
    )


# ------------------------------------------------------------------ scan part


def _scan_part(scale: float) -> tuple[str, Iterable[Event], int]:
    """Scans from every demo tenant over the last hours: six phases each, some failures
    and replays, published as they happen (lifecycle order per scan, scans interleaved)."""
    from datetime import UTC, datetime, timedelta

    n_scans = max(10, int(2_000 * scale))
    started = datetime.now(UTC) - timedelta(seconds=1.5 * n_scans + 600)
    events = workload.scan_events(n_scans, seed=int(time.time()), start=started)
    return ("scanner:events", events, len(events))


async def _scan_summary(pool: Any, console: Console) -> None:
    from workers.scan_metrics.report import render, tte_report

    async with pool.acquire() as conn:
        report = await tte_report(conn, tenant_id=None, since=None)
    for table in render(report, title="Scan Time-to-Evidence"):
        console.print(table)


async def _snapshot_part(snapshots: Any, console: Console) -> None:
    """Import feed snapshots for a few tools, roll one back, and print the SLA."""
    import json
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    imports = [
        ("trivy", "0.58.1", now - timedelta(days=9), 400),
        ("trivy", "0.58.2", now - timedelta(days=2), 420),
        ("syft", "1.18.0", now - timedelta(days=16), 250),
        ("grype-db", "5.0.0", now - timedelta(days=1), 300),
        ("grype-db", "5.0.1", now - timedelta(hours=3), 310),
    ]
    for tool, version, at, count in imports:
        records = [
            {"id": f"{tool}-{version}-{i}", "purl": f"pkg:npm/demo-{i}@1.{i % 7}.0"}
            for i in range(count)
        ]
        payload = json.dumps({"records": records}).encode()
        await snapshots.import_snapshot(tool, version, payload, actor="demo", now=at)
    rollback = await snapshots.rollback(
        "grype-db", reason="demo: the newest import is bad", actor="demo"
    )
    sla = await snapshots.sla()
    table = Table(title="feed snapshots (S3 payloads, BLAKE3-verified)")
    for column in ("tool", "active snapshot", "freshness", "age"):
        table.add_column(column)
    body = msgspec.to_builtins(sla)["sla"]
    for entry in body:
        table.add_row(
            entry.get("tool", "?"),
            str(entry.get("snapshotId") or "-"),
            str(entry.get("status") or entry.get("state") or "?"),
            str(entry.get("age") or "-"),
        )
    console.print(table)
    result = rollback.rollback
    source = result.from_.snapshot_id if result.from_ else "-"
    console.print(f"  rollback of grype-db: {source} -> {result.to.snapshot_id} ({result.status})")
    verification = await snapshots.verify_audit()
    console.print(f"  audit chain: {msgspec.to_builtins(verification)}")
