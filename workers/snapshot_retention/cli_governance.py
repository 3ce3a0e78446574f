"""``fleet snapshots expire|thresholds|hold|audit``: manual expiry, per-tool freshness
thresholds, retention holds and the audit trail (docs/snapshots.md)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from workers.shell import echo_json, fail, out
from workers.snapshot_retention.api_shapes import (
    audit_response,
    expiry_body,
    thresholds_body,
)
from workers.snapshot_retention.audit import AuditRecord
from workers.snapshot_retention.audit_log import PruneReport
from workers.snapshot_retention.base import utcnow
from workers.snapshot_retention.cli_common import (
    EXIT_USAGE,
    ActorOpt,
    JsonOpt,
    NowOpt,
    default_actor,
    instant_arg,
    run_op,
    tool_arg,
)
from workers.snapshot_retention.freshness import FreshnessThresholds
from workers.snapshot_retention.ids import parse_snapshot_id
from workers.snapshot_retention.lifecycle import StateChange
from workers.snapshot_retention.policies import ToolThresholds
from workers.snapshot_retention.retention import RetentionHold
from workers.snapshot_retention.service import Snapshots
from workers.snapshot_retention.times import format_duration, parse_duration, rfc3339

audit_app = typer.Typer(help="The hash-chained audit trail.", no_args_is_help=True)
thresholds_app = typer.Typer(
    help="Per-tool freshness thresholds (ISO 8601 durations).", no_args_is_help=True
)
hold_app = typer.Typer(help="Retention holds (audit exceptions).", no_args_is_help=True)


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
            expires_at=instant_arg(expires, "--expires"),
        )
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None

    async def work(snapshots: Snapshots) -> RetentionHold:
        return await snapshots.add_hold(hold, actor=actor or default_actor())

    out.print(f"added {run_op(work).describe()}", highlight=False, markup=False, soft_wrap=True)


@hold_app.command("list")
def hold_list(as_json: JsonOpt = False) -> None:
    """Every hold, with whether it is still in force."""

    async def work(snapshots: Snapshots) -> list[RetentionHold]:
        return await snapshots.holds()

    holds = run_op(work)
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

    result = run_op(work)
    bad = result.first_bad
    if bad is not None:
        raise fail(
            f"audit chain broken at audit-{bad.seq} ({bad.event} of {bad.snapshot_id}): "
            f"{result.reason}; {result.checked} record(s) before it verified"
        )
    if not result.ok:
        raise fail(f"audit chain broken at its pruning anchors: {result.reason}")
    start = (
        "from the genesis"
        if result.anchor is None
        else f"from anchor {result.anchor.anchor_seq} (after audit-{result.anchor.last_seq})"
    )
    out.print(f"audit chain intact: {result.checked} record(s) verified {start}")


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
    chosen = None if tool is None else tool_arg(tool)

    async def work(snapshots: Snapshots) -> list[AuditRecord]:
        return await snapshots.audit(tool=chosen, snapshot_id=snapshot_id, limit=limit)

    records = run_op(work)
    if as_json:
        echo_json([audit_response(r) for r in records])
        return
    table = Table(title=f"snapshot audit ({len(records)})")
    for column in ("id", "event", "time", "user", "snapshot", "reason", "hash"):
        table.add_column(column)
    for r in records:
        table.add_row(
            f"audit-{r.seq}",
            str(r.event),
            rfc3339(r.occurred_at),
            r.actor,
            r.snapshot_id,
            r.reason or "-",
            r.hash[:15] + "…",
        )
    out.print(table)


@audit_app.command("prune")
def audit_prune(
    before: Annotated[
        str,
        typer.Option(
            "--before",
            help="Remove records older than this date (YYYY-MM-DD, UTC) or RFC 3339 instant.",
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be removed, change nothing.")
    ] = False,
    now: NowOpt = None,
    as_json: JsonOpt = False,
    actor: ActorOpt = None,
) -> None:
    """Apply the audit retention: remove the oldest records and record an anchor so that
    `audit verify` still checks every kept record."""
    cutoff = _date_or_instant(before)
    at = instant_arg(now)

    async def work(snapshots: Snapshots) -> PruneReport:
        return await snapshots.prune_audit(
            cutoff, actor=actor or default_actor(), dry_run=dry_run, now=at
        )

    report = run_op(work)
    if as_json:
        echo_json(report)
        return
    stamp = rfc3339(report.before)
    if report.status == "nothing":
        message = f"no audit record to prune before {stamp}"
    else:
        verb = "would prune" if report.status == "dry_run" else "pruned"
        anchor = report.anchor
        assert anchor is not None  # a plan always carries its anchor
        message = (
            f"{verb} {report.records} audit record(s) before {stamp} "
            f"(through audit-{report.last_seq}); anchor {anchor.anchor_seq} {anchor.hash}"
        )
    out.print(message, highlight=False, markup=False, soft_wrap=True)


def _date_or_instant(value: str) -> datetime:
    try:
        day = date.fromisoformat(value)
    except ValueError:
        instant = instant_arg(value, "--before")
        assert instant is not None
        return instant
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


# ---------------------------------------------------------------------------- expiry


def expire(
    snapshot_id: Annotated[str, typer.Option("--snapshot-id", help="The snapshot to expire.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the audit trail).")],
    now: NowOpt = None,
    as_json: JsonOpt = False,
    actor: ActorOpt = None,
) -> None:
    """Expire a snapshot by hand: its data becomes unavailable (reads and rollbacks to it
    are refused); the audit trail records snapshot_expired."""
    try:
        parse_snapshot_id(snapshot_id)
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    if not reason.strip():
        raise fail("--reason must not be empty", EXIT_USAGE)
    at = instant_arg(now)

    async def work(snapshots: Snapshots) -> StateChange:
        return await snapshots.expire(
            snapshot_id, reason=reason, actor=actor or default_actor(), now=at
        )

    change = run_op(work)
    if as_json:
        echo_json({"expiry": expiry_body(change, reason=reason)})
        return
    out.print(
        f"expired {snapshot_id} (was {change.from_state}): its data is now unavailable",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


# ---------------------------------------------------------------------------- thresholds


@thresholds_app.command("set")
def thresholds_set(
    tool: Annotated[str, typer.Argument(help="Tool name (built-in or custom).")],
    max_age: Annotated[
        str | None, typer.Option("--max-age", help="Fresh below this age, e.g. P7D.")
    ] = None,
    stale: Annotated[
        str | None, typer.Option("--stale", help="Warn from this age, e.g. P14D.")
    ] = None,
    critical: Annotated[
        str | None,
        typer.Option("--critical", help="Refuse reads without override from this age, e.g. P30D."),
    ] = None,
    actor: ActorOpt = None,
) -> None:
    """Set a tool's freshness thresholds; an omitted one keeps its current value."""
    name = tool_arg(tool)
    given = {"--max-age": max_age, "--stale": stale, "--critical": critical}
    if all(value is None for value in given.values()):
        raise fail("give at least one of --max-age, --stale, --critical", EXIT_USAGE)
    for option, value in given.items():
        if value is not None:
            try:
                parse_duration(value)
            except ValueError as exc:
                raise fail(f"{option}: {exc}", EXIT_USAGE) from None

    async def work(snapshots: Snapshots) -> FreshnessThresholds:
        return await snapshots.set_thresholds(
            name, max_age=max_age, stale=stale, critical=critical, actor=actor or default_actor()
        )

    limits = run_op(work)
    out.print(f"{name}: {_describe(limits)}", highlight=False, markup=False, soft_wrap=True)


