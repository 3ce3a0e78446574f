"""``fleet snapshots hold|audit``: retention holds and the audit trail
(docs/snapshots.md)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from workers.shell import echo_json, fail, out
from workers.snapshot_retention.api_shapes import (
    audit_response,
)
from workers.snapshot_retention.audit import AuditRecord
from workers.snapshot_retention.base import utcnow
from workers.snapshot_retention.cli_common import (
    EXIT_USAGE,
    ActorOpt,
    JsonOpt,
    default_actor,
    instant_arg,
    run_op,
    tool_arg,
)
from workers.snapshot_retention.retention import RetentionHold
from workers.snapshot_retention.service import Snapshots
from workers.snapshot_retention.times import rfc3339

audit_app = typer.Typer(help="The hash-chained audit trail.", no_args_is_help=True)
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
