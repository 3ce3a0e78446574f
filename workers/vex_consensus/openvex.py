"""OpenVEX 0.2.0 and 0.0.1 documents into records.

The rules are described in :mod:`workers.vex_consensus.documents`.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from contracts.vex import VexStatus
from workers.vex_consensus.records import (
    Collector,
    DocumentError,
    Issuer,
    Justification,
    ParsedDocument,
    Time,
    VulnId,
    convert,
    issuer,
    names_purl,
    purl_field,
    text,
)

_OPENVEX_CONTEXT = re.compile(r"^https?://openvex\.dev/ns(?:/v(?P<version>[0-9][0-9.]*))?/?$")


class _OvComponent(msgspec.Struct, frozen=True):
    id: str | None = msgspec.field(default=None, name="@id")
    identifiers: dict[str, str] = {}

    def purl(self) -> str | None:
        if names_purl(self.id):
            return self.id
        return purl_field(self.identifiers.get("purl"))

    def label(self) -> str:
        return self.id or next(iter(self.identifiers.values()), "(unnamed product)")


class _OvProduct(_OvComponent, frozen=True):
    subcomponents: list[_OvComponent] = []


class _OvVulnerability(msgspec.Struct, frozen=True):
    name: VulnId
    aliases: list[VulnId] = []


class _OvStatement(msgspec.Struct, frozen=True):
    vulnerability: _OvVulnerability
    status: VexStatus
    products: list[_OvProduct] = []
    justification: Justification | None = None
    impact_statement: str | None = None
    timestamp: Time | None = None
    last_updated: Time | None = None


class _OvLegacyStatement(msgspec.Struct, frozen=True):
    vulnerability: VulnId
    status: VexStatus
    products: list[str] = []
    subcomponents: list[str] = []
    justification: Justification | None = None
    impact_statement: str | None = None
    timestamp: Time | None = None
    last_updated: Time | None = None


class _OvDocument(msgspec.Struct, frozen=True):
    author: Issuer
    statements: list[_OvStatement]
    id: str | None = msgspec.field(default=None, name="@id")
    timestamp: Time | None = None
    last_updated: Time | None = None


class _OvLegacyDocument(msgspec.Struct, frozen=True):
    author: Issuer
    statements: list[_OvLegacyStatement]
    id: str | None = msgspec.field(default=None, name="@id")
    timestamp: Time | None = None
    last_updated: Time | None = None


def parse_openvex(obj: dict[str, Any]) -> ParsedDocument:
    context = obj["@context"]
    match = _OPENVEX_CONTEXT.match(context) if isinstance(context, str) else None
    if match is None:
        raise DocumentError(f"unrecognised @context {context!r}: expected https://openvex.dev/ns")
    version = match["version"] or "0.2.0"
    if version == "0.0.1":
        return _parse_openvex_legacy(obj)
    if version != "0.2.0":
        raise DocumentError(f"unsupported OpenVEX version {version} (supported: 0.2.0, 0.0.1)")
    doc = convert(obj, _OvDocument, "OpenVEX 0.2.0")
    raw_statements: list[dict[str, Any]] = obj["statements"]
    out = Collector(issuer(doc.author, "author"))
    for index, (stmt, raw) in enumerate(zip(doc.statements, raw_statements, strict=True)):
        if not stmt.products:
            raise DocumentError(
                f"invalid OpenVEX 0.2.0 document: statement {index} has no products"
            )
        published = stmt.last_updated or stmt.timestamp or doc.last_updated or doc.timestamp
        vulnerability_ids = list(
            dict.fromkeys([stmt.vulnerability.name, *stmt.vulnerability.aliases])
        )
        for vulnerability_id in vulnerability_ids:
            for product in stmt.products:
                pairs: list[tuple[_OvComponent, str | None]] = [(product, None)]
                pairs += [(sub, product.purl() or product.label()) for sub in product.subcomponents]
                for component, parent in pairs:
                    purl = component.purl()
                    if purl is None:
                        out.skip(vulnerability_id, component.label(), "no purl")
                        continue
                    out.add(
                        purl=purl,
                        vulnerability_id=vulnerability_id,
                        status=stmt.status,
                        justification=text(stmt.justification),
                        impact_statement=text(stmt.impact_statement),
                        published_at=published,
                        raw=raw,
                        parent_product=parent,
                    )
    return ParsedDocument(
        format="openvex",
        format_version="0.2.0",
        document_id=doc.id,
        issuer_id=out.issuer_id,
        records=tuple(out.records.values()),
        skipped=tuple(out.skipped.values()),
    )


def _parse_openvex_legacy(obj: dict[str, Any]) -> ParsedDocument:
    doc = convert(obj, _OvLegacyDocument, "OpenVEX 0.0.1")
    raw_statements: list[dict[str, Any]] = obj["statements"]
    out = Collector(issuer(doc.author, "author"))
    for index, (stmt, raw) in enumerate(zip(doc.statements, raw_statements, strict=True)):
        if not stmt.products:
            raise DocumentError(
                f"invalid OpenVEX 0.0.1 document: statement {index} has no products"
            )
        published = stmt.last_updated or stmt.timestamp or doc.last_updated or doc.timestamp
        # 0.0.1 subcomponents are one flat list qualifying every product of the statement.
        pairs: list[tuple[str, str | None]] = [(p, None) for p in stmt.products]
        pairs += [(sub, p) for p in stmt.products for sub in stmt.subcomponents]
        for component, parent in pairs:
            if not names_purl(component):
                out.skip(stmt.vulnerability, component, "no purl")
                continue
            out.add(
                purl=component,
                vulnerability_id=stmt.vulnerability,
                status=stmt.status,
                justification=text(stmt.justification),
                impact_statement=text(stmt.impact_statement),
                published_at=published,
                raw=raw,
                parent_product=parent,
            )
    return ParsedDocument(
        format="openvex",
        format_version="0.0.1",
        document_id=doc.id,
        issuer_id=out.issuer_id,
        records=tuple(out.records.values()),
        skipped=tuple(out.skipped.values()),
    )
