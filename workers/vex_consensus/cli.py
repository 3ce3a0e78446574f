"""``fleet vex``: import VEX documents, explain a consensus, manage issuer trust.

Every command reads the same ``FLEET_*`` settings as the workers. Writes happen
in one PostgreSQL transaction per document (or per trust change) together with
the recompute they cause; the changed results are then published to
``vex:consensus``. When Valkey cannot be reached they stay in
``vex.consensus_outbox`` and a running vex-consensus worker publishes them.
Bad input ends with one ``error: ...`` line and a non-zero exit.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import asyncpg
import msgspec
import redis.exceptions as redis_exc
import typer
from rich.progress import Progress
from rich.table import Table

from workers.clients import clients
from workers.errors import ConfigError, ExitCode, first_line
from workers.logs import configure_logging
from workers.shell import CliError, echo_json, err, fail, out, run_async, settings
from workers.vex_consensus import service, store
from workers.vex_consensus.consensus import (
    ISSUER_TYPES,
    ConsensusOutcome,
    ConsensusResult,
    IssuerTrust,
    IssuerType,
    StatementVerdict,
    compute_consensus,
)
from workers.vex_consensus.documents import DocumentError, ParsedDocument, parse_document
from workers.vex_consensus.purls import PurlError, canonical_purl, scope_of, scope_reason
from workers.vex_consensus.store import Pair, StoredConsensus

app = typer.Typer(
    help="VEX statements, issuer trust and the consensus derived from them.",
    no_args_is_help=True,
)
trust_app = typer.Typer(
    help="Issuer trust: each issuer's weight and priority level.", no_args_is_help=True
)
app.add_typer(trust_app, name="trust")

T = TypeVar("T")
_PRIORITY_MAX = 2**31 - 1

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


# ------------------------------------------------------------------ plumbing


def _run(work: Callable[[asyncpg.Pool], Coroutine[Any, Any, T]]) -> T:
    """Run ``work`` with a pool from :func:`workers.clients.clients` (its one-line errors)."""
    cfg = settings()
    # The command prints its own outcome; log lines would repeat it, except when debugging.
    configure_logging("debug" if cfg.log_level == "debug" else "critical", cfg.log_format)

    async def go() -> T:
        async with clients(cfg, need=("postgres",)) as opened:
            return await work(opened.pool)

    return run_async(go)


async def _publish(pool: asyncpg.Pool) -> tuple[int, str | None]:
    """Publish the outbox; (events published, why publishing was deferred or None)."""
    try:
        cfg = settings()
        async with clients(cfg, need=("valkey",)) as opened:
            partitions = cfg.stream_partitions
            return await service.publish_outbox(pool, opened.redis, partitions=partitions), None
    except ConfigError as exc:
        return 0, str(exc)
    except redis_exc.RedisError as exc:
        return 0, f"Valkey: {first_line(exc)}"


def _published_line(published: int, deferred: str | None, pending: int) -> str:
    if deferred is None:
        return f"published {published} event(s) to {service.CONSENSUS_STREAM}"
    return (
        f"warning: {deferred}; {pending} event(s) wait in vex.consensus_outbox for a "
        "running vex-consensus worker"
    )


# ------------------------------------------------------------------ import


def _parse_files(files: list[Path]) -> list[tuple[Path, ParsedDocument]]:
    for path in files:
        if path.is_dir():
            raise fail(f"{path}: is a directory, not a VEX document", ExitCode.USAGE)
        if not path.is_file():
            raise fail(f"{path}: no such file", ExitCode.USAGE)
    parsed: list[tuple[Path, ParsedDocument]] = []
    with Progress(console=err, transient=True, disable=len(files) < 2) as progress:
        task = progress.add_task("validating documents", total=len(files))
        for path in files:
            try:
                parsed.append((path, parse_document(path.read_bytes())))
            except DocumentError as exc:
                raise fail(f"{path}: {exc}; nothing was imported") from None
            except OSError as exc:
                raise fail(f"{path}: cannot read: {exc.strerror or exc}") from None
            progress.advance(task)
    return parsed


@app.command("import")
def import_documents(
    files: Annotated[
        list[Path], typer.Argument(help="OpenVEX (0.2.0, 0.0.1) or CSAF 2.0 VEX documents.")
    ],
) -> None:
    """Import VEX documents, recompute the pairs they touch and publish changed results.

    Every file is validated whole before anything is written, then each file is
    stored in one transaction with its recompute. Statements already stored (same
    content, hence same raw id) are skipped.
    """
    parsed = _parse_files(files)

    async def work(pool: asyncpg.Pool) -> tuple[list[str], service.RecomputeReport, int, str]:
        lines: list[str] = []
        total = service.RecomputeReport(reason="ingestion_delta")
        with Progress(console=err, transient=True, disable=len(parsed) < 2) as progress:
            task = progress.add_task("importing", total=len(parsed))
            for path, doc in parsed:
                try:
                    async with pool.acquire() as conn, conn.transaction():
                        report = await service.import_documents(conn, [doc])
                except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    _print_lines(lines)  # the files before this one are imported
                    raise CliError(
                        f"{path}: PostgreSQL refused the document: {first_line(exc)}; "
                        "nothing from this file was imported"
                    ) from None
                report.recompute.observe()
                _accumulate(total, report.recompute)
                skipped = f", {len(doc.skipped)} product(s) skipped (no purl or an invalid one)"
                lines.append(
                    f"{path}: {doc.format} {doc.format_version} from {doc.issuer_id!r}: "
                    f"{report.statements} statement(s), {report.inserted} new"
                    + (skipped if doc.skipped else "")
                )
                lines.extend(_refused_purls(path, doc))
                progress.advance(task)
        published, deferred = await _publish(pool)
        async with pool.acquire() as conn:
            pending = await store.outbox_size(conn)
        return lines, total, pending, _published_line(published, deferred, pending)

    lines, total, _, published_line = _run(work)
    _print_lines(lines)
    out.print(
        f"recomputed {total.pairs} pair(s): {total.changed} changed, "
        f"{total.conflicts_queued} conflict(s) queued; {published_line}",
        highlight=False,
        soft_wrap=True,
    )


_REFUSED_SHOWN = 10


def _refused_purls(path: Path, doc: ParsedDocument) -> list[str]:
    """One line per product refused for an invalid purl (the first few), with the reason."""
    refused = list(
        dict.fromkeys(s.reason for s in doc.skipped if s.reason.startswith("invalid purl"))
    )
    lines = [f"{path}: skipped: {reason}" for reason in refused[:_REFUSED_SHOWN]]
    if len(refused) > _REFUSED_SHOWN:
        lines.append(f"{path}: … and {len(refused) - _REFUSED_SHOWN} more invalid purl(s)")
    return lines


def _print_lines(lines: list[str]) -> None:
    for line in lines:
        out.print(line, highlight=False, soft_wrap=True)


def _accumulate(total: service.RecomputeReport, part: service.RecomputeReport) -> None:
    total.pairs += part.pairs
    total.changed += part.changed
    total.upserted += part.upserted
    total.deleted += part.deleted
    total.conflicts_queued += part.conflicts_queued
    total.events += part.events
    total.seconds += part.seconds


# ------------------------------------------------------------------ show


def verdict_reason(verdict: StatementVerdict, outcome: ConsensusOutcome) -> str:
    """Why a statement counted or not, in one sentence (docs/workers.md, "The consensus rules")."""
    downgraded = (
        " (a not_affected without justification counts as under_investigation)"
        if verdict.effective_status != verdict.status
        else ""
    )
    level = outcome.deciding_priority
    match verdict.disposition:
        case "contributing":
            return f"counted: {verdict.effective_status} won at priority {level}{downgraded}"
        case "outvoted":
            return (
                f"counted, outvoted: {verdict.effective_status} lost at priority {level}"
                f"{downgraded}"
            )
        case "lower_priority":
            return (
                f"not deciding: priority {verdict.priority} is below the deciding level {level}"
                f"{downgraded}"
            )
    match verdict.exclusion:
        case "no_trust_row":
            return "excluded (trust): the issuer has no trust row (missing provenance)"
        case "no_timestamp":
            return "excluded (provenance): the statement has no timestamp (missing provenance)"
        case "superseded":
            return "excluded (supersession): superseded by a later statement of the same issuer"
        case "less_specific_scope":
            return (
                "excluded (scope): the same issuer's statement about a more specific scope decides"
            )
        case _:
            return "excluded (scope): the statement does not apply to this pair"


class _ShownStatement(msgspec.Struct, frozen=True, kw_only=True):
    raw_id: str
    issuer_id: str
    component_purl: str
    status: str
    effective_status: str
    published_at: str | None
    priority: int | None
    trust_score: str | None
    disposition: str
    exclusion: str | None
    counted: bool
    reason: str
    scope: str
    """How the statement's purl relates to the pair's (applies or not, and why)."""
    source_document: str | None


class _Shown(msgspec.Struct, frozen=True, kw_only=True):
    component_purl: str
    vulnerability_id: str
    consensus: dict[str, Any] | None
    """The stored ``vex.consensus`` row (``None``: no row)."""
    current: bool
    """Whether the stored row equals a computation from the statements stored now."""
    computed: dict[str, Any] | None
    """That computation's result (``None``: no eligible statement)."""
    deciding_priority: int | None
    level_weights: list[dict[str, Any]]
    conflicts: list[str]
    statements: list[_ShownStatement]


