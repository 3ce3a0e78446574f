"""The ``fleet`` command line.

Every command reads the same ``FLEET_*`` settings as the workers. Bad input
ends with one ``error: …`` line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import redis.exceptions as redis_exc
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from contracts.base import Event
from contracts.registry import STREAMS, contract_for_stream
from contracts.wire import DecodeError, decode_data
from workers import streams
from workers.errors import ConfigError, ExitCode, FleetError
from workers.logs import configure_logging
from workers.publishing import publish as publish_events
from workers.settings import Settings, load_settings

T = TypeVar("T")

app = typer.Typer(
    name="fleet",
    help="streamfleet: event-driven workers on Valkey streams.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
dlq_app = typer.Typer(help="Inspect, replay and purge dead-letter streams.", no_args_is_help=True)
consumers_app = typer.Typer(help="Consumer maintenance.", no_args_is_help=True)
contracts_app = typer.Typer(help="Published event contracts.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
app.add_typer(consumers_app, name="consumers")
app.add_typer(contracts_app, name="contracts")

out = Console()
err = Console(stderr=True)

EXIT_ERROR = ExitCode.FAILED
EXIT_USAGE = ExitCode.USAGE


class CliError(FleetError):
    """A one-line error for the user."""


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def settings() -> Settings:
    return load_settings()


def run_async(
    factory: Callable[[], Coroutine[Any, Any, T]],
    event_loop: Literal["uvloop", "asyncio"] = "asyncio",
) -> T:
    """Run a coroutine, turning expected failures into one-line errors."""
    from workers.app import run_event_loop

    try:
        return run_event_loop(factory(), event_loop)
    except ConfigError as exc:
        raise fail(str(exc), exc.exit_code) from None
    except (CliError, FleetError) as exc:
        raise fail(str(exc)) from None
    except (redis_exc.ConnectionError, redis_exc.TimeoutError) as exc:
        raise fail(f"Valkey: {exc}") from None
    except redis_exc.ResponseError as exc:
        raise fail(f"Valkey refused the command: {exc}") from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@contextlib.asynccontextmanager
async def _valkey(cfg: Settings) -> Any:
    client = streams.connect(cfg)
    try:
        await streams.ping(client, cfg)
        yield client
    finally:
        await client.aclose()


def _check_stream(stream: str) -> None:
    try:
        contract_for_stream(stream)
    except KeyError as exc:
        raise fail(str(exc.args[0]), EXIT_USAGE) from None


def _streams_for(stream: str | None) -> list[str]:
    if stream is None:
        return [s for s, c in STREAMS.items() if c.default_group]
    _check_stream(stream)
    return [stream]


StreamOpt = Annotated[
    str | None, typer.Option("--stream", "-s", help="One stream (default: every consumed stream).")
]

# ------------------------------------------------------------------ run / migrate


@app.command()
def run(
    worker: Annotated[
        list[str] | None, typer.Argument(help="Worker names (default: all of them).")
    ] = None,
) -> None:
    """Run workers in this process until SIGTERM/SIGINT (graceful drain)."""
    from workers.app import Fleet, catch_early_stop, resolve

    catch_early_stop()
    cfg = settings()
    configure_logging(cfg.log_level, cfg.log_format)
    names = list(worker or [])
    try:
        resolve(names)
    except ConfigError as exc:
        raise fail(str(exc), exc.exit_code) from None
    fleet = Fleet(cfg, names)
    run_async(fleet.run, cfg.event_loop)
    if fleet.failed:
        raise typer.Exit(EXIT_ERROR)


@app.command()
def migrate(
    check: Annotated[
        bool, typer.Option("--check", help="Apply nothing; exit 1 when migrations are pending.")
    ] = False,
) -> None:
    """Apply the ordered SQL migrations in schema/ (once, even when run concurrently)."""
    from workers.app import migration_steps
    from workers.db import create_pool, load_migrations, schema_dir
    from workers.db import migrate as apply_migrations

    cfg = settings()

    async def go() -> int:
        migrations = load_migrations(schema_dir(cfg))
        pool = await create_pool(cfg, max_size=1)
        try:
            async with pool.acquire() as conn:
                plan = await apply_migrations(
                    conn,
                    migrations,
                    check_only=check,
                    on_applied=lambda m: out.print(f"applied {m.path.name}"),
                    steps=migration_steps(),
                )
        finally:
            await pool.close()
        if check:
            for m in plan.pending:
                out.print(f"pending {m.path.name}")
            if plan.pending:
                return 1
            out.print(f"up to date ({len(plan.applied)} migrations applied)")
            return 0
        out.print(f"up to date ({len(plan.applied) + len(plan.pending)} migrations applied)")
        return 0

    code = run_async(go)
    if code:
        raise typer.Exit(code)


# ------------------------------------------------------------------ publish


def _read_lines(source: str) -> Iterator[tuple[int, bytes]]:
    if source == "-":
        for number, line in enumerate(sys.stdin.buffer, start=1):
            yield number, line
        return
    path = Path(source)
    if not path.is_file():
        raise fail(f"{source}: no such file", EXIT_USAGE)
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            yield number, line


def parse_publish_lines(
    stream: str, lines: Iterator[tuple[int, bytes]]
) -> tuple[list[Event], list[str]]:
    """Validate JSON lines against ``stream``'s contracts: (events, problems by line)."""
    types = contract_for_stream(stream).types_by_name()
    entries: list[Event] = []
    problems: list[str] = []
    for number, raw in lines:
        line = raw.strip()
        if not line:
            continue
        try:
            head = msgspec.json.decode(line)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            problems.append(f"line {number}: not JSON ({exc})")
            continue
        if not isinstance(head, dict):
            problems.append(f"line {number}: expected a JSON object")
            continue
        type_name = head.get("type")
        cls = types.get(type_name) if isinstance(type_name, str) else None
        if cls is None:
            known = ", ".join(sorted(types))
            problems.append(
                f"line {number}: type {type_name!r} does not belong on {stream} ({known})"
            )
            continue
        try:
            event = decode_data(cls, line)
        except DecodeError as exc:
            problems.append(f"line {number}: {exc}")
            continue
        entries.append(event)
    return entries, problems


