"""Purl identity and statement scope (docs/workers.md, consensus rule 4), without I/O.

Canonical form comes from packageurl-python; the scope tables below are worked by
hand with two trusted issuers: the vendor (priority 1, trust 0.90) and the distro
(priority 2, trust 0.80). Every scope case is checked in both status directions, so
a vendor statement that fails to reach a pair shows up whichever status it carries.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packageurl import PackageURL

from contracts.vex import VexStatus
from workers.vex_consensus.consensus import IssuerTrust, Statement, compute_consensus
from workers.vex_consensus.purls import (
    PurlError,
    ScopeSpecificity,
    applies,
    canonical_purl,
    canonical_purls,
    package_of,
    purl_problem,
    scope_of,
    scope_reason,
    specificity,
)

VULN = "CVE-2025-0018"
T0 = datetime(2025, 6, 1, tzinfo=UTC)
VENDOR, DISTRO = "vendor", "distro"
TRUST = {
    VENDOR: IssuerTrust(issuer_id=VENDOR, trust_score=Decimal("0.90"), priority=1),
    DISTRO: IssuerTrust(issuer_id=DISTRO, trust_score=Decimal("0.80"), priority=2),
}

# --- canonical form ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        (
            "pkg:oci/app@sha256%3Aaa11?os=linux&arch=amd64",
            "pkg:oci/app@sha256:aa11?arch=amd64&os=linux",
        ),
        (
            "pkg:oci/app@sha256:aa11?arch=amd64&os=linux",
            "pkg:oci/app@sha256:aa11?arch=amd64&os=linux",
        ),
        (
            "pkg:OCI/app@sha256:aa11?OS=linux&Arch=amd64",
            "pkg:oci/app@sha256:aa11?arch=amd64&os=linux",
        ),
        ("pkg:npm/left-pad@1.3.0?empty=&arch=x", "pkg:npm/left-pad@1.3.0?arch=x"),
        ("  pkg:npm/@angular/core@16.0.0 ", "pkg:npm/%40angular/core@16.0.0"),
        ("PKG:npm/%40angular/core@16.0.0", "pkg:npm/%40angular/core@16.0.0"),
        ("pkg:generic/tool@1?checksum=a,b", "pkg:generic/tool@1?checksum=a%2Cb"),
        (
            "pkg:golang/github.com/acme/tool@v1#cmd/./cli/",
            "pkg:golang/github.com/acme/tool@v1#cmd/cli",
        ),
        ("pkg:pypi/Django_Rest@3.0", "pkg:pypi/django-rest@3.0"),
    ],
)
def test_canonical_form(written: str, canonical: str) -> None:
    assert canonical_purl(written) == canonical
    assert canonical_purl(canonical) == canonical


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pkg:maven/@1.3.4", "invalid purl 'pkg:maven/@1.3.4': purl is missing the required name"),
        ("https://example.com/app", 'missing the required "pkg" scheme'),
        ("pkg:npm/a?k", "Invalid qualifier"),
        ("pkg:a b/c", "purl type must be composed only of"),
        ("", "invalid purl ''"),
    ],
)
def test_an_invalid_purl_is_one_line_naming_it(text: str, message: str) -> None:
    with pytest.raises(PurlError, match=message) as raised:
        canonical_purl(text)
    assert "\n" not in str(raised.value)


def test_an_advisorys_purls_are_distinct_canonical_forms_and_blanks_are_left_out() -> None:
    written = ["pkg:oci/app@d?os=linux&arch=amd64", " ", "pkg:oci/app@d?arch=amd64&os=linux"]
    assert canonical_purls(written) == ["pkg:oci/app@d?arch=amd64&os=linux"]
    assert purl_problem(written) is None
    problem = purl_problem(["pkg:npm/a@1", "pkg:npm/"])
    assert problem is not None and problem.startswith("invalid purl 'pkg:npm/'")


PURL_PARTS = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1
)


@settings(max_examples=300, database=None, deadline=None)
@given(
    name=PURL_PARTS,
    namespace=st.none() | PURL_PARTS,
    version=st.none() | PURL_PARTS,
    qualifiers=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_.-]{0,8}", fullmatch=True), PURL_PARTS),
    subpath=st.none() | st.from_regex(r"[a-z0-9]{1,5}(/[a-z0-9]{1,5}){0,2}", fullmatch=True),
)
def test_scope_parts_of_a_canonical_purl_are_the_librarys(
    name: str,
    namespace: str | None,
    version: str | None,
    qualifiers: dict[str, str],
    subpath: str | None,
) -> None:
    # Splitting the canonical string by its separators gives what the library parses.
    try:
        built = PackageURL(
            type="generic",
            namespace=namespace,
            name=name,
            version=version,
            qualifiers=qualifiers,
            subpath=subpath,
        ).to_string()
        canonical = canonical_purl(built)
    # Not every drawn part makes a purl; the library refuses those (a blank name with a
    # TypeError from to_string).
    except (ValueError, TypeError, PurlError):
        return
    parsed = PackageURL.from_string(canonical)
    scope = scope_of(canonical)
    assert scope.package == PackageURL(parsed.type, parsed.namespace, parsed.name).to_string()
    assert scope.package == package_of(canonical)
    assert (scope.version is None) is (not parsed.version)
    assert len(scope.qualifiers) == len(parsed.qualifiers or {})
    assert (scope.subpath is None) is (not parsed.subpath)
    assert canonical_purl(canonical) == canonical


# --- applicability and specificity ------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "pair", "expected"),
    [
        ("pkg:apk/wolfi/bash@1.0.0", "pkg:apk/wolfi/bash@1.0.0", True),
        ("pkg:apk/wolfi/bash", "pkg:apk/wolfi/bash@1.0.0", True),
        ("pkg:apk/wolfi/bash@2.0.0", "pkg:apk/wolfi/bash@1.0.0", False),
        ("pkg:apk/wolfi/bash@1.0.0", "pkg:apk/wolfi/bash", False),
        ("pkg:apk/wolfi/zsh", "pkg:apk/wolfi/bash@1.0.0", False),
        ("pkg:oci/web@d?arch=amd64", "pkg:oci/web@d?arch=amd64&os=linux", True),
        ("pkg:oci/web?os=linux", "pkg:oci/web@d?arch=amd64&os=linux", True),
        ("pkg:oci/web@d?arch=arm64", "pkg:oci/web@d?arch=amd64&os=linux", False),
        ("pkg:oci/web@d?arch=amd64", "pkg:oci/web@d", False),
        ("pkg:golang/x/y@v1", "pkg:golang/x/y@v1#cmd/cli", True),
        ("pkg:golang/x/y@v1#cmd/cli", "pkg:golang/x/y@v1#cmd/cli", True),
        ("pkg:golang/x/y@v1#cmd/other", "pkg:golang/x/y@v1#cmd/cli", False),
        ("pkg:golang/x/y@v1#cmd/cli", "pkg:golang/x/y@v1", False),
    ],
)
def test_a_statement_applies_to_pairs_its_scope_covers(
    statement: str, pair: str, expected: bool
) -> None:
    assert applies(scope_of(statement), scope_of(pair)) is expected
    reason = scope_reason(scope_of(statement), scope_of(pair))
    assert reason.startswith(("names this exact purl", "covers the pair")) is expected


def test_scope_reasons_name_what_differs() -> None:
    pair = scope_of("pkg:oci/web@d?arch=amd64&os=linux")
    assert scope_reason(scope_of("pkg:oci/web@d?arch=arm64"), pair) == (
        "qualifier arch=arm64 is not among the pair's"
    )
    assert scope_reason(scope_of("pkg:oci/web@e"), pair) == "names version e, not d"
    assert scope_reason(scope_of("pkg:oci/app@d"), pair) == "names another package (pkg:oci/app)"
    assert scope_reason(scope_of("pkg:oci/web?arch=amd64"), pair) == (
        "covers the pair: every version, a qualifier subset (arch=amd64)"
    )


@pytest.mark.parametrize(
    ("purl", "expected"),
    [
        ("pkg:apk/wolfi/bash", ScopeSpecificity(versioned=False, qualifiers=0, subpath=False)),
        ("pkg:apk/wolfi/bash@1.0.0", ScopeSpecificity(versioned=True, qualifiers=0, subpath=False)),
        (
            "pkg:apk/distro/git@2.39.0-r1?arch=x86_64&distro=wolfi",
            ScopeSpecificity(versioned=True, qualifiers=2, subpath=False),
        ),
        (
            "pkg:apk/distro/git?arch=x86_64",
            ScopeSpecificity(versioned=False, qualifiers=1, subpath=False),
        ),
        ("pkg:golang/x/y@v1#sub/dir", ScopeSpecificity(versioned=True, qualifiers=0, subpath=True)),
    ],
)
def test_specificity(purl: str, expected: ScopeSpecificity) -> None:
    assert specificity(scope_of(purl)) == expected


def test_a_version_outranks_qualifiers_which_outrank_a_subpath() -> None:
    bare = specificity(scope_of("pkg:apk/wolfi/bash"))
    assert specificity(scope_of("pkg:apk/wolfi/bash#lib")) > bare
    assert specificity(scope_of("pkg:apk/wolfi/bash?arch=x86_64")) > specificity(
        scope_of("pkg:apk/wolfi/bash#lib")
    )
    assert specificity(scope_of("pkg:apk/wolfi/bash@1")) > specificity(
        scope_of("pkg:apk/wolfi/bash?arch=x86_64&os=linux")
    )


# --- consensus by scope, both directions ------------------------------------------------

APP_VENDOR = "pkg:oci/app@sha256%3Aaa11?os=linux&arch=amd64"
APP_DISTRO = "pkg:oci/app@sha256%3Aaa11?arch=amd64&os=linux"
WEB_PAIR = "pkg:oci/web@sha256%3Abb22?arch=amd64&os=linux"


def statement(n: int, issuer: str, purl: str, status: VexStatus) -> Statement:
    return Statement(
        raw_id=uuid.UUID(int=n),
        issuer_id=issuer,
        component_purl=canonical_purl(purl),
        vulnerability_id=VULN,
        status=status,
        justification="vulnerable_code_not_present" if status == "not_affected" else None,
        published_at=T0,
    )


# (vendor purl, distro purl = the pair, vendor status, distro status, expected status,
#  the statement that decides, the vendor statement's verdict)
SCOPE_CASES = {
    "qualifiers-in-another-order/vendor-not-affected": (
        APP_VENDOR, APP_DISTRO, "not_affected", "affected", "not_affected", 1, "contributing"
    ),
    "qualifiers-in-another-order/vendor-affected": (
        APP_VENDOR, APP_DISTRO, "affected", "not_affected", "affected", 1, "contributing"
    ),
    "qualifier-subset/vendor-fixed": (
        "pkg:oci/web@sha256%3Abb22?arch=amd64", WEB_PAIR, "fixed", "affected", "fixed", 1,
        "contributing",
    ),
    "qualifier-subset/vendor-affected": (
        "pkg:oci/web@sha256%3Abb22?arch=amd64", WEB_PAIR, "affected", "fixed", "affected", 1,
        "contributing",
    ),
    "versionless/vendor-not-affected": (
        "pkg:npm/left-pad", "pkg:npm/left-pad@1.3.0", "not_affected", "affected",
        "not_affected", 1, "contributing",
    ),
    "versionless/vendor-affected": (
        "pkg:npm/left-pad", "pkg:npm/left-pad@1.3.0", "affected", "not_affected", "affected",
        1, "contributing",
    ),
    "subpath/vendor-not-affected": (
        "pkg:golang/github.com/acme/tool@v1.2.0#cmd/./cli",
        "pkg:golang/github.com/acme/tool@v1.2.0#cmd/cli",
        "not_affected", "affected", "not_affected", 1, "contributing",
    ),
    "subpath/vendor-affected": (
        "pkg:golang/github.com/acme/tool@v1.2.0",
        "pkg:golang/github.com/acme/tool@v1.2.0#cmd/cli",
        "affected", "not_affected", "affected", 1, "contributing",
    ),
    "qualifier-with-another-value/vendor-not-affected": (
        "pkg:oci/web@sha256%3Abb22?arch=arm64", WEB_PAIR, "not_affected", "affected",
        "affected", 2, "excluded",
    ),
    "qualifier-with-another-value/vendor-affected": (
        "pkg:oci/web@sha256%3Abb22?arch=arm64", WEB_PAIR, "affected", "not_affected",
        "not_affected", 2, "excluded",
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("vendor_purl", "pair", "vendor", "distro", "expected", "decider", "vendor_verdict"),
    list(SCOPE_CASES.values()),
    ids=list(SCOPE_CASES),
)
def test_the_vendor_decides_every_pair_its_statement_covers(
    vendor_purl: str,
    pair: str,
    vendor: VexStatus,
    distro: VexStatus,
    expected: VexStatus,
    decider: int,
    vendor_verdict: str,
) -> None:
    statements = [statement(1, VENDOR, vendor_purl, vendor), statement(2, DISTRO, pair, distro)]
    outcome = compute_consensus(canonical_purl(pair), VULN, statements, TRUST)
    assert outcome.result is not None
    assert outcome.result.resolved_status == expected
    assert outcome.result.contributing_vex_ids == (uuid.UUID(int=decider),)
    assert outcome.result.conflict_detected is False  # the levels differ: dissent, no conflict
    assert str(outcome.result.confidence) == "1.0000"
    verdicts = {v.raw_id.int: v for v in outcome.verdicts}
    assert verdicts[1].disposition == vendor_verdict
    assert verdicts[2].disposition == ("lower_priority" if decider == 1 else "contributing")
    if vendor_verdict == "excluded":
        assert verdicts[1].exclusion == "out_of_scope"


def test_another_issuers_more_specific_statement_does_not_set_the_vendor_aside() -> None:
    # Rule 4 works within an issuer: the distro's exact product does not outrank the
    # vendor's broader statement; priority decides between them.
    statements = [
        statement(1, VENDOR, "pkg:oci/web@sha256%3Abb22?arch=amd64", "fixed"),
        statement(2, DISTRO, WEB_PAIR, "affected"),
        statement(3, VENDOR, "pkg:oci/web@sha256%3Abb22", "affected"),
    ]
    outcome = compute_consensus(canonical_purl(WEB_PAIR), VULN, statements, TRUST)
    assert outcome.result is not None
    assert outcome.result.resolved_status == "fixed"
    verdicts = {v.raw_id.int: (v.disposition, v.exclusion) for v in outcome.verdicts}
    assert verdicts == {
        1: ("contributing", None),
        2: ("lower_priority", None),
        3: ("excluded", "less_specific_scope"),
    }
    assert outcome.conflicts == ("scope_mismatch",)