def _result_json(row: StoredConsensus | ConsensusResult | None) -> dict[str, Any] | None:
    if row is None:
        return None
    shown: dict[str, Any] = {
        "resolved_status": row.resolved_status,
        "conflict_detected": row.conflict_detected,
        "confidence": str(row.confidence),
        "contributing_vex_ids": [str(i) for i in row.contributing_vex_ids],
        "digest": row.digest,
    }
    if isinstance(row, StoredConsensus):
        shown["computed_at"] = row.computed_at.isoformat()
    return shown


def _explain(
    pair: Pair,
    row: StoredConsensus | None,
    outcome: ConsensusOutcome,
    sources: dict[Any, store.StatementSource],
) -> _Shown:
    fresh = None if outcome.result is None else outcome.result.digest
    pair_scope = scope_of(pair[0])
    return _Shown(
        component_purl=pair[0],
        vulnerability_id=pair[1],
        consensus=_result_json(row),
        current=(None if row is None else row.digest) == fresh,
        computed=_result_json(outcome.result),
        deciding_priority=outcome.deciding_priority,
        level_weights=[
            {"status": w.status, "weight": str(w.weight), "statements": w.statements}
            for w in outcome.level_weights
        ],
        conflicts=list(outcome.conflicts),
        statements=[
            _ShownStatement(
                raw_id=str(v.raw_id),
                issuer_id=v.issuer_id,
                component_purl=v.component_purl,
                status=v.status,
                effective_status=v.effective_status,
                published_at=None if v.published_at is None else v.published_at.isoformat(),
                priority=v.priority,
                trust_score=None if v.trust_score is None else str(v.trust_score),
                disposition=v.disposition,
                exclusion=v.exclusion,
                counted=v.disposition in ("contributing", "outvoted"),
                reason=verdict_reason(v, outcome),
                scope=scope_reason(scope_of(v.component_purl), pair_scope),
                source_document=sources[v.raw_id].source_document if v.raw_id in sources else None,
            )
            for v in outcome.verdicts
        ],
    )


