"""The HTTP API's request and response bodies (the seed's JSON shapes), built from the pure
domain types; used by ``api`` and, for the same JSON, by ``fleet snapshots``
(docs/snapshots.md). Pure."""

from collections.abc import Iterable
from datetime import datetime
from typing import Literal, overload

import msgspec

from workers.snapshot_retention.audit import AuditEvent, AuditRecord, AuditValue
from workers.snapshot_retention.freshness import (
    FreshnessPolicy,
    FreshnessReport,
    FreshnessState,
    FreshnessThresholds,
    tool_report,
)
from workers.snapshot_retention.lifecycle import RollbackPlan, RollbackTrigger, index_snapshots
from workers.snapshot_retention.records import Snapshot
from workers.snapshot_retention.times import format_duration, utc

# --------------------------------------------------------------------------------------------
# requests and listings


class RollbackRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: str
    dryRun: bool = False  # the seed's wire name
    force: bool = False
    trigger: Literal["user_request", "data_corruption", "compliance"] = "user_request"


class ListResponse(msgspec.Struct, frozen=True, kw_only=True):
    snapshots: list[Snapshot]


# --------------------------------------------------------------------------------------------
# rollback


class RollbackSide(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    snapshot_id: str
    record_count: int


class RollbackResult(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    status: Literal["completed", "dry_run", "failed"]
    tool: str
    from_: RollbackSide | None = msgspec.field(name="from")
    to: RollbackSide
    executed_at: datetime
    executed_by: str
    reason: str
    trigger: RollbackTrigger
    records_affected: int


class RollbackResponse(msgspec.Struct, frozen=True, kw_only=True):
    """Body of ``POST /api/v1/ingest/snapshots/{id}/rollback`` (``{"rollback": {...}}``)."""

    rollback: RollbackResult


def rollback_response(
    plan: RollbackPlan,
    *,
    status: Literal["completed", "dry_run", "failed"],
    executed_by: str,
    reason: str,
) -> RollbackResponse:
    """The seed's rollback response for ``plan``."""
    current = plan.current
    return RollbackResponse(
        rollback=RollbackResult(
            status=status,
            tool=plan.tool,
            from_=None
            if current is None
            else RollbackSide(snapshot_id=current.snapshot_id, record_count=current.record_count),
            to=RollbackSide(
                snapshot_id=plan.target.snapshot_id, record_count=plan.target.record_count
            ),
            executed_at=utc("at", plan.at),
            executed_by=executed_by,
            reason=reason,
            trigger=plan.trigger,
            records_affected=plan.records_affected,
        )
    )


# --------------------------------------------------------------------------------------------
# freshness SLA


class SlaThresholds(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    max_age: str
    stale: str
    critical: str


class SlaEntry(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One tool's entry of ``GET /api/v1/ingest/sla`` (the seed's ``sla`` object), plus
    ``ageSeconds``, ``warning``, ``readable`` and ``reason``."""

    tool: str
    snapshot_id: str | None
    imported_at: datetime | None
    age: str | None
    age_seconds: int | None
    state: FreshnessState
    warning: bool
    readable: bool
    next_check: datetime | None
    thresholds: SlaThresholds
    reason: str


class SlaResponse(msgspec.Struct, frozen=True, kw_only=True):
    """``{"sla": {...}}`` for one tool (``?tool=syft``)."""

    sla: SlaEntry


class SlaListResponse(msgspec.Struct, frozen=True, kw_only=True):
    """``{"sla": [...]}`` for every known tool, sorted by tool."""

    sla: list[SlaEntry]


def sla_entry(report: FreshnessReport) -> SlaEntry:
    limits = report.thresholds
    age = report.age
    return SlaEntry(
        tool=report.tool,
        snapshot_id=report.snapshot_id,
        imported_at=None if report.imported_at is None else utc("at", report.imported_at),
        age=None if age is None else format_duration(age),
        age_seconds=None if age is None else age.days * 86_400 + age.seconds,
        state=report.state,
        warning=report.warning,
        readable=report.readable,
        next_check=report.next_check,
        thresholds=SlaThresholds(
            max_age=format_duration(limits.max_age),
            stale=format_duration(limits.stale_warning),
            critical=format_duration(limits.critical),
        ),
        reason=report.reason,
    )


@overload
def sla_report(
    snapshots: Iterable[Snapshot],
    thresholds: FreshnessThresholds | FreshnessPolicy,
    now: datetime,
    *,
    tool: str,
) -> SlaResponse: ...
@overload
def sla_report(
    snapshots: Iterable[Snapshot],
    thresholds: FreshnessThresholds | FreshnessPolicy,
    now: datetime,
    *,
    tool: None = None,
) -> SlaListResponse: ...
def sla_report(
    snapshots: Iterable[Snapshot],
    thresholds: FreshnessThresholds | FreshnessPolicy,
    now: datetime,
    *,
    tool: str | None = None,
) -> SlaResponse | SlaListResponse:
    """The body of ``GET /api/v1/ingest/sla``: one tool's entry when ``tool`` is given (a tool
    without snapshots reports ``expired``), else every tool that has snapshots or configured
    thresholds."""
    by_tool: dict[str, list[Snapshot]] = {}
    for snapshot in index_snapshots(snapshots).values():
        by_tool.setdefault(snapshot.tool, []).append(snapshot)
    if tool is not None:
        report = tool_report(tool, by_tool.get(tool, []), thresholds, now)
        return SlaResponse(sla=sla_entry(report))
    names = set(by_tool)
    if isinstance(thresholds, FreshnessPolicy):
        names.update(thresholds.tools)
    return SlaListResponse(
        sla=[
            sla_entry(tool_report(name, by_tool.get(name, []), thresholds, now))
            for name in sorted(names)
        ]
    )


# --------------------------------------------------------------------------------------------
# audit


class AuditView(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    id: str
    event: AuditEvent
    timestamp: datetime
    user: str
    snapshot_id: str
    tool: str
    details: dict[str, AuditValue]
    prev_hash: str
    hash: str


class AuditResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's audit record format, ``{"audit": {...}}``."""

    audit: AuditView


def audit_response(record: AuditRecord) -> AuditResponse:
    details = dict(record.details)
    if record.reason is not None:
        details.setdefault("reason", record.reason)
    return AuditResponse(
        audit=AuditView(
            id=f"audit-{record.seq}",
            event=record.event,
            timestamp=utc("occurred_at", record.occurred_at),
            user=record.actor,
            snapshot_id=record.snapshot_id,
            tool=record.tool,
            details=details,
            prev_hash=record.prev_hash,
            hash=record.hash,
        )
    )
