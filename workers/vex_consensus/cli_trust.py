"""``fleet vex trust set|list``: issuer trust, signing keys and the signature policy."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, cast

import asyncpg
import typer
from rich.table import Table

from workers import signing
from workers.errors import ExitCode
from workers.shell import CliError, echo_json, fail, out
from workers.vex_consensus import issuers, keys, outbox, service
from workers.vex_consensus.cli_common import JsonOpt, publish_pending, published_line, run_with_pool
from workers.vex_consensus.consensus import ISSUER_TYPES, IssuerTrust, IssuerType

trust_app = typer.Typer(
    help="Issuer trust: each issuer's weight and priority level, keys and signature policy.",
    no_args_is_help=True,
)
_PRIORITY_MAX = 2**31 - 1


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


def _given(option: str | None, stored: object) -> str:
    """An option as given, else the stored value it keeps."""
    return option if option is not None else str(stored)


@trust_app.command("set")
def trust_set(
    issuer: Annotated[str, typer.Argument(help="Issuer id: an OpenVEX author or CSAF namespace.")],
    score: Annotated[
        str | None,
        typer.Option("--score", help="Weight within its level, 0 to 1 (kept when omitted)."),
    ] = None,
    priority: Annotated[
        str | None,
        typer.Option("--priority", help="Level; lower is better (kept when omitted)."),
    ] = None,
    issuer_type: Annotated[
        str | None, typer.Option("--type", help="vendor, distro, researcher, community or other.")
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option("--key", help="Register this ed25519 public key (PEM) for the issuer."),
    ] = None,
    require_signature: Annotated[
        bool | None,
        typer.Option(
            "--require-signature/--no-require-signature",
            help="Refuse the issuer's unsigned documents (kept when omitted).",
        ),
    ] = None,
) -> None:
    """Set an issuer's trust, keys and signature policy; recompute every pair it made a
    statement about (when its trust changed) and publish."""
    issuer_id = issuer.strip()
    try:  # every option given is checked before anything is read or written
        parse_trust(issuer, score or "0", priority or "0", issuer_type or "other")
    except ValueError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None

    def _merged(raw_issuer: str, existing: IssuerTrust | None) -> IssuerTrust:
        """The options given, the stored row's values for those omitted."""
        if existing is None and (score is None or priority is None):
            raise CliError(
                f"issuer {issuer_id!r} has no trust row yet: give --score and --priority"
            )
        try:
            return parse_trust(
                raw_issuer,
                _given(score, None if existing is None else existing.trust_score),
                _given(priority, None if existing is None else existing.priority),
                issuer_type or (existing.issuer_type if existing else "other"),
            )
        except ValueError as exc:
            raise CliError(str(exc)) from None

    public = None
    if key is not None:
        try:
            public = signing.parse_public_key(signing.read_key_file(key), str(key))
        except signing.SigningError as exc:
            raise fail(str(exc), ExitCode.USAGE) from None

    async def work(pool: asyncpg.Pool) -> tuple[IssuerTrust, service.TrustReport, str, str]:
        async with pool.acquire() as conn, conn.transaction():
            row = _merged(issuer, await keys.current_trust(conn, issuer_id))
            report = await service.set_trust(conn, [row])
            notes = []
            if public is not None:
                keyid, added = await keys.add_key(conn, row.issuer_id, public)
                notes.append(f"key {keyid[:16]}… {'registered' if added else 'already registered'}")
            if require_signature is not None:
                await keys.set_require_signature(conn, row.issuer_id, require_signature)
                notes.append(
                    "signatures required" if require_signature else "unsigned documents accepted"
                )
        report.recompute.observe()
        published, deferred = await publish_pending(pool)
        async with pool.acquire() as conn:
            pending = await outbox.size(conn)
        return row, report, published_line(published, deferred, pending), "; ".join(notes)

    row, report, published, notes = run_with_pool(work)
    state = "changed" if report.changed_issuers else "unchanged"
    r = report.recompute
    out.print(
        f"issuer {row.issuer_id!r}: trust {row.trust_score}, priority {row.priority}, "
        f"{row.issuer_type} ({state}); {notes + '; ' if notes else ''}"
        f"recomputed {r.pairs} pair(s): {r.changed} changed; {published}",
        highlight=False,
        soft_wrap=True,
    )


@trust_app.command("list")
def trust_list(as_json: JsonOpt = False) -> None:
    """Issuers with their trust, and issuers whose statements are excluded for lack of it."""

    async def work(pool: asyncpg.Pool) -> list[issuers.TrustListing]:
        async with pool.acquire() as conn:
            return await issuers.list_trust(conn)

    rows = run_with_pool(work)
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