@app.command()
def show(
    purl: Annotated[str, typer.Argument(help="Component purl, e.g. pkg:npm/lodash@4.17.20.")],
    vulnerability: Annotated[str, typer.Argument(help="Vulnerability id, e.g. CVE-2024-1234.")],
    as_json: JsonOpt = False,
) -> None:
    """The consensus of one pair and every statement about its package considered for it:
    whether its scope applies, why it counted or not (trust, supersession, priority), and
    the weights. The purl is taken in canonical form."""
    try:
        component_purl = canonical_purl(purl)
    except PurlError as exc:
        raise fail(f"PURL: {exc}", ExitCode.USAGE) from None
    vulnerability = vulnerability.strip()
    if not vulnerability:
        raise fail("VULN must not be blank", ExitCode.USAGE)
    pair: Pair = (component_purl, vulnerability)

    async def work(pool: asyncpg.Pool) -> _Shown:
        async with pool.acquire() as conn:
            row = await store.get_consensus(conn, pair)
            filed, trust = await store.load_inputs(conn, store.lookups_for([pair]))
            statements = service.statements_for(pair, filed)
            sources = await store.statement_sources(conn, [s.raw_id for s in statements])
        outcome = compute_consensus(component_purl, vulnerability, statements, trust)
        return _explain(pair, row, outcome, sources)

    shown = _run(work)
    if as_json:
        echo_json(shown)
        return
    _print_shown(shown)


