"""Pure parsing of VEX documents into per-pair statements.

:func:`parse_document` takes the bytes of one document and returns a
:class:`ParsedDocument`, or raises :class:`DocumentError` with a one-line
message (invalid JSON, unknown format, a field of the wrong shape).

Formats:

- **OpenVEX 0.2.0** (``@context`` ``https://openvex.dev/ns`` or ``…/v0.2.0``). The
  issuer is the document ``author``. A product is named by an ``@id`` that is a
  purl, else by ``identifiers.purl``. Every product, and every subcomponent of
  it, makes a (purl, vulnerability) pair of its own; the vulnerability ``name``
  and each of its ``aliases`` make pairs too, so an advisory found under any of
  its names meets the statement. A statement's time is its ``last_updated``, else
  its ``timestamp``, else the document's ``last_updated``, else its ``timestamp``.
- **OpenVEX 0.0.1** (``…/v0.0.1``, the legacy shape): ``vulnerability`` is a string,
  ``products`` and ``subcomponents`` are lists of strings; read with the same rules.
- **CSAF 2.0** (``document.csaf_version`` ``2.0``). The issuer is
  ``document.publisher.namespace``. ``product_status`` categories map as
  :data:`~workers.vex_consensus.consensus.CSAF_STATUS` (``recommended`` is not a VEX
  status and is skipped). Product ids resolve to purls through the product tree:
  ``product_identification_helper.purl`` of a branch product or full product
  name, and for a relationship's ``full_product_name`` (a component as part of a
  platform) the purl of its ``product_reference``. A branch product without a purl
  whose name is an RPM NEVRA under an ``architecture`` branch of the same arch
  gets a derived ``pkg:rpm/<vendor>/<name>@<version>-<release>?arch=…[&epoch=…]``
  purl, marked ``"purl_source": "rpm_nevra"`` in its raw statement. Any other
  product without a purl is reported in :attr:`ParsedDocument.skipped`, never
  fatal. ``flags`` give the justification and ``threats`` of category ``impact``
  the impact statement of ``not_affected`` products they name (directly or by
  group). The statement time is ``document.tracking.current_release_date`` for
  every statement: a later revision of an advisory must supersede the earlier
  one under "latest statement wins", which the vulnerability's release and
  discovery dates, unchanged between revisions, could not do.
- CycloneDX documents are recognised and refused with a clear message; their
  statuses map as :data:`~workers.vex_consensus.consensus.CYCLONEDX_STATUS`.

Purls: every product purl is stored in canonical form
(:func:`~workers.vex_consensus.purls.canonical_purl`, ``packageurl-python``). A
product whose purl the specification refuses makes no statement; it is reported in
:attr:`ParsedDocument.skipped` with the reason, like a product without a purl.

Identity: each record's raw id is a uuid5 (fixed :data:`RAW_ID_NAMESPACE`) over the
issuer and the canonical JSON of the record (pair, status, justification, impact
statement, UTC time, parent product, raw statement; purls as written, so the ids of
statements stored before purls were canonical do not change), so parsing the same document
twice yields the same ids and a changed statement yields a new one. Records with
equal ids inside one document are kept once. Timestamps are normalised to UTC at
microsecond precision (rounded); a timestamp without a zone offset is an error.

Raw statements (stored in ``vex.vex_raw.raw_statement``): for OpenVEX, the
statement object exactly as written; for CSAF, which has no per-product
statement object, a small excerpt (vulnerability ids, ``product_status``
category, product ids, the flag label and impact applied, purl source, the
vulnerability's release and discovery dates).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, NamedTuple, TypeVar
from urllib.parse import quote

import msgspec

from contracts.vex import VexStatus
from workers.vex_consensus.consensus import CSAF_STATUS, Statement, canonical_json
from workers.vex_consensus.purls import PurlError, canonical_purl

RAW_ID_NAMESPACE: Final = uuid.UUID("92eb86de-6094-4f18-bb88-e4d1de12d596")
"""Fixed namespace of statement raw ids; changing it would re-identify every stored statement."""

DocumentFormat = Literal["openvex", "csaf"]

_T = TypeVar("_T")

_OPENVEX_CONTEXT = re.compile(r"^https?://openvex\.dev/ns(?:/v(?P<version>[0-9][0-9.]*))?/?$")
_NEVRA = re.compile(
    r"^(?P<name>.+)-(?P<epoch>\d+):(?P<version>[^:-]+)-(?P<release>[^:-]+)\.(?P<arch>[^.:-]+)$"
)
# ``recommended`` lists products a vendor suggests; it says nothing about exposure.
_CSAF_IGNORED_CATEGORIES: Final = frozenset({"recommended"})

# Column limits of vex.vex_raw: a longer value is refused here, not by the database.
_Issuer = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
_VulnId = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
_Justification = Annotated[str, msgspec.Meta(max_length=100)]
_Time = Annotated[datetime, msgspec.Meta(tz=True)]


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


def parse_document(data: bytes) -> ParsedDocument:
    """Parse one OpenVEX (0.2.0 or 0.0.1) or CSAF 2.0 document."""
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark some editors write
        data = data[3:]
    if not data.strip():
        raise DocumentError("empty document")
    try:
        obj = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise DocumentError(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DocumentError(f"a VEX document is a JSON object, got {type(obj).__name__}")
    if "@context" in obj:
        return _parse_openvex(obj)
    document = obj.get("document")
    if isinstance(document, dict) and "csaf_version" in document:
        return _parse_csaf(obj)
    if obj.get("bomFormat") == "CycloneDX":
        raise DocumentError(
            "CycloneDX documents are not supported: import OpenVEX or CSAF 2.0 VEX documents"
        )
    raise DocumentError(
        "unrecognised document: expected OpenVEX (an '@context' of https://openvex.dev/ns) "
        "or CSAF 2.0 ('document.csaf_version')"
    )


# --- shared -----------------------------------------------------------------------------


def _convert(obj: Any, kind: type[_T], what: str) -> _T:
    try:
        return msgspec.convert(obj, kind)
    except msgspec.ValidationError as exc:
        raise DocumentError(f"invalid {what} document: {exc}") from None


class _Collector:
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


def _issuer(value: str, field: str) -> str:
    issuer = value.strip()
    if not issuer:
        raise DocumentError(f"the issuer ({field}) is blank")
    return issuer


def _text(value: str | None) -> str | None:
    return (value.strip() or None) if value is not None else None


def _names_purl(value: str | None) -> bool:
    """Whether an id field names a purl (other ids, e.g. URLs, name something else)."""
    return value is not None and value.strip()[:4].lower() == "pkg:"


def _purl_field(value: str | None) -> str | None:
    """A field that can only hold a purl: its value unless blank (checked when added)."""
    return value if value is not None and value.strip() else None


# --- OpenVEX ----------------------------------------------------------------------------


class _OvComponent(msgspec.Struct, frozen=True):
    id: str | None = msgspec.field(default=None, name="@id")
    identifiers: dict[str, str] = {}

    def purl(self) -> str | None:
        if _names_purl(self.id):
            return self.id
        return _purl_field(self.identifiers.get("purl"))

    def label(self) -> str:
        return self.id or next(iter(self.identifiers.values()), "(unnamed product)")


class _OvProduct(_OvComponent, frozen=True):
    subcomponents: list[_OvComponent] = []


class _OvVulnerability(msgspec.Struct, frozen=True):
    name: _VulnId
    aliases: list[_VulnId] = []


class _OvStatement(msgspec.Struct, frozen=True):
    vulnerability: _OvVulnerability
    status: VexStatus
    products: list[_OvProduct] = []
    justification: _Justification | None = None
    impact_statement: str | None = None
    timestamp: _Time | None = None
    last_updated: _Time | None = None


class _OvLegacyStatement(msgspec.Struct, frozen=True):
    vulnerability: _VulnId
    status: VexStatus
    products: list[str] = []
    subcomponents: list[str] = []
    justification: _Justification | None = None
    impact_statement: str | None = None
    timestamp: _Time | None = None
    last_updated: _Time | None = None


class _OvDocument(msgspec.Struct, frozen=True):
    author: _Issuer
    statements: list[_OvStatement]
    id: str | None = msgspec.field(default=None, name="@id")
    timestamp: _Time | None = None
    last_updated: _Time | None = None


class _OvLegacyDocument(msgspec.Struct, frozen=True):
    author: _Issuer
    statements: list[_OvLegacyStatement]
    id: str | None = msgspec.field(default=None, name="@id")
    timestamp: _Time | None = None
    last_updated: _Time | None = None


def _parse_openvex(obj: dict[str, Any]) -> ParsedDocument:
    context = obj["@context"]
    match = _OPENVEX_CONTEXT.match(context) if isinstance(context, str) else None
    if match is None:
        raise DocumentError(f"unrecognised @context {context!r}: expected https://openvex.dev/ns")
    version = match["version"] or "0.2.0"
    if version == "0.0.1":
        return _parse_openvex_legacy(obj)
    if version != "0.2.0":
        raise DocumentError(f"unsupported OpenVEX version {version} (supported: 0.2.0, 0.0.1)")
    doc = _convert(obj, _OvDocument, "OpenVEX 0.2.0")
    raw_statements: list[dict[str, Any]] = obj["statements"]
    out = _Collector(_issuer(doc.author, "author"))
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
                        justification=_text(stmt.justification),
                        impact_statement=_text(stmt.impact_statement),
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
    doc = _convert(obj, _OvLegacyDocument, "OpenVEX 0.0.1")
    raw_statements: list[dict[str, Any]] = obj["statements"]
    out = _Collector(_issuer(doc.author, "author"))
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
            if not _names_purl(component):
                out.skip(stmt.vulnerability, component, "no purl")
                continue
            out.add(
                purl=component,
                vulnerability_id=stmt.vulnerability,
                status=stmt.status,
                justification=_text(stmt.justification),
                impact_statement=_text(stmt.impact_statement),
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


# --- CSAF -------------------------------------------------------------------------------


class _CsafHelper(msgspec.Struct, frozen=True):
    purl: str | None = None


class _CsafProduct(msgspec.Struct, frozen=True):
    product_id: str
    name: str = ""
    product_identification_helper: _CsafHelper | None = None

    def purl(self) -> str | None:
        helper = self.product_identification_helper
        return None if helper is None else _purl_field(helper.purl)


class _CsafBranch(msgspec.Struct, frozen=True):
    category: str = ""
    name: str = ""
    product: _CsafProduct | None = None
    branches: list[_CsafBranch] = []


class _CsafRelationship(msgspec.Struct, frozen=True):
    full_product_name: _CsafProduct
    product_reference: str
    relates_to_product_reference: str = ""
    category: str = ""


class _CsafGroup(msgspec.Struct, frozen=True):
    group_id: str
    product_ids: list[str]


class _CsafTree(msgspec.Struct, frozen=True):
    branches: list[_CsafBranch] = []
    full_product_names: list[_CsafProduct] = []
    relationships: list[_CsafRelationship] = []
    product_groups: list[_CsafGroup] = []


class _CsafScoped(msgspec.Struct, frozen=True):
    product_ids: list[str] = []
    group_ids: list[str] = []


_S = TypeVar("_S", bound=_CsafScoped)


class _CsafFlag(_CsafScoped, frozen=True):
    label: _Justification = ""


class _CsafThreat(_CsafScoped, frozen=True):
    category: str = ""
    details: str = ""


class _CsafVulnId(msgspec.Struct, frozen=True):
    system_name: str
    text: _VulnId


class _CsafVulnerability(msgspec.Struct, frozen=True):
    cve: _VulnId | None = None
    ids: list[_CsafVulnId] = []
    product_status: dict[str, list[str]] = {}
    flags: list[_CsafFlag] = []
    threats: list[_CsafThreat] = []
    release_date: _Time | None = None
    discovery_date: _Time | None = None


class _CsafPublisher(msgspec.Struct, frozen=True):
    namespace: _Issuer
    name: str = ""


class _CsafTracking(msgspec.Struct, frozen=True):
    id: str
    current_release_date: _Time


class _CsafMeta(msgspec.Struct, frozen=True):
    csaf_version: str
    publisher: _CsafPublisher
    tracking: _CsafTracking


class _CsafDocument(msgspec.Struct, frozen=True):
    document: _CsafMeta
    product_tree: _CsafTree = msgspec.field(default_factory=_CsafTree)
    vulnerabilities: list[_CsafVulnerability] = []


class _Resolved(NamedTuple):
    purl: str | None
    source: str
    """``product_identification_helper``, ``rpm_nevra``, or why there is no purl."""


def _parse_csaf(obj: dict[str, Any]) -> ParsedDocument:
    version = obj["document"].get("csaf_version")
    if version != "2.0":
        raise DocumentError(f"unsupported CSAF version {version!r} (supported: '2.0')")
    doc = _convert(obj, _CsafDocument, "CSAF 2.0")
    published = doc.document.tracking.current_release_date
    products = _csaf_products(doc.product_tree)
    groups = {g.group_id: g.product_ids for g in doc.product_tree.product_groups}
    out = _Collector(_issuer(doc.document.publisher.namespace, "document.publisher.namespace"))
    for index, vuln in enumerate(doc.vulnerabilities):
        if vuln.cve is not None:
            vulnerability_ids = [vuln.cve]
        else:
            vulnerability_ids = list(dict.fromkeys(i.text for i in vuln.ids))
        if not vulnerability_ids:
            out.skip(f"vulnerabilities[{index}]", "*", "vulnerability has neither cve nor ids")
            continue
        justification = _scoped_first(vuln.flags, groups, lambda f: _text(f.label))
        impact = _scoped_first(
            vuln.threats, groups, lambda t: _text(t.details) if t.category == "impact" else None
        )
        # (purl, category) -> product ids, in document order: several platform products
        # often ship the same package and make one statement.
        grouped: dict[tuple[str, str], list[str]] = {}
        sources: dict[tuple[str, str], str] = {}
        for category, product_ids in vuln.product_status.items():
            if category in _CSAF_IGNORED_CATEGORIES:
                continue
            if category not in CSAF_STATUS:
                raise DocumentError(
                    f"invalid CSAF 2.0 document: unknown product_status category {category!r} "
                    f"- at `$.vulnerabilities[{index}].product_status`"
                )
            for product_id in product_ids:
                resolved = products.get(product_id, _Resolved(None, "unknown product id"))
                if resolved.purl is None:
                    for vulnerability_id in vulnerability_ids:
                        out.skip(vulnerability_id, product_id, resolved.source)
                    continue
                key = (resolved.purl, category)
                grouped.setdefault(key, []).append(product_id)
                sources[key] = resolved.source
        for (purl, category), product_ids in grouped.items():
            status = CSAF_STATUS[category]
            applied_flag: str | None = None
            applied_impact: str | None = None
            if status == "not_affected":
                applied_flag = next(
                    (justification[p] for p in product_ids if p in justification), None
                )
                applied_impact = next((impact[p] for p in product_ids if p in impact), None)
            raw: dict[str, Any] = {
                "vulnerability_ids": vulnerability_ids,
                "product_status": category,
                "product_ids": product_ids,
                "purl_source": sources[(purl, category)],
                "flag": applied_flag,
                "impact": applied_impact,
                "release_date": _iso(vuln.release_date),
                "discovery_date": _iso(vuln.discovery_date),
            }
            for vulnerability_id in vulnerability_ids:
                out.add(
                    purl=purl,
                    vulnerability_id=vulnerability_id,
                    status=status,
                    justification=applied_flag,
                    impact_statement=applied_impact,
                    published_at=published,
                    raw=raw,
                )
    return ParsedDocument(
        format="csaf",
        format_version="2.0",
        document_id=doc.document.tracking.id,
        issuer_id=out.issuer_id,
        records=tuple(out.records.values()),
        skipped=tuple(out.skipped.values()),
    )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _scoped_first(
    items: list[_S], groups: Mapping[str, list[str]], pick: Callable[[_S], str | None]
) -> dict[str, str]:
    """Product id -> the first value ``pick`` yields among the items naming that product."""
    found: dict[str, str] = {}
    for item in items:
        value = pick(item)
        if value is None:
            continue
        named = [*item.product_ids]
        for group_id in item.group_ids:
            named.extend(groups.get(group_id, ()))
        for product_id in named:
            found.setdefault(product_id, value)
    return found


def _walk(branches: list[_CsafBranch]) -> Iterator[tuple[_CsafBranch, tuple[_CsafBranch, ...]]]:
    # Iterative, so a hostile nesting depth cannot exhaust the interpreter stack.
    stack: list[tuple[_CsafBranch, tuple[_CsafBranch, ...]]] = [(b, ()) for b in reversed(branches)]
    while stack:
        branch, ancestors = stack.pop()
        yield branch, ancestors
        stack.extend((child, (*ancestors, branch)) for child in reversed(branch.branches))


def _csaf_products(tree: _CsafTree) -> dict[str, _Resolved]:
    products: dict[str, _Resolved] = {}
    for branch, ancestors in _walk(tree.branches):
        if branch.product is None:
            continue
        purl = branch.product.purl()
        if purl is not None:
            products[branch.product.product_id] = _Resolved(purl, "product_identification_helper")
        else:
            derived = _rpm_purl(branch, ancestors)
            products[branch.product.product_id] = (
                _Resolved(derived, "rpm_nevra")
                if derived is not None
                else _Resolved(None, "product has no purl")
            )
    for product in tree.full_product_names:
        purl = product.purl()
        products[product.product_id] = (
            _Resolved(purl, "product_identification_helper")
            if purl is not None
            else _Resolved(None, "product has no purl")
        )
    for rel in tree.relationships:
        own = rel.full_product_name.purl()
        if own is not None:
            products[rel.full_product_name.product_id] = _Resolved(
                own, "product_identification_helper"
            )
            continue
        component = products.get(rel.product_reference)
        if component is None:
            component = _Resolved(
                None, f"relationship names unknown product {rel.product_reference!r}"
            )
        products[rel.full_product_name.product_id] = component
    return products


def _rpm_purl(branch: _CsafBranch, ancestors: tuple[_CsafBranch, ...]) -> str | None:
    """A purl for an RPM named only by its NEVRA, e.g. ``libvirt-0:4.5.0-35.el8.x86_64``.

    Derived only when the name parses as a NEVRA, its arch equals the enclosing
    ``architecture`` branch and a ``vendor`` branch names the namespace, so an
    arbitrary product name is never mistaken for a package.
    """
    assert branch.product is not None
    match = _NEVRA.match(branch.product.name or branch.product.product_id)
    arch = next((a.name for a in ancestors if a.category == "architecture"), None)
    vendor = next((a.name for a in ancestors if a.category == "vendor"), None)
    if match is None or arch != match["arch"] or not vendor:
        return None
    namespace = re.sub(r"[^a-z0-9]", "", vendor.lower())
    if not namespace:
        return None
    version = quote(f"{match['version']}-{match['release']}", safe="")
    purl = f"pkg:rpm/{namespace}/{quote(match['name'], safe='')}@{version}?arch={arch}"
    # Epoch 0 is the implicit default and is left out, as distributions publish it.
    if match["epoch"] != "0":
        purl += f"&epoch={match['epoch']}"
    return purl
