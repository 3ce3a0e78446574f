"""``fleet vex``: import VEX documents, explain a consensus, manage issuer trust.

Every command reads the same ``FLEET_*`` settings as the workers. Writes happen
in one PostgreSQL transaction per document (or per trust change) together with
the recompute they cause; the changed results are then published to
``vex:consensus``. When Valkey cannot be reached they stay in
``vex.consensus_outbox`` and a running vex-consensus worker publishes them.
Bad input ends with one ``error: ...`` line and a non-zero exit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import asyncpg
import msgspec
import typer
from rich.progress import Progress

from workers.errors import ExitCode, first_line
from workers.shell import CliError, echo_json, err, fail, out
from workers.vex_consensus import ingest, outbox, service, store
from workers.vex_consensus.cli_common import (
    JsonOpt,
    publish_pending,
    published_line,
    run_with_pool,
)
from workers.vex_consensus.cli_review import review_app
from workers.vex_consensus.cli_trust import parse_trust, trust_app
from workers.vex_consensus.consensus import (
    ConsensusOutcome,
    ConsensusResult,
    StatementVerdict,
    compute_consensus,
)
from workers.vex_consensus.documents import DocumentError, ParsedDocument
from workers.vex_consensus.purls import PurlError, canonical_purl, scope_of, scope_reason
from workers.vex_consensus.signed import SignatureRejected
from workers.vex_consensus.store import Pair, StoredConsensus

app = typer.Typer(
    help="VEX statements, issuer trust and the consensus derived from them.",
    no_args_is_help=True,
)
app.add_typer(trust_app, name="trust")
app.add_typer(review_app, name="conflicts")


# ------------------------------------------------------------------ import


def _parse_files(files: list[Path]) -> tuple[list[ingest.Loaded], list[ingest.Rejected]]:
    """Every file parsed (signed ones unwrapped); envelopes unusable as such are refused."""
    for path in files:
        if path.is_dir():
            raise fail(f"{path}: is a directory, not a VEX document", ExitCode.USAGE)
        if not path.is_file():
            raise fail(f"{path}: no such file", ExitCode.USAGE)
    parsed: list[ingest.Loaded] = []
    refused: list[ingest.Rejected] = []
    with Progress(console=err, transient=True, disable=len(files) < 2) as progress:
        task = progress.add_task("validating documents", total=len(files))
        for path in files:
            try:
                data = path.read_bytes()
                parsed.append(ingest.load(data, str(path)))
            except SignatureRejected as exc:
                refused.append(
                    ingest.Rejected(source=str(path), data=data, reason=exc.reason, detail=str(exc))
                )
            except DocumentError as exc:
                raise fail(f"{path}: {exc}; nothing was imported") from None
            except OSError as exc:
                raise fail(f"{path}: cannot read: {exc.strerror or exc}") from None
            progress.advance(task)
    return parsed, refused


async def _verified(
    pool: asyncpg.Pool, loaded: list[ingest.Loaded], refused: list[ingest.Rejected]
) -> list[tuple[Path, ParsedDocument]]:
    """The documents whose signatures (or lack of one) their issuers accept. Any refusal
    is kept in vex.ingest_rejections and ends the command: nothing is imported."""
    async with pool.acquire() as conn:
        accepted, more = await ingest.check(conn, loaded)
    refused = refused + more
    if refused:
        async with pool.acquire() as conn, conn.transaction():
            ids = await ingest.keep_rejections(conn, refused)
        first = refused[0]
        others = f" (and {len(refused) - 1} more document(s))" if len(refused) > 1 else ""
        raise CliError(
            f"{first.source}: refused ({first.reason}): {first.detail}; kept as "
            f"vex.ingest_rejections #{ids[0]}{others}; nothing was imported"
        )
    return [(Path(item.source), doc) for item, doc in accepted]


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
    loaded, refused = _parse_files(files)

    async def work(pool: asyncpg.Pool) -> tuple[list[str], service.RecomputeReport, int, str]:
        parsed = await _verified(pool, loaded, refused)
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
                signed = (
                    ""
                    if doc.signature is None
                    else f", signed (key {doc.signature['keyId'][:16]}…)"
                )
                lines.append(
                    f"{path}: {doc.format} {doc.format_version} from {doc.issuer_id!r}{signed}: "
                    f"{report.statements} statement(s), {report.inserted} new"
                    + (skipped if doc.skipped else "")
                )
                lines.extend(_refused_purls(path, doc))
                progress.advance(task)
        published, deferred = await publish_pending(pool)
        async with pool.acquire() as conn:
            pending = await outbox.size(conn)
        return lines, total, pending, published_line(published, deferred, pending)

    lines, total, _, published_text = run_with_pool(work)
    _print_lines(lines)
    out.print(
        f"recomputed {total.pairs} pair(s): {total.changed} changed, "
        f"{total.conflicts_queued} conflict(s) queued; {published_text}",
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

    shown = run_with_pool(work)
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


__all__ = ["app", "parse_trust", "verdict_reason"]