def _print_result(label: str, row: dict[str, Any] | None, none: str) -> None:
    if row is None:
        out.print(f"{label}: {none}", highlight=False)
        return
    conflict = "yes" if row["conflict_detected"] else "no"
    when = f", computed {row['computed_at']}" if "computed_at" in row else ""
    out.print(
        f"{label}: [bold]{row['resolved_status']}[/], confidence {row['confidence']}, "
        f"conflict {conflict}{when}",
        highlight=False,
    )
    out.print(f"  digest {row['digest']}", highlight=False)


def _print_shown(shown: _Shown) -> None:
    out.print(
        f"[bold]{shown.component_purl}[/] / [bold]{shown.vulnerability_id}[/]", highlight=False
    )
    none = "none (no eligible statement)" if shown.current else "none stored"
    _print_result("consensus", shown.consensus, none)
    if not shown.current:
        out.print(
            "[yellow]note:[/] the stored result is not what the statements and trust stored "
            "now give; the next import, trust change or advisory naming this pair updates it",
            highlight=False,
        )
        _print_result("computed now", shown.computed, "none (no eligible statement)")
    if shown.deciding_priority is not None:
        weights = ", ".join(
            f"{w['status']} {w['weight']} ({w['statements']})" for w in shown.level_weights
        )
        out.print(f"deciding priority {shown.deciding_priority}: {weights}", highlight=False)
    if shown.conflicts:
        out.print(f"conflicts: {', '.join(shown.conflicts)}", highlight=False)
    if not shown.statements:
        out.print("no statements about this package and vulnerability")
        return
    # One block per statement rather than a table: purls and issuers are long, and the
    # reason must stay readable (and greppable) at any terminal width.
    out.print(f"{len(shown.statements)} statement(s):")
    for st in shown.statements:
        status = (
            st.status if st.status == st.effective_status else f"{st.status}→{st.effective_status}"
        )
        level = "-" if st.priority is None else f"priority {st.priority}, trust {st.trust_score}"
        out.print(
            f"  {st.raw_id}  {st.issuer_id}  {st.component_purl}  {status}  "
            f"{st.published_at or 'no timestamp'}  ({level})",
            highlight=False,
            soft_wrap=True,
        )
        out.print(f"      scope: {st.scope}", highlight=False, soft_wrap=True)
        out.print(f"      {st.reason}", highlight=False, soft_wrap=True)


# ------------------------------------------------------------------ trust