@app.command()
def publish(
    stream: Annotated[str, typer.Argument(help="Target stream, e.g. notify:delivery.")],
    source: Annotated[str, typer.Argument(help="A file of JSON lines (one event each), or -.")],
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Publish the valid lines even if some are bad.")
    ] = False,
) -> None:
    """Validate events against the contracts, then XADD them (all or, by default, none)."""
    _check_stream(stream)
    entries, problems = parse_publish_lines(stream, _read_lines(source))
    for problem in problems[:50]:
        err.print(f"[red]{problem}[/]", highlight=False)
    if len(problems) > 50:
        err.print(f"… and {len(problems) - 50} more bad lines")
    if problems and not skip_invalid:
        raise fail(f"{len(problems)} invalid line(s); nothing was published")
    cfg = settings()

    async def go() -> None:
        async with _valkey(cfg) as client:
            with Progress(console=err, transient=True) as progress:
                task = progress.add_task(f"publishing to {stream}", total=len(entries))
                await publish_events(client, stream, entries, lambda n: progress.advance(task, n))

    run_async(go)
    skipped = f", skipped {len(problems)} invalid" if problems else ""
    out.print(f"published {len(entries)} event(s) to {stream}{skipped}")
    if problems:
        raise typer.Exit(EXIT_ERROR)


# ------------------------------------------------------------------ status


