"""The TTE report behind ``fleet tte`` and the demo summary: read from PostgreSQL,
rendered as rich tables or JSON.

Figures cover completed, non-replay scans that started in the window (the same rows
``scanner.tte_stats`` aggregates); p50/p95 come from ``scanner.tte_percentile``.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Final

import msgspec
from rich.table import Table

from workers.db import DbConn
from workers.scan_metrics.tte import ALL_PHASES, SLO_P50_MS, SLO_P95_MS

_WINDOW: Final = re.compile(r"(\d+)([smhdw])")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_window(text: str) -> timedelta:
    """``90m``, ``24h``, ``7d``, ``2w`` or combinations such as ``1d12h``; raises ValueError."""
    compact = text.strip().lower()
    parts = list(_WINDOW.finditer(compact))
    if not compact or "".join(m.group(0) for m in parts) != compact:
        raise ValueError(f"{text!r} is not a duration (use e.g. 30m, 24h, 7d, 2w or 1d12h)")
    total = timedelta()
    try:
        for match in parts:
            total += timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration") from None
    if total <= timedelta():
        raise ValueError(f"{text!r} is an empty duration")
    return total


class SloFigure(msgspec.Struct, frozen=True, kw_only=True):
    target_ms: int
    value_ms: float | None  # the percentile; None without completed scans
    met: bool | None
    compliance_percent: float | None  # scans with TTE at most the target


class PhaseFigure(msgspec.Struct, frozen=True, kw_only=True):
    phase: str
    runs: int
    avg_ms: float
    p95_ms: float
    percent_of_tte: float | None  # this phase's time over all TTE in the window


class TteReport(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: uuid.UUID | None
    since: datetime | None
    until: datetime
    completed: int
    failed: int
    replays: int
    tte_avg_ms: float | None
    p50: SloFigure
    p95: SloFigure
    phases: list[PhaseFigure]


_COUNTS: Final = """
SELECT
    count(*) FILTER (WHERE status = 'completed' AND NOT is_replay) AS completed,
    count(*) FILTER (WHERE status = 'failed' AND NOT is_replay) AS failed,
    count(*) FILTER (WHERE status <> 'submitted' AND is_replay) AS replays,
    avg(total_duration_ms) FILTER (WHERE status = 'completed' AND NOT is_replay) AS avg_ms,
    100.0 * count(*) FILTER (
        WHERE status = 'completed' AND NOT is_replay AND total_duration_ms <= $3
    ) / NULLIF(count(*) FILTER (WHERE status = 'completed' AND NOT is_replay), 0) AS p50_ok,
    100.0 * count(*) FILTER (
        WHERE status = 'completed' AND NOT is_replay AND total_duration_ms <= $4
    ) / NULLIF(count(*) FILTER (WHERE status = 'completed' AND NOT is_replay), 0) AS p95_ok,
    scanner.tte_percentile($1, 0.5, $2) AS p50,
    scanner.tte_percentile($1, 0.95, $2) AS p95,
    now() AS until
FROM scanner.scan_metrics
WHERE ($1::uuid IS NULL OR tenant_id = $1)
  AND ($2::timestamptz IS NULL OR started_at >= $2)
"""

_PHASES: Final = """
WITH scans AS (
    SELECT metrics_id, total_duration_ms FROM scanner.scan_metrics
    WHERE status = 'completed' AND NOT is_replay
      AND ($1::uuid IS NULL OR tenant_id = $1)
      AND ($2::timestamptz IS NULL OR started_at >= $2)
)
SELECT
    e.phase_name,
    count(*) AS runs,
    avg(e.duration_ms)::float8 AS avg_ms,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY e.duration_ms) AS p95_ms,
    (100.0 * sum(e.duration_ms)
        / NULLIF((SELECT sum(total_duration_ms) FROM scans), 0))::float8 AS percent
FROM scanner.execution_phases e JOIN scans USING (metrics_id)
GROUP BY e.phase_name
"""


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]  # numeric or float from asyncpg


async def tte_report(
    conn: DbConn, *, tenant_id: uuid.UUID | None, since: datetime | None
) -> TteReport:
    """p50/p95 against the SLOs, compliance, counts and the phase breakdown."""
    row = await conn.fetchrow(_COUNTS, tenant_id, since, SLO_P50_MS, SLO_P95_MS)
    assert row is not None  # an aggregate always returns one row
    phase_rows = {r["phase_name"]: r for r in await conn.fetch(_PHASES, tenant_id, since)}
    p50, p95 = _float(row["p50"]), _float(row["p95"])
    return TteReport(
        tenant_id=tenant_id,
        since=since,
        until=row["until"],
        completed=row["completed"],
        failed=row["failed"],
        replays=row["replays"],
        tte_avg_ms=_float(row["avg_ms"]),
        p50=SloFigure(
            target_ms=SLO_P50_MS,
            value_ms=p50,
            met=None if p50 is None else p50 < SLO_P50_MS,
            compliance_percent=_float(row["p50_ok"]),
        ),
        p95=SloFigure(
            target_ms=SLO_P95_MS,
            value_ms=p95,
            met=None if p95 is None else p95 < SLO_P95_MS,
            compliance_percent=_float(row["p95_ok"]),
        ),
        phases=[
            PhaseFigure(
                phase=name,
                runs=r["runs"],
                avg_ms=r["avg_ms"],
                p95_ms=r["p95_ms"],
                percent_of_tte=r["percent"],
            )
            for name in ALL_PHASES
            if (r := phase_rows.get(name)) is not None
        ],
    )


def _seconds(ms: float | None) -> str:
    return "-" if ms is None else f"{ms / 1000:,.1f} s"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} %"


def _verdict(met: bool | None) -> str:
    if met is None:
        return "[dim]no data[/]"
    return "[green]met[/]" if met else "[bold red]breached[/]"


def render(report: TteReport, *, title: str = "Time-to-Evidence") -> list[Table]:
    """The SLO table and the phase breakdown table."""
    scope = "every tenant" if report.tenant_id is None else f"tenant {report.tenant_id}"
    window = "all time" if report.since is None else f"since {report.since:%Y-%m-%d %H:%M} UTC"
    slo = Table(title=f"{title} — {scope}, {window}", min_width=72)
    for column, justify in (
        ("figure", "left"),
        ("value", "right"),
        ("target", "right"),
        ("within target", "right"),
        ("SLO", "left"),
    ):
        slo.add_column(column, justify=justify)  # type: ignore[arg-type]  # literal justify values
    for label, figure in (("TTE p50", report.p50), ("TTE p95", report.p95)):
        slo.add_row(
            label,
            _seconds(figure.value_ms),
            f"< {figure.target_ms / 1000:.0f} s",
            _percent(figure.compliance_percent),
            _verdict(figure.met),
        )
    slo.add_row("TTE mean", _seconds(report.tte_avg_ms), "", "", "")
    slo.caption = (
        f"{report.completed} completed scans; not counted: "
        f"{report.failed} failed, {report.replays} replays"
    )
    phases = Table(title="Phase breakdown (completed scans)", min_width=72)
    for column in ("phase", "runs", "mean", "p95", "share of TTE"):
        phases.add_column(column, justify="left" if column == "phase" else "right")
    for p in report.phases:
        phases.add_row(
            p.phase, str(p.runs), _seconds(p.avg_ms), _seconds(p.p95_ms), _percent(p.percent_of_tte)
        )
    return [slo, phases]