@thresholds_app.command("unset")
def thresholds_unset(
    tool: Annotated[str, typer.Argument(help="Tool name.")], actor: ActorOpt = None
) -> None:
    """Return a tool to the fleet defaults (FLEET_SNAPSHOT_*_DAYS)."""
    name = tool_arg(tool)

    async def work(snapshots: Snapshots) -> bool:
        return await snapshots.unset_thresholds(name, actor=actor or default_actor())

    removed = run_op(work)
    message = "back to the defaults" if removed else "had no thresholds of its own"
    out.print(f"{name}: {message}", highlight=False, markup=False, soft_wrap=True)


@thresholds_app.command("list")
def thresholds_list(as_json: JsonOpt = False) -> None:
    """Every tool with thresholds of its own, then the defaults (tool ``*``)."""

    async def work(snapshots: Snapshots) -> list[ToolThresholds]:
        return await snapshots.thresholds()

    found = run_op(work)
    if as_json:
        echo_json({"thresholds": [thresholds_body(t.tool, t.thresholds, t.source) for t in found]})
        return
    table = Table(title="freshness thresholds")
    for column in ("tool", "max age", "stale", "critical", "source"):
        table.add_column(column)
    for t in found:
        shapes = thresholds_body(t.tool, t.thresholds, t.source)
        table.add_row(t.tool, shapes.max_age, shapes.stale, shapes.critical, t.source)
    out.print(table)


def _describe(limits: FreshnessThresholds) -> str:
    return (
        f"max age {format_duration(limits.max_age)}, stale {format_duration(limits.stale_warning)}"
        f", critical {format_duration(limits.critical)}"
    )
