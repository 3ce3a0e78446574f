"""``fleet snapshots``: import, list, show, roll back, read, check freshness, run retention,
manage holds and verify the audit chain.

Each command opens its own PostgreSQL pool (and an S3 client only when it touches
payloads), reads the same ``FLEET_*`` settings as the workers, and ends with one
``error: ...`` line and a non-zero exit on failure.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.table import Table

from workers.shell import echo_json, err, fail, out, settings
from workers.snapshot_retention.api_shapes import (
    RollbackResponse,
    SlaListResponse,
    SlaResponse,
    audit_response,
)
from workers.snapshot_retention.audit import AuditRecord
from workers.snapshot_retention.base import utcnow
from workers.snapshot_retention.cli_common import (
    EXIT_USAGE,
    ActorOpt,
    JsonOpt,
    NowOpt,
    ToolOpt,
    default_actor,
    instant_arg,
    run_op,
    tool_arg,
)
from workers.snapshot_retention.cli_governance import audit_app, hold_app
from workers.snapshot_retention.freshness import FreshnessState
from workers.snapshot_retention.housekeeping import RetentionReport
from workers.snapshot_retention.ids import parse_snapshot_id
from workers.snapshot_retention.lifecycle import RollbackTrigger
from workers.snapshot_retention.reads import ActiveRead
from workers.snapshot_retention.records import Snapshot, SnapshotState
from workers.snapshot_retention.service import Snapshots
from workers.snapshot_retention.times import rfc3339

app = typer.Typer(
    help="Feed snapshots: import, rollback, freshness SLA, retention and the audit trail.",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")
app.add_typer(hold_app, name="hold")


# ---------------------------------------------------------------------------- records


@app.command("list")
def list_snapshots(
    tool: Annotated[str | None, typer.Option("--tool", "-t", help="Only this tool.")] = None,
    state: Annotated[SnapshotState | None, typer.Option(help="Only this state.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List snapshots, newest first within each tool."""
    chosen = None if tool is None else tool_arg(tool)

    async def work(snapshots: Snapshots) -> list[Snapshot]:
        return await snapshots.list_snapshots(tool=chosen, state=state)

    found = run_op(work)
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
            rfc3339(s.imported_at),
            str(s.record_count),
            s.normalized_hash[:19] + "…",
            s.previous_snapshot or "-",
        )
    out.print(table)


@app.command()
def show(snapshot_id: Annotated[str, typer.Argument(help="Snapshot id.")]) -> None:
    """Print one snapshot record (the seed's JSON) and its audit trail."""
    try:
        parse_snapshot_id(snapshot_id)
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None

    async def work(
        snapshots: Snapshots,
    ) -> tuple[Snapshot | None, list[AuditRecord]]:
        return await snapshots.get(snapshot_id), await snapshots.audit(snapshot_id=snapshot_id)

    found, trail = run_op(work)
    if found is None:
        raise fail(f"snapshot {snapshot_id} does not exist")
    echo_json({**msgspec.to_builtins(found), "audit": [audit_response(r) for r in trail]})


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
    name = tool_arg(tool)
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
                actor=actor or default_actor(),
                records_key=records_key,
                allow_empty=allow_empty,
            )

    result = run_op(work, s3=True)
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
    name = tool_arg(tool)
    at = instant_arg(now)

    async def work(snapshots: Snapshots) -> RollbackResponse:
        return await snapshots.rollback(
            name,
            snapshot_id,
            reason=reason,
            actor=actor or default_actor(),
            dry_run=dry_run,
            force=force,
            trigger=trigger,
            now=at,
        )

    result = run_op(work, s3=True).rollback
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
    name = tool_arg(tool)
    at = instant_arg(now)

    async def work(snapshots: Snapshots) -> ActiveRead:
        return await snapshots.read_active(
            name, override=override, actor=actor or default_actor(), now=at
        )

    found = run_op(work, s3=True)
    data = found.data
    if found.freshness.state is FreshnessState.CRITICAL:
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
    chosen = None if tool is None else tool_arg(tool)
    at = instant_arg(now)

    async def work(snapshots: Snapshots) -> SlaResponse | SlaListResponse:
        return await snapshots.sla(at, tool=chosen)

    body = run_op(work)
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
            "-" if e.next_check is None else rfc3339(e.next_check),
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
    at = instant_arg(now) or utcnow()
    cfg = settings()
    who = actor or f"retention:{cfg.resolved_consumer_name()}"

    async def work(snapshots: Snapshots) -> RetentionReport:
        return await snapshots.run_retention(at, dry_run=dry_run, actor=who)

    report = run_op(work, s3=not dry_run)
    if as_json:
        echo_json(report)
    else:
        _print_retention(report)
    if report.failed:
        raise typer.Exit(1)


def _print_retention(report: RetentionReport) -> None:
    def say(line: str) -> None:
        out.print(line, highlight=False, markup=False, soft_wrap=True)

    stamp = rfc3339(report.now)
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
