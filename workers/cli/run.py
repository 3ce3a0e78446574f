"""``fleet run`` and ``fleet migrate``: the workers of one process, and the schema."""

from __future__ import annotations

from typing import Annotated

import typer

from workers.app import Fleet, catch_early_stop, migration_steps, resolve
from workers.clients import clients
from workers.db import load_migrations, schema_dir
from workers.db import migrate as apply_migrations
from workers.errors import ConfigError, ExitCode
from workers.logs import configure_logging
from workers.shell import fail, out, run_async, settings
from workers.tracing import tracing_for

app = typer.Typer()


@app.command()
def run(
    worker: Annotated[
        list[str] | None, typer.Argument(help="Worker names (default: all of them).")
    ] = None,
) -> None:
    """Run workers in this process until SIGTERM/SIGINT (graceful drain)."""
    catch_early_stop()
    cfg = settings()
    configure_logging(cfg.log_level, cfg.log_format, traced=cfg.tracing != "off")
    names = list(worker or [])
    try:
        resolve(names)
    except ConfigError as exc:
        raise fail(str(exc), exc.exit_code) from None
    fleet = Fleet(cfg, names)
    try:
        with tracing_for(cfg):
            run_async(fleet.run, cfg.event_loop)
    except ConfigError as exc:
        raise fail(str(exc), exc.exit_code) from None
    if fleet.failed:
        raise typer.Exit(ExitCode.FAILED)


@app.command()
def migrate(
    check: Annotated[
        bool, typer.Option("--check", help="Apply nothing; exit 1 when migrations are pending.")
    ] = False,
) -> None:
    """Apply the ordered SQL migrations in schema/ (once, even when run concurrently)."""
    cfg = settings()

    async def go() -> int:
        migrations = load_migrations(schema_dir(cfg))
        async with (
            clients(cfg, need=("postgres",), migrated=False, pool_size=1) as opened,
            opened.pool.acquire() as conn,
        ):
            plan = await apply_migrations(
                conn,
                migrations,
                check_only=check,
                on_applied=lambda m: out.print(f"applied {m.path.name}"),
                steps=migration_steps(),
            )
        if check:
            for m in plan.pending:
                out.print(f"pending {m.path.name}")
            if plan.pending:
                return ExitCode.FAILED
            out.print(f"up to date ({len(plan.applied)} migrations applied)")
            return ExitCode.OK
        out.print(f"up to date ({len(plan.applied) + len(plan.pending)} migrations applied)")
        return ExitCode.OK

    code = run_async(go)
    if code:
        raise typer.Exit(code)
