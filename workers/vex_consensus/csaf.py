"""CSAF 2.0 documents into records.

The rules are described in :mod:`workers.vex_consensus.documents`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple, TypeVar
from urllib.parse import quote

import msgspec

from workers.vex_consensus.consensus import CSAF_STATUS
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
    purl_field,
    text,
)

_NEVRA = re.compile(
    r"^(?P<name>.+)-(?P<epoch>\d+):(?P<version>[^:-]+)-(?P<release>[^:-]+)\.(?P<arch>[^.:-]+)$"
)
# ``recommended`` lists products a vendor suggests; it says nothing about exposure.
_CSAF_IGNORED_CATEGORIES: Final = frozenset({"recommended"})


class _CsafHelper(msgspec.Struct, frozen=True):
    purl: str | None = None


class _CsafProduct(msgspec.Struct, frozen=True):
    product_id: str
    name: str = ""
    product_identification_helper: _CsafHelper | None = None

    def purl(self) -> str | None:
        helper = self.product_identification_helper
        return None if helper is None else purl_field(helper.purl)


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
    label: Justification = ""


class _CsafThreat(_CsafScoped, frozen=True):
    category: str = ""
    details: str = ""


class _CsafVulnId(msgspec.Struct, frozen=True):
    system_name: str
    text: VulnId


class _CsafVulnerability(msgspec.Struct, frozen=True):
    cve: VulnId | None = None
    ids: list[_CsafVulnId] = []
    product_status: dict[str, list[str]] = {}
    flags: list[_CsafFlag] = []
    threats: list[_CsafThreat] = []
    release_date: Time | None = None
    discovery_date: Time | None = None


class _CsafPublisher(msgspec.Struct, frozen=True):
    namespace: Issuer
    name: str = ""


class _CsafTracking(msgspec.Struct, frozen=True):
    id: str
    current_release_date: Time


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


def parse_csaf(obj: dict[str, Any]) -> ParsedDocument:
    version = obj["document"].get("csaf_version")
    if version != "2.0":
        raise DocumentError(f"unsupported CSAF version {version!r} (supported: '2.0')")
    doc = convert(obj, _CsafDocument, "CSAF 2.0")
    published = doc.document.tracking.current_release_date
    products = _csaf_products(doc.product_tree)
    groups = {g.group_id: g.product_ids for g in doc.product_tree.product_groups}
    out = Collector(issuer(doc.document.publisher.namespace, "document.publisher.namespace"))
    for index, vuln in enumerate(doc.vulnerabilities):
        if vuln.cve is not None:
            vulnerability_ids = [vuln.cve]
        else:
            vulnerability_ids = list(dict.fromkeys(i.text for i in vuln.ids))
        if not vulnerability_ids:
            out.skip(f"vulnerabilities[{index}]", "*", "vulnerability has neither cve nor ids")
            continue
        justification = _scoped_first(vuln.flags, groups, lambda f: text(f.label))
        impact = _scoped_first(
            vuln.threats, groups, lambda t: text(t.details) if t.category == "impact" else None
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