@app.command()
def status(
    stream: StreamOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Per stream and group: length, lag, pending, oldest pending age, consumers, DLQ length."""
    names = _streams_for(stream)
    cfg = settings()

    async def go() -> list[streams.GroupStatus]:
        rows: list[streams.GroupStatus] = []
        async with _valkey(cfg) as client:
            for name in names:
                found = await streams.group_statuses(client, name)
                if not found:
                    length = int(await client.xlen(name))
                    dlq = int(await client.xlen(streams.dlq_name(name)))
                    found = [streams.GroupStatus(name, "-", length, None, 0, 0.0, 0, dlq, "-")]
                rows.extend(found)
        return rows

    rows = run_async(go)
    if as_json:
        out.print_json(json.dumps([msgspec.to_builtins(r) for r in rows]))
        return
    table = Table(title="streamfleet status")
    for column in ("stream", "group", "length", "lag", "pending", "oldest pending", "consumers"):
        table.add_column(column, justify="left" if column in ("stream", "group") else "right")
    table.add_column("dlq", justify="right")
    for r in rows:
        table.add_row(
            r.stream,
            r.group,
            str(r.length),
            "?" if r.lag is None else (f">={r.lag}" if r.lag_estimated else str(r.lag)),
            str(r.pending),
            f"{r.oldest_pending_age_seconds:.1f}s",
            str(r.consumers),
            str(r.dlq_length),
        )
    out.print(table)


@app.command()
def top(
    stream: StreamOpt = None,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between refreshes (and samples).")
    ] = 1.0,
) -> None:
    """Live view per stream and group: rates in and out, lag, pending, consumers, DLQ."""
    from rich.live import Live

    from workers.top import frames

    names = _streams_for(stream)
    cfg = settings()

    async def go() -> None:
        async with _valkey(cfg) as client:
            shown = frames(client, names, interval)
            if once:
                out.print(await anext(shown))
                return
            with Live(console=out, auto_refresh=False) as live:
                async for table in shown:
                    live.update(table, refresh=True)

    run_async(go)


# ------------------------------------------------------------------ dlq


@dlq_app.command("list")
def dlq_list(
    stream: Annotated[str, typer.Argument(help="The source stream, e.g. notify:delivery.")],
    count: Annotated[int, typer.Option(min=1, help="Entries to show.")] = 20,
    reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
) -> None:
    """Show dead letters with their reason, error and delivery count."""
    _check_stream(stream)
    cfg = settings()

    async def go() -> list[streams.DlqEntry]:
        async with _valkey(cfg) as client:
            return await streams.dlq_entries(client, stream, count=count, reason=reason)

    rows = run_async(go)
    table = Table(title=f"{streams.dlq_name(stream)} ({len(rows)} shown)")
    for column in ("id", "type", "reason", "deliveries", "error"):
        table.add_column(column)
    for d in rows:
        f = d.fields
        table.add_row(
            d.id,
            f.get("type", b"-").decode(errors="replace")[:40],
            d.reason,
            f.get("dlq.deliveries", b"?").decode(),
            f.get("dlq.error", b"").decode(errors="replace")[:120],
        )
    out.print(table)


@dlq_app.command("replay")
def dlq_replay(
    stream: Annotated[str, typer.Argument(help="The source stream.")],
    ids: Annotated[list[str] | None, typer.Argument(help="Dead-letter ids (default: all).")] = None,
    reason: Annotated[str | None, typer.Option(help="Only entries with this reason.")] = None,
) -> None:
    """Put dead letters back on their stream (atomically moved, never duplicated)."""
    _check_stream(stream)
    cfg = settings()

    async def go() -> int:
        async with _valkey(cfg) as client:
            return await streams.dlq_replay(client, stream, ids or None, reason=reason)

    out.print(f"replayed {run_async(go)} entr(y/ies) onto {stream}")


@dlq_app.command("purge")
def dlq_purge(
    stream: Annotated[str, typer.Argument(help="The source stream.")],
    ids: Annotated[list[str] | None, typer.Argument(help="Dead-letter ids (default: all).")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Required to purge everything.")] = False,
) -> None:
    """Delete dead letters for good."""
    _check_stream(stream)
    if not ids and not yes:
        raise fail("purging every dead letter needs --yes", EXIT_USAGE)
    cfg = settings()

    async def go() -> int:
        async with _valkey(cfg) as client:
            return await streams.dlq_purge(client, stream, ids or None)

    out.print(f"purged {run_async(go)} dead letter(s) from {streams.dlq_name(stream)}")


# ------------------------------------------------------------------ consumers / trim


@consumers_app.command("prune")
def consumers_prune(
    stream: StreamOpt = None,
    idle: Annotated[
        float, typer.Option(min=0, help="Prune consumers idle longer than this many seconds.")
    ] = 3600.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would go.")] = False,
) -> None:
    """Delete idle consumers. Their pending entries first move to the group's most recently
    active consumer (never pruned itself); a consumer still holding entries is never deleted."""
    names = _streams_for(stream)
    cfg = settings()

    async def go() -> list[tuple[str, str, streams.PruneResult]]:
        results = []
        async with _valkey(cfg) as client:
            for name in names:
                for st in await streams.group_statuses(client, name):
                    target = await _most_active_consumer(client, name, st.group)
                    result = await streams.prune_consumers(
                        client,
                        name,
                        st.group,
                        idle_ms=int(idle * 1000),
                        claim_to=target,
                        dry_run=dry_run,
                    )
                    results.append((name, st.group, result))
        return results

    for name, group, result in run_async(go):
        verb = "would delete" if dry_run else "deleted"
        out.print(
            f"{name} / {group}: {verb} {len(result.deleted)} consumer(s), moved {result.claimed} "
            f"pending entr(y/ies), kept {len(result.kept)} holding work"
        )


async def _most_active_consumer(client: Any, stream: str, group: str) -> str | None:
    """The consumer that read most recently: it receives the pruned consumers' entries
    and is itself never pruned in the same run."""
    consumers = await client.xinfo_consumers(stream, group)
    if not consumers:
        return None
    best = min(consumers, key=lambda c: int(c["idle"]))
    name = best["name"]
    return str(name.decode() if isinstance(name, bytes) else name)


@app.command()
def trim(
    stream: StreamOpt = None,
    retention_days: Annotated[
        float | None, typer.Option(min=0, help="Override FLEET_STREAM_RETENTION_DAYS.")
    ] = None,
    max_len: Annotated[
        int | None, typer.Option(min=0, help="Hard cap (entries); 0 disables it.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show the plan.")] = False,
) -> None:
    """Trim streams by retention, never past an entry some group has not acknowledged."""
    names = _streams_for(stream)
    cfg = settings()
    days = cfg.stream_retention_days if retention_days is None else retention_days
    cap = cfg.stream_max_len if max_len is None else max_len

    async def go() -> list[streams.TrimPlan]:
        async with _valkey(cfg) as client:
            return [
                await streams.trim_stream(
                    client, name, retention_days=days, max_len=cap, dry_run=dry_run
                )
                for name in names
            ]

    for plan in run_async(go):
        verb = "would remove" if dry_run else "removed"
        line = (
            f"{plan.stream}: {verb} {plan.removable} of {plan.length} "
            f"(limited by {plan.limited_by})"
        )
        if plan.cap_removals:
            line += f"; hard cap {verb.split()[-1]} {plan.cap_removals} unconsumed"
        out.print(line)


# ------------------------------------------------------------------ contracts


@contracts_app.command("export")
def contracts_export(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Output folder (default: contracts/schemas).")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 if files differ from code.")
    ] = False,
) -> None:
    """Write a JSON Schema per event type and an AsyncAPI 3.0 document."""
    from contracts import export

    target = directory or export.SCHEMA_DIR
    if check:
        stale = export.drift(target)
        if stale:
            raise fail(f"contract files differ from the code: {', '.join(stale)}")
        out.print(f"{target}: up to date")
        return
    for path in export.write(target):
        out.print(f"wrote {path}")


# ------------------------------------------------------------------ demo


@app.command()
def demo(
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Where the embedded servers keep their data.")
    ] = Path(".state/demo"),
    scale: Annotated[float, typer.Option(min=0.01, help="Workload size multiplier.")] = 1.0,
) -> None:
    """Start the embedded stack, run every worker on a realistic workload, print a summary."""
    from devkit.demo import run_demo  # until the dev kit registers the command itself

    configure_logging("warning", "console")
    try:
        run_demo(state_dir, scale=scale, console=out)
    except (ConfigError, FleetError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        err.print("interrupted; embedded servers stopped")
        raise typer.Exit(130) from None


def _register_worker_commands() -> None:
    """Worker subpackages contribute their own command groups (tte, vex, snapshots)."""
    import importlib

    for module_name, attr, name in (
        ("workers.scan_metrics.cli", "tte", "tte"),
        ("workers.vex_consensus.cli", "app", "vex"),
        ("workers.snapshot_retention.cli", "app", "snapshots"),
    ):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module_name.startswith(exc.name):
                raise
            continue
        target = getattr(module, attr)
        if isinstance(target, typer.Typer):
            app.add_typer(target, name=name)
        else:
            app.command(name)(target)


_register_worker_commands()


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)


__all__ = ["CliError", "app", "fail", "main", "run_async", "settings"]
