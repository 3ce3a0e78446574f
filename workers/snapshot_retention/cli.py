"""``fleet snapshots``: import, list, show, roll back, read, check freshness, run retention,
manage holds and verify the audit chain.

Each command opens its own PostgreSQL pool (and an S3 client only when it touches
payloads), reads the same ``FLEET_*`` settings as the workers, and ends with one
``error: ...`` line and a non-zero exit on failure.
"""

from __future__ import annotations

import contextlib
import getpass
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import typer
from rich.table import Table

from workers.clients import clients
from workers.errors import ExitCode
from workers.logs import configure_logging
from workers.settings import Settings
from workers.shell import echo_json, err, fail, out, run_async, settings
from workers.snapshot_retention import core
from workers.snapshot_retention.core import RetentionHold, RollbackTrigger, SnapshotState
from workers.snapshot_retention.service import ActiveRead, RetentionReport, Snapshots, utcnow

app = typer.Typer(
    help="Feed snapshots: import, rollback, freshness SLA, retention and the audit trail.",
    no_args_is_help=True,
)
audit_app = typer.Typer(help="The hash-chained audit trail.", no_args_is_help=True)
hold_app = typer.Typer(help="Retention holds (audit exceptions).", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(hold_app, name="hold")

T = TypeVar("T")

EXIT_USAGE = ExitCode.USAGE


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in minimal containers
        return "cli"


ToolOpt = Annotated[str, typer.Option("--tool", "-t", help="Tool name, e.g. syft.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
NowOpt = Annotated[
    str | None,
    typer.Option("--now", help="Evaluate at this RFC 3339 instant instead of the clock."),
]
ActorOpt = Annotated[
    str | None,
    typer.Option("--actor", help="Who to record in the audit trail (default: your login)."),
]


def _instant(value: str | None, option: str = "--now") -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"{option} {value!r} is not an RFC 3339 timestamp", EXIT_USAGE) from None
    if parsed.tzinfo is None:
        raise fail(f"{option} {value!r} needs a UTC offset (e.g. 2025-12-04T00:00:00Z)", EXIT_USAGE)
    return parsed.astimezone(UTC)


def _tool(value: str) -> str:
    try:
        return core.validate_tool(value)
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None


@contextlib.asynccontextmanager
async def _snapshots(cfg: Settings, *, s3: bool) -> AsyncIterator[Snapshots]:
    async with clients(cfg, need=("postgres", "s3") if s3 else ("postgres",)) as opened:
        yield Snapshots(cfg, opened.pool, opened.s3 if s3 else None)


def _run(work: Callable[[Snapshots], Coroutine[Any, Any, T]], *, s3: bool = False) -> T:
    """Run ``work`` with open clients; database errors become one line too."""
    cfg = settings()
    # The command prints its own outcome (and the audit trail records it); log lines would
    # only repeat it, so they appear when debugging.
    configure_logging("debug" if cfg.log_level == "debug" else "critical", cfg.log_format)

    async def go() -> T:
        async with _snapshots(cfg, s3=s3) as snapshots:
            return await work(snapshots)

    return run_async(go)


# ---------------------------------------------------------------------------- records


@app.command("list")
def list_snapshots(
    tool: Annotated[str | None, typer.Option("--tool", "-t", help="Only this tool.")] = None,
    state: Annotated[SnapshotState | None, typer.Option(help="Only this state.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List snapshots, newest first within each tool."""
    chosen = None if tool is None else _tool(tool)

    async def work(snapshots: Snapshots) -> list[core.Snapshot]:
        return await snapshots.list_snapshots(tool=chosen, state=state)

    found = _run(work)
    if as_json:
        echo_json({"snapshots": found})
        return
    table = Table(title=f"feed snapshots ({len(found)})")
    for column in ("id", "state", "version", "imported", "records", "normalized hash"):
        table.add_column(column, justify="right" if column == "records" else "left")
    table.add_column("previous")
    newest_first = sorted(found, key=lambda s: s.snapshot_id, reverse=True)
    for s in sorted(newest_first, key=lambda s: s.tool):
        table.add_row(
            s.snapshot_id,
            str(s.state),
            s.tool_version,
            core.rfc3339(s.imported_at),
            str(s.record_count),
            s.normalized_hash[:19] + "…",
            s.previous_snapshot or "-",
        )
    out.print(table)


@app.command()
def show(snapshot_id: Annotated[str, typer.Argument(help="Snapshot id.")]) -> None:
    """Print one snapshot record (the seed's JSON) and its audit trail."""
    try:
        core.parse_snapshot_id(snapshot_id)
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None

    async def work(
        snapshots: Snapshots,
    ) -> tuple[core.Snapshot | None, list[core.AuditRecord]]:
        return await snapshots.get(snapshot_id), await snapshots.audit(snapshot_id=snapshot_id)

    found, trail = _run(work)
    if found is None:
        raise fail(f"snapshot {snapshot_id} does not exist")
    echo_json({**msgspec.to_builtins(found), "audit": [core.audit_response(r) for r in trail]})


# ---------------------------------------------------------------------------- import


@app.command("import")
def import_snapshot(
    file: Annotated[Path, typer.Argument(help="The feed payload (JSON), or - for stdin.")],
    tool: ToolOpt,
    tool_version: Annotated[
        str, typer.Option("--tool-version", help="Version of the tool that produced it.")
    ] = "unknown",
    reason: Annotated[
        str, typer.Option("--reason", help="Import reason recorded in the metadata.")
    ] = "manual_import",
    source_uri: Annotated[
        str | None, typer.Option("--source-uri", help="Where the payload came from.")
    ] = None,
    records_key: Annotated[
        str | None,
        typer.Option("--records-key", help="The object key holding the records array."),
    ] = None,
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Accept a payload without records.")
    ] = False,
    actor: ActorOpt = None,
) -> None:
    """Validate, upload and activate a snapshot; the active one becomes previous."""
    name = _tool(tool)
    if str(file) == "-":
        payload = sys.stdin.buffer.read()
    elif file.is_file():
        payload = file.read_bytes()
    else:
        raise fail(f"{file}: no such file", EXIT_USAGE)
    metadata = {"importReason": reason, "sourceUri": source_uri or f"file:{file}"}

    async def work(snapshots: Snapshots) -> Any:
        with err.status(f"importing {len(payload):,} bytes for {name}…"):
            return await snapshots.import_snapshot(
                name,
                tool_version,
                payload,
                metadata,
                actor=actor or _default_actor(),
                records_key=records_key,
                allow_empty=allow_empty,
            )

    result = _run(work, s3=True)
    snap = result.snapshot
    previous = f"; {result.previous} is now previous" if result.previous else ""
    out.print(
        f"imported {snap.snapshot_id}: {snap.record_count} records, {snap.normalized_hash}, "
        f"active{previous}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


# ---------------------------------------------------------------------------- rollback


@app.command()
def rollback(
    tool: ToolOpt,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the audit trail).")],
    snapshot_id: Annotated[
        str | None,
        typer.Option("--snapshot-id", help="Target snapshot (default: the previous one)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Verify the target, change nothing.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Accept a target whose age is already critical (the hash is always checked).",
        ),
    ] = False,
    trigger: Annotated[
        RollbackTrigger, typer.Option(help="Why, for the rollbacks metric.")
    ] = RollbackTrigger.USER_REQUEST,
    now: NowOpt = None,
    as_json: JsonOpt = False,
    actor: ActorOpt = None,
) -> None:
    """Make the previous (or a named) snapshot active again, verified by hash."""
    name = _tool(tool)
    at = _instant(now)

    async def work(snapshots: Snapshots) -> core.RollbackResponse:
        return await snapshots.rollback(
            name,
            snapshot_id,
            reason=reason,
            actor=actor or _default_actor(),
            dry_run=dry_run,
            force=force,
            trigger=trigger,
            now=at,
        )

    result = _run(work, s3=True).rollback
    if as_json:
        echo_json({"rollback": result})
        return
    before = "nothing" if result.from_ is None else result.from_.snapshot_id
    verb = "dry run: would roll back" if dry_run else "rolled back"
    out.print(
        f"{verb} {result.tool} from {before} to {result.to.snapshot_id} "
        f"({result.records_affected} records affected)",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


# ---------------------------------------------------------------------------- read / sla


@app.command()
def read(
    tool: ToolOpt,
    override: Annotated[
        bool, typer.Option("--override", help="Read even when the data is critical.")
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
    now: NowOpt = None,
    actor: ActorOpt = None,
) -> None:
    """Print the active snapshot's payload, verified by hash.

    Refused for a critical tool without --override, and always for expired data.
    """
    name = _tool(tool)
    at = _instant(now)

    async def work(snapshots: Snapshots) -> ActiveRead:
        return await snapshots.read_active(
            name, override=override, actor=actor or _default_actor(), now=at
        )

    found = _run(work, s3=True)
    data = found.data
    if found.freshness.state is core.FreshnessState.CRITICAL:
        err.print(
            f"warning: read {found.snapshot.snapshot_id} under --override: "
            f"{found.freshness.reason}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        output.write_bytes(data)


@app.command()
def sla(
    tool: Annotated[str | None, typer.Option("--tool", "-t", help="Only this tool.")] = None,
    now: NowOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Freshness of every tool's active snapshot (fresh, stale, critical, expired)."""
    chosen = None if tool is None else _tool(tool)
    at = _instant(now)

    async def work(snapshots: Snapshots) -> core.SlaResponse | core.SlaListResponse:
        return await snapshots.sla(at, tool=chosen)

    body = _run(work)
    if as_json:
        echo_json(body)
        return
    entries = body.sla if isinstance(body.sla, list) else [body.sla]
    table = Table(title="snapshot freshness")
    for column in ("tool", "snapshot", "age", "state", "warning", "next check", "reason"):
        table.add_column(column)
    colours = {"fresh": "green", "stale": "yellow", "critical": "red", "expired": "red"}
    for e in entries:
        table.add_row(
            e.tool,
            e.snapshot_id or "-",
            e.age or "-",
            f"[{colours[str(e.state)]}]{e.state}[/]",
            "yes" if e.warning else "no",
            "-" if e.next_check is None else core.rfc3339(e.next_check),
            e.reason,
        )
    out.print(table)


# ---------------------------------------------------------------------------- retention


@app.command()
def retention(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (held actions too), change nothing.")
    ] = False,
    now: NowOpt = None,
    as_json: JsonOpt = False,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Who to record (default: retention:<host-pid>).")
    ] = None,
) -> None:
    """Apply the retention rules (or print the plan with --dry-run).

    Previous snapshots are archived after 30 days, archived ones deleted after 90 (object
    removed, record kept), active ones never; holds block every action. Only one process
    in the fleet applies a plan at a time; the others report that they skipped.
    """
    at = _instant(now) or utcnow()
    cfg = settings()
    who = actor or f"retention:{cfg.resolved_consumer_name()}"

    async def work(snapshots: Snapshots) -> RetentionReport:
        return await snapshots.run_retention(at, dry_run=dry_run, actor=who)

    report = _run(work, s3=not dry_run)
    if as_json:
        echo_json(report)
    else:
        _print_retention(report)
    if report.failed:
        raise typer.Exit(1)


def _print_retention(report: RetentionReport) -> None:
    def say(line: str) -> None:
        out.print(line, highlight=False, markup=False, soft_wrap=True)

    stamp = core.rfc3339(report.now)
    if report.status == "skipped":
        say(f"retention at {stamp}: {report.detail}")
        return
    title = "plan" if report.status == "dry_run" else "applied"
    say(f"retention {title} at {stamp}: {len(report.actions)} action(s), {len(report.held)} held")
    for a in report.actions:
        detail = f" [{a.detail}]" if a.detail else ""
        say(f"  {a.status:<8} {a.action:<8} {a.reason}{detail}")
    for h in report.held:
        say(f"  held     {h.action:<8} {h.reason}")
    scan = report.scan_metrics
    if scan is not None:
        cutoff = core.rfc3339(scan.cutoff)
        if scan.status == "skipped" or scan.status == "failed":
            say(f"  scan metrics: {scan.status}: {scan.detail}")
        else:
            verb = "would delete" if scan.status == "planned" else "deleted"
            say(
                f"  scan metrics: {verb} {scan.metrics_rows} row(s) older than {cutoff} "
                f"({scan.phase_rows} phase row(s))"
            )


# ---------------------------------------------------------------------------- holds


@hold_app.command("add")
def hold_add(
    reason: Annotated[str, typer.Option("--reason", help="Why the data must be kept.")],
    snapshot_id: Annotated[
        str | None, typer.Option("--snapshot-id", help="Hold one snapshot.")
    ] = None,
    tool: Annotated[
        str | None, typer.Option("--tool", "-t", help="Hold every snapshot of a tool.")
    ] = None,
    expires: Annotated[
        str | None, typer.Option("--expires", help="RFC 3339 end of the hold (default: none).")
    ] = None,
    actor: ActorOpt = None,
) -> None:
    """Block every retention action on a snapshot or a tool until the hold expires."""
    try:
        hold = RetentionHold(
            reason=reason,
            snapshot_id=snapshot_id,
            tool=tool,
            expires_at=_instant(expires, "--expires"),
        )
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None

    async def work(snapshots: Snapshots) -> RetentionHold:
        return await snapshots.add_hold(hold, actor=actor or _default_actor())

    out.print(f"added {_run(work).describe()}", highlight=False, markup=False, soft_wrap=True)


@hold_app.command("list")
def hold_list(as_json: JsonOpt = False) -> None:
    """Every hold, with whether it is still in force."""

    async def work(snapshots: Snapshots) -> list[RetentionHold]:
        return await snapshots.holds()

    holds = _run(work)
    if as_json:
        echo_json(holds)
        return
    at = utcnow()
    for h in holds:
        state = "in force" if h.in_force(at) else "expired"
        out.print(f"{h.describe()} [{state}]", highlight=False, markup=False, soft_wrap=True)
    if not holds:
        out.print("no holds")


# ---------------------------------------------------------------------------- audit


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the whole hash chain; exit 1 naming the first bad record."""

    async def work(snapshots: Snapshots) -> Any:
        return await snapshots.verify_audit()

    result = _run(work)
    if not result.ok:
        bad = result.first_bad
        raise fail(
            f"audit chain broken at audit-{bad.seq} ({bad.event} of {bad.snapshot_id}): "
            f"{result.reason}; {result.checked} record(s) before it verified"
        )
    out.print(f"audit chain intact: {result.checked} record(s) verified")


@audit_app.command("list")
def audit_list(
    tool: Annotated[str | None, typer.Option("--tool", "-t", help="Only this tool.")] = None,
    snapshot_id: Annotated[
        str | None, typer.Option("--snapshot-id", help="Only this snapshot.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Newest records to show.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The newest audit records, oldest first."""
    chosen = None if tool is None else _tool(tool)

    async def work(snapshots: Snapshots) -> list[core.AuditRecord]:
        return await snapshots.audit(tool=chosen, snapshot_id=snapshot_id, limit=limit)

    records = _run(work)
    if as_json:
        echo_json([core.audit_response(r) for r in records])
        return
    table = Table(title=f"snapshot audit ({len(records)})")
    for column in ("id", "event", "time", "user", "snapshot", "reason", "hash"):
        table.add_column(column)
    for r in records:
        table.add_row(
            f"audit-{r.seq}",
            str(r.event),
            core.rfc3339(r.occurred_at),
            r.actor,
            r.snapshot_id,
            r.reason or "-",
            r.hash[:15] + "…",
        )
    out.print(table)
