"""The records every VEX format parses into, and the rules they share.

:class:`ParsedDocument` is what :func:`~workers.vex_consensus.documents.parse_document`
returns for any format; :class:`Collector` builds its records in document order and
derives each raw id (uuid5 over the issuer and the canonical record, see
:mod:`workers.vex_consensus.documents`). The format parsers
(:mod:`~workers.vex_consensus.openvex`, :mod:`~workers.vex_consensus.csaf`) sit on top.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

from contracts.vex import VexStatus
from workers.vex_consensus.consensus import Statement, canonical_json
from workers.vex_consensus.purls import PurlError, canonical_purl

RAW_ID_NAMESPACE: Final = uuid.UUID("92eb86de-6094-4f18-bb88-e4d1de12d596")
"""Fixed namespace of statement raw ids; changing it would re-identify every stored statement."""

DocumentFormat = Literal["openvex", "csaf"]

_T = TypeVar("_T")


# Column limits of vex.vex_raw: a longer value is refused here, not by the database.
Issuer = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
VulnId = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Justification = Annotated[str, msgspec.Meta(max_length=100)]
Time = Annotated[datetime, msgspec.Meta(tz=True)]


class DocumentError(ValueError):
    """The bytes are not a VEX document this parser can read; the message is one line."""


class VexRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One statement ready for ``vex.vex_raw``: the typed statement and its raw JSON."""

    statement: Statement
    raw_statement: dict[str, Any]
    parent_product: str | None = None
    """For a subcomponent's record: the product it was stated as part of, as written."""


class SkippedProduct(msgspec.Struct, frozen=True, kw_only=True):
    """A product a statement named that could not become a pair (e.g. no purl)."""

    vulnerability_id: str
    product: str
    reason: str


class ParsedDocument(msgspec.Struct, frozen=True, kw_only=True):
    """One document's records in document order, and the products that made none."""

    format: DocumentFormat
    format_version: str
    document_id: str | None
    """OpenVEX ``@id`` or CSAF ``document.tracking.id``; for ``vex_raw.source_document``."""
    issuer_id: str
    records: tuple[VexRecord, ...]
    skipped: tuple[SkippedProduct, ...] = ()
    signature: dict[str, Any] | None = None
    """For a signed document, what verified it (``vex_raw.signature``: ``keyId`` …)."""


def convert(obj: Any, kind: type[_T], what: str) -> _T:
    try:
        return msgspec.convert(obj, kind)
    except msgspec.ValidationError as exc:
        raise DocumentError(f"invalid {what} document: {exc}") from None


class Collector:
    """Builds records in document order, keeping each raw id once."""

    def __init__(self, issuer_id: str) -> None:
        self.issuer_id = issuer_id
        self.records: dict[uuid.UUID, VexRecord] = {}
        self.skipped: dict[tuple[str, str, str], SkippedProduct] = {}

    def add(
        self,
        *,
        purl: str,
        # purl as written: the raw id covers it, so ids stay those of earlier releases.
        vulnerability_id: str,
        status: VexStatus,
        justification: str | None,
        impact_statement: str | None,
        published_at: datetime | None,
        raw: dict[str, Any],
        parent_product: str | None = None,
    ) -> None:
        try:
            canonical = canonical_purl(purl)
        except PurlError as exc:
            self.skip(vulnerability_id, purl, str(exc))
            return
        published = None if published_at is None else published_at.astimezone(UTC)
        body = {
            "component_purl": purl,
            "vulnerability_id": vulnerability_id,
            "status": status,
            "justification": justification,
            "impact_statement": impact_statement,
            "published_at": None if published is None else published.isoformat(),
            "parent_product": parent_product,
            "statement": raw,
        }
        name = canonical_json([self.issuer_id, body]).decode("utf-8")
        raw_id = uuid.uuid5(RAW_ID_NAMESPACE, name)
        if raw_id in self.records:
            return
        self.records[raw_id] = VexRecord(
            statement=Statement(
                raw_id=raw_id,
                issuer_id=self.issuer_id,
                component_purl=canonical,
                vulnerability_id=vulnerability_id,
                status=status,
                justification=justification,
                impact_statement=impact_statement,
                published_at=published,
            ),
            raw_statement=raw,
            parent_product=parent_product,
        )

    def skip(self, vulnerability_id: str, product: str, reason: str) -> None:
        key = (vulnerability_id, product, reason)
        self.skipped.setdefault(
            key, SkippedProduct(vulnerability_id=vulnerability_id, product=product, reason=reason)
        )


def issuer(value: str, field: str) -> str:
    issuer = value.strip()
    if not issuer:
        raise DocumentError(f"the issuer ({field}) is blank")
    return issuer


def text(value: str | None) -> str | None:
    return (value.strip() or None) if value is not None else None


def names_purl(value: str | None) -> bool:
    """Whether an id field names a purl (other ids, e.g. URLs, name something else)."""
    return value is not None and value.strip()[:4].lower() == "pkg:"


def purl_field(value: str | None) -> str | None:
    """A field that can only hold a purl: its value unless blank (checked when added)."""
    return value if value is not None and value.strip() else None
