"""``fleet tte``: TTE p50/p95 against the SLOs, compliance and the phase breakdown."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

import asyncpg
import msgspec
import typer

from workers.scan_metrics.report import TteReport, parse_window, render, tte_report

EXIT_USAGE = 2


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
    # Imported here: workers.cli imports this module while it registers its commands.
    from workers.cli import CliError, fail, out, run_async, settings
    from workers.db import create_pool

    try:
        tenant_id = None if tenant is None else uuid.UUID(tenant)
    except ValueError:
        raise fail(f"--tenant {tenant!r} is not a UUID", EXIT_USAGE) from None
    try:
        window = parse_window(since)
    except ValueError as exc:
        raise fail(f"--since {exc}", EXIT_USAGE) from None
    try:
        start = datetime.now(UTC) - window
    except OverflowError:
        raise fail(f"--since {since!r} reaches before year 1", EXIT_USAGE) from None
    cfg = settings()

    async def go() -> TteReport:
        pool = await create_pool(cfg, max_size=1)
        try:
            async with pool.acquire() as conn:
                return await tte_report(conn, tenant_id=tenant_id, since=start)
        except asyncpg.UndefinedTableError:
            raise CliError("scanner.scan_metrics does not exist; run `fleet migrate`") from None
        except asyncpg.PostgresError as exc:
            raise CliError(f"PostgreSQL: {exc}") from None
        finally:
            await pool.close()

    report = run_async(go)
    if json_output:
        typer.echo(msgspec.json.encode(report).decode())
        return
    for table in render(report):
        out.print(table)