def parse_trust(issuer: str, score: str, priority: str, issuer_type: str) -> IssuerTrust:
    """Validate ``fleet vex trust set`` arguments; raises ``ValueError`` with one line."""
    issuer_id = issuer.strip()
    if not issuer_id:
        raise ValueError("ISSUER must not be blank")
    if len(issuer_id) > 255:
        raise ValueError("ISSUER is longer than 255 characters")
    try:
        trust_score = Decimal(score.strip())
    except InvalidOperation:
        raise ValueError(f"--score {score!r} is not a number") from None
    if not trust_score.is_finite() or not Decimal(0) <= trust_score <= 1:
        raise ValueError(f"--score {score!r} must be between 0 and 1")
    if trust_score != trust_score.quantize(Decimal("0.01")):
        raise ValueError(f"--score {score!r} has more than two decimal places")
    try:
        level = int(priority.strip())
    except ValueError:
        raise ValueError(f"--priority {priority!r} is not a whole number") from None
    if not 0 <= level <= _PRIORITY_MAX:
        raise ValueError(f"--priority {priority!r} must be between 0 and {_PRIORITY_MAX}")
    if issuer_type not in ISSUER_TYPES:
        raise ValueError(f"--type {issuer_type!r} is not one of {', '.join(sorted(ISSUER_TYPES))}")
    return IssuerTrust(
        issuer_id=issuer_id,
        trust_score=trust_score.quantize(Decimal("0.01")),
        priority=level,
        issuer_type=cast(IssuerType, issuer_type),
    )


@trust_app.command("set")
def trust_set(
    issuer: Annotated[str, typer.Argument(help="Issuer id: an OpenVEX author or CSAF namespace.")],
    score: Annotated[str, typer.Option("--score", help="Weight within its level, 0 to 1.")],
    priority: Annotated[
        str, typer.Option("--priority", help="Level; lower is better, the best present decides.")
    ],
    issuer_type: Annotated[
        str, typer.Option("--type", help="vendor, distro, researcher, community or other.")
    ] = "other",
) -> None:
    """Set an issuer's trust, recompute every pair it made a statement about, publish."""
    try:
        row = parse_trust(issuer, score, priority, issuer_type)
    except ValueError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None

    async def work(pool: asyncpg.Pool) -> tuple[service.TrustReport, str]:
        async with pool.acquire() as conn, conn.transaction():
            report = await service.set_trust(conn, [row])
        report.recompute.observe()
        published, deferred = await _publish(pool)
        async with pool.acquire() as conn:
            pending = await store.outbox_size(conn)
        return report, _published_line(published, deferred, pending)

    report, published_line = _run(work)
    state = "changed" if report.changed_issuers else "unchanged"
    r = report.recompute
    out.print(
        f"issuer {row.issuer_id!r}: trust {row.trust_score}, priority {row.priority}, "
        f"{row.issuer_type} ({state}); recomputed {r.pairs} pair(s): {r.changed} changed; "
        f"{published_line}",
        highlight=False,
        soft_wrap=True,
    )


@trust_app.command("list")
def trust_list(as_json: JsonOpt = False) -> None:
    """Issuers with their trust, and issuers whose statements are excluded for lack of it."""

    async def work(pool: asyncpg.Pool) -> list[store.TrustListing]:
        async with pool.acquire() as conn:
            return await store.list_trust(conn)

    rows = _run(work)
    if as_json:
        echo_json(
            [
                {
                    "issuer_id": r.issuer_id,
                    "trust_score": None if r.trust is None else str(r.trust.trust_score),
                    "priority": None if r.trust is None else r.trust.priority,
                    "issuer_type": None if r.trust is None else r.trust.issuer_type,
                    "statements": r.statements,
                    "updated_at": None if r.updated_at is None else r.updated_at.isoformat(),
                }
                for r in rows
            ]
        )
        return
    table = Table(title="issuer trust")
    for column in ("issuer", "type", "score", "priority", "statements", "updated"):
        table.add_column(column, overflow="fold")
    for r in rows:
        if r.trust is None:
            table.add_row(r.issuer_id, "[red]no trust row[/]", "-", "-", str(r.statements), "-")
        else:
            table.add_row(
                r.issuer_id,
                r.trust.issuer_type,
                str(r.trust.trust_score),
                str(r.trust.priority),
                str(r.statements),
                "-" if r.updated_at is None else f"{r.updated_at:%Y-%m-%d %H:%M}",
            )
    out.print(table)
