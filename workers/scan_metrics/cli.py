"""``fleet tte``: TTE p50/p95 against the SLOs, compliance and the phase breakdown."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

import typer

from workers.clients import clients
from workers.errors import ExitCode
from workers.scan_metrics.report import TteReport, parse_window, render, tte_report
from workers.shell import echo_json, fail, out, run_async, settings


def tte(
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Tenant id (UUID); default: every tenant.")
    ] = None,
    since: Annotated[
        str, typer.Option("--since", help="Window back from now, e.g. 24h, 7d, 2w.")
    ] = "7d",
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Time-to-Evidence of completed scans: p50, p95, SLO compliance, phase breakdown."""
    try:
        tenant_id = None if tenant is None else uuid.UUID(tenant)
    except ValueError:
        raise fail(f"--tenant {tenant!r} is not a UUID", ExitCode.USAGE) from None
    try:
        window = parse_window(since)
    except ValueError as exc:
        raise fail(f"--since {exc}", ExitCode.USAGE) from None
    try:
        start = datetime.now(UTC) - window
    except OverflowError:
        raise fail(f"--since {since!r} reaches before year 1", ExitCode.USAGE) from None
    cfg = settings()

    async def go() -> TteReport:
        async with (
            clients(cfg, need=("postgres",), pool_size=1) as opened,
            opened.pool.acquire() as conn,
        ):
            return await tte_report(conn, tenant_id=tenant_id, since=start)

    report = run_async(go)
    if json_output:
        echo_json(report, indent=0)
        return
    for table in render(report):
        out.print(table)
