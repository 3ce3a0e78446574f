"""Parsing VEX documents: the shared sample documents, stable ids, clear errors, status maps.

The samples live in ``shared/data/vex/`` beside the checkout (public documents
from the OpenVEX project and Red Hat); tests that need them skip, saying where
they looked, when the folder is absent.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from workers.vex_consensus.consensus import (
    CSAF_STATUS,
    CYCLONEDX_STATUS,
    OPENVEX_STATUS,
    IssuerTrust,
    compute_consensus,
)
from workers.vex_consensus.documents import DocumentError, ParsedDocument, parse_document

VEX_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "vex"

# Stored purls are canonical (packageurl-python leaves the digest's ":" unencoded); the
# samples write it "%3A".
ALPINE_IMAGE = (
    "pkg:oci/alpine@sha256:124c7d2707904eea7431fffe91522a01e5a861a624ee31d03372cc1d138a3126"
)
ALPINE_IMAGE_AS_WRITTEN = (
    "pkg:oci/alpine@sha256%3A124c7d2707904eea7431fffe91522a01e5a861a624ee31d03372cc1d138a3126"
)
NGINX_IMAGE = (
    "pkg:oci/nginx@sha256:13d22ec63300e16014d4a42aed735207a8b33c223cff19627dd3042e5a10a3a0"
)
RH_MODULE = "module%2Bel8.1.0%2B4066%2B0f1aadab"


@pytest.fixture(scope="module")
def vex_dir() -> Path:
    if not VEX_DIR.is_dir():
        pytest.skip(f"sample VEX documents not found at {VEX_DIR}")
    return VEX_DIR


def load(vex_dir: Path, name: str) -> ParsedDocument:
    return parse_document((vex_dir / name).read_bytes())


def utc(
    year: int, month: int, day: int, hour: int, minute: int, second: int, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


# file -> format, version, issuer, records, statuses, vulnerability ids, times, skipped
EXPECTED: dict[str, dict[str, Any]] = {
    "openvex-v0.2.0-alpine-subcomponents.json": {
        "format": ("openvex", "0.2.0"),
        "issuer": "The OpenVEX Project <openvex@openssf.org>",
        "statuses": {"fixed": 9, "not_affected": 6},
        "vulnerabilities": {
            "CVE-2023-1255",
            "CVE-2023-2650",
            "CVE-2023-2975",
            "CVE-2023-3446",
            "CVE-2023-3817",
        },
        "purls": {
            ALPINE_IMAGE,
            "pkg:apk/alpine/libssl3@3.0.8-r3",
            "pkg:apk/alpine/libcrypto3@3.0.8-r3",
        },
        # the document's 2023-07-17T18:28:47.696004345-06:00, inherited by every statement
        "times": {utc(2023, 7, 18, 0, 28, 47, 696004)},
        "skipped": 0,
    },
    "openvex-bash-under-investigation.json": {
        "format": ("openvex", "0.2.0"),
        "issuer": "John Doe",
        "statuses": {"under_investigation": 1},
        "vulnerabilities": {"CVE-1234-5678"},
        "purls": {"pkg:apk/wolfi/bash@1.0.0"},
        "times": {utc(2023, 12, 5, 5, 4, 34, 779299)},
        "skipped": 0,
    },
    "openvex-bash-fixed.json": {
        "format": ("openvex", "0.2.0"),
        "issuer": "John Doe",
        "statuses": {"fixed": 1},
        "vulnerabilities": {"CVE-1234-5678"},
        "purls": {"pkg:apk/wolfi/bash@1.0.0"},
        "times": {utc(2023, 12, 5, 5, 6, 38, 99731)},
        "skipped": 0,
    },
    "openvex-git-multi-product.json": {
        "format": ("openvex", "0.2.0"),
        "issuer": "Wolfi J Inkinson",
        "statuses": {"fixed": 2},
        "vulnerabilities": {"CVE-2014-123456"},
        "purls": {
            "pkg:apk/distro/git@2.39.0-r1?arch=armv7",
            "pkg:apk/distro/git@2.39.0-r1?arch=x86_64",
        },
        # 21:55:19.945015302-06:00 is the next day in UTC
        "times": {utc(2023, 12, 5, 3, 55, 19, 945015)},
        "skipped": 0,
    },
    "openvex-nginx-not-affected.json": {
        "format": ("openvex", "0.2.0"),
        "issuer": "The OpenVEX Project",
        # two statements (own time, inherited time) x (name + one alias)
        "statuses": {"not_affected": 4},
        "vulnerabilities": {"CVE-2023-27103", "SNYK-DEBIAN12-LIBDE265-3361563"},
        "purls": {NGINX_IMAGE},
        "times": {utc(2023, 8, 16, 1, 55, 22, 76684), utc(2023, 8, 17, 1, 55, 22, 76684)},
        "skipped": 0,
    },
    "openvex-v0.0.1-legacy.json": {
        "format": ("openvex", "0.0.1"),
        "issuer": "Wolfi J Inkinson",
        "statuses": {"fixed": 2},
        "vulnerabilities": {"CVE-2023-12345"},
        "purls": {
            "pkg:apk/wolfi/git@2.39.0-r1?arch=armv7",
            "pkg:apk/wolfi/git@2.39.0-r1?arch=x86_64",
        },
        # .647787998 rounds to the microsecond
        "times": {utc(2023, 1, 9, 0, 2, 3, 647788)},
        "skipped": 0,
    },
    "csaf-example.json": {
        "format": ("csaf", "2.0"),
        "issuer": "https://psirt.example.com",
        # Its one known_not_affected product carries the purl "pkg:maven/@1.3.4", which has
        # no name: refused, with the reason, for both CVEs (see the test below).
        "statuses": {},
        "vulnerabilities": set(),
        "purls": set(),
        "times": set(),
        # known_affected names ABC:CSAFPID-0002, which the product tree does not define
        "skipped": 4,
    },
    "csaf-rhsa-2020_1358.json": {
        "format": ("csaf", "2.0"),
        "issuer": "https://www.redhat.com",
        # 737 platform products = 734 distinct RPMs, for each of 2 CVEs
        "statuses": {"fixed": 1468},
        "vulnerabilities": {"CVE-2020-1711", "CVE-2020-7039"},
        "purls": None,
        "times": {utc(2020, 4, 7, 14, 17, 0)},
        "skipped": 0,
    },
}


def test_every_sample_file_is_covered(vex_dir: Path) -> None:
    assert {p.name for p in vex_dir.glob("*.json")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_parses_to_the_expected_statements(vex_dir: Path, name: str) -> None:
    expected = EXPECTED[name]
    doc = load(vex_dir, name)
    statements = [r.statement for r in doc.records]
    assert (doc.format, doc.format_version) == expected["format"]
    assert doc.issuer_id == expected["issuer"]
    assert {s.issuer_id for s in statements} <= {expected["issuer"]}
    assert Counter(s.status for s in statements) == expected["statuses"]
    assert {s.vulnerability_id for s in statements} == expected["vulnerabilities"]
    if expected["purls"] is not None:
        assert {s.component_purl for s in statements} == expected["purls"]
    assert {s.published_at for s in statements} == expected["times"]
    assert len(doc.skipped) == expected["skipped"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parsing_twice_gives_identical_raw_ids(vex_dir: Path, name: str) -> None:
    data = (vex_dir / name).read_bytes()
    first = [r.statement.raw_id for r in parse_document(data).records]
    second = [r.statement.raw_id for r in parse_document(data).records]
    assert first == second
    assert len(set(first)) == len(first)
    assert all(i.version == 5 for i in first)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_raw_ids_follow_content_not_formatting(vex_dir: Path, name: str) -> None:
    data = (vex_dir / name).read_bytes()
    reformatted = json.dumps(json.loads(data), sort_keys=True, indent=3).encode()
    assert {r.statement.raw_id for r in parse_document(data).records} == {
        r.statement.raw_id for r in parse_document(reformatted).records
    }


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_truncated_sample_is_a_document_error(vex_dir: Path, name: str) -> None:
    data = (vex_dir / name).read_bytes()
    for cut in (data[: len(data) // 2], data.rstrip()[:-1]):
        with pytest.raises(DocumentError, match="not valid JSON") as raised:
            parse_document(cut)
        assert "\n" not in str(raised.value)


def test_raw_id_of_a_known_statement_never_changes(vex_dir: Path) -> None:
    # Stored rows are keyed by this id: a change here re-imports every statement ever stored.
    (record,) = load(vex_dir, "openvex-bash-fixed.json").records
    assert str(record.statement.raw_id) == "f598e499-71e5-5427-821b-86dbd7f6daa6"
    assert record.raw_statement["status"] == "fixed"
    assert record.raw_statement["timestamp"] == "2023-12-05T05:06:38.099731287Z"


def test_alpine_subcomponents_make_pairs_of_their_own(vex_dir: Path) -> None:
    doc = load(vex_dir, "openvex-v0.2.0-alpine-subcomponents.json")
    assert doc.document_id is not None
    assert doc.document_id.endswith(
        "vex-d4e9020b6d0d26f131d535e055902dd6ccf3e2088bce3079a8cd3588a4b14c78"
    )
    by_pair = {(r.statement.component_purl, r.statement.vulnerability_id): r for r in doc.records}
    assert len(by_pair) == 15
    libssl = by_pair["pkg:apk/alpine/libssl3@3.0.8-r3", "CVE-2023-3446"]
    assert libssl.parent_product == ALPINE_IMAGE_AS_WRITTEN
    assert libssl.statement.status == "not_affected"
    assert libssl.statement.justification == "vulnerable_code_not_present"
    assert libssl.statement.impact_statement == "affected functions were removed before packaging"
    image = by_pair[ALPINE_IMAGE, "CVE-2023-1255"]
    assert image.parent_product is None
    assert image.statement.status == "fixed"
    assert image.raw_statement["vulnerability"] == {"name": "CVE-2023-1255"}


def test_later_bash_statement_supersedes_the_earlier_one(vex_dir: Path) -> None:
    earlier = load(vex_dir, "openvex-bash-under-investigation.json").records[0].statement
    later = load(vex_dir, "openvex-bash-fixed.json").records[0].statement
    trust = {"John Doe": IssuerTrust(issuer_id="John Doe", trust_score=Decimal("0.60"), priority=2)}
    outcome = compute_consensus(
        "pkg:apk/wolfi/bash@1.0.0", "CVE-1234-5678", [later, earlier], trust
    )
    assert outcome.result is not None
    assert outcome.result.resolved_status == "fixed"
    assert outcome.result.contributing_vex_ids == (later.raw_id,)
    assert [v.exclusion for v in outcome.verdicts if v.raw_id == earlier.raw_id] == ["superseded"]


def test_nginx_aliases_and_repeated_statements(vex_dir: Path) -> None:
    doc = load(vex_dir, "openvex-nginx-not-affected.json")
    alias = [r.statement for r in doc.records if r.statement.vulnerability_id.startswith("SNYK")]
    assert len(alias) == 2
    assert {s.justification for s in alias} == {"component_not_present"}
    # The repeat has no timestamp of its own: it inherits the (later) document time.
    trust = {
        doc.issuer_id: IssuerTrust(issuer_id=doc.issuer_id, trust_score=Decimal(1), priority=1)
    }
    outcome = compute_consensus(
        NGINX_IMAGE, "CVE-2023-27103", [r.statement for r in doc.records], trust
    )
    assert outcome.result is not None
    assert outcome.result.resolved_status == "not_affected"
    (winner,) = outcome.result.contributing_vex_ids
    (winning,) = [r for r in doc.records if r.statement.raw_id == winner]
    assert "timestamp" not in winning.raw_statement
    assert winning.statement.published_at == utc(2023, 8, 17, 1, 55, 22, 76684)


def test_legacy_document_is_read_with_the_same_rules(vex_dir: Path) -> None:
    doc = load(vex_dir, "openvex-v0.0.1-legacy.json")
    assert doc.document_id == "https://openvex.dev/docs/example/vex-9fb3463de1b57"
    assert [r.raw_statement["vulnerability"] for r in doc.records] == ["CVE-2023-12345"] * 2


def test_csaf_example_product_with_an_invalid_purl_is_refused_with_the_reason(
    vex_dir: Path,
) -> None:
    doc = load(vex_dir, "csaf-example.json")
    assert doc.records == ()
    assert {(s.vulnerability_id, s.product, s.reason) for s in doc.skipped} == {
        (vulnerability_id, product, reason)
        for vulnerability_id in ("CVE-2009-4487", "CVE-2009-4488")
        for product, reason in [
            ("ABC:CSAFPID-0002", "unknown product id"),
            (
                "pkg:maven/@1.3.4",
                "invalid purl 'pkg:maven/@1.3.4': purl is missing the required name component",
            ),
        ]
    }


def test_csaf_example_maps_known_not_affected_with_its_impact(vex_dir: Path) -> None:
    # The sample's purl has no name (refused, see above); named, the product makes statements.
    data = (vex_dir / "csaf-example.json").read_bytes()
    doc = parse_document(data.replace(b'"pkg:maven/@1.3.4"', b'"pkg:maven/org.example/abc@1.3.4"'))
    assert doc.document_id == "2022-EVD-UC-01-NA-001"
    assert {r.statement.component_purl for r in doc.records} == {"pkg:maven/org.example/abc@1.3.4"}
    first = doc.records[0]
    assert first.statement.status == "not_affected"
    assert first.statement.impact_statement == (
        "Class with vulnerable code was removed before shipping."
    )
    assert first.raw_statement["product_status"] == "known_not_affected"
    assert first.raw_statement["product_ids"] == ["CSAFPID-0001"]
    assert {(s.product, s.reason) for s in doc.skipped} == {
        ("ABC:CSAFPID-0002", "unknown product id")
    }


def test_csaf_relationship_products_resolve_to_their_component_purl(vex_dir: Path) -> None:
    obj = json.loads((vex_dir / "csaf-example.json").read_bytes())
    obj["vulnerabilities"][0]["product_status"]["known_affected"] = ["ABC:INTERNAL-0002"]
    doc = parse_document(json.dumps(obj).encode())
    affected = [r for r in doc.records if r.statement.status == "affected"]
    assert [r.statement.component_purl for r in affected] == [
        "pkg:golang/github.com/go-homedir@v1.0.0"
    ]
    assert affected[0].statement.vulnerability_id == "CVE-2009-4487"


def test_red_hat_rpms_without_purl_get_derived_purls(vex_dir: Path) -> None:
    doc = load(vex_dir, "csaf-rhsa-2020_1358.json")
    assert doc.document_id == "RHSA-2020:1358"
    by_purl: dict[str, list[Any]] = {}
    for r in doc.records:
        by_purl.setdefault(r.statement.component_purl, []).append(r)
    assert len(by_purl) == 734
    libvirt = "pkg:rpm/redhat/libvirt@4.5.0-35.3.module%2Bel8.1.0%2B5931%2B8897e7e1?arch=x86_64"
    assert {r.statement.vulnerability_id for r in by_purl[libvirt]} == {
        "CVE-2020-1711",
        "CVE-2020-7039",
    }
    # A non-zero epoch is kept as a qualifier; epoch 0 is implicit.
    assert f"pkg:rpm/redhat/libguestfs@1.38.4-14.{RH_MODULE}?arch=aarch64&epoch=1" in by_purl
    # The same source RPM ships in AppStream and CodeReady Builder: one statement, both ids.
    (slof, _) = by_purl[f"pkg:rpm/redhat/SLOF@20171214-6.gitfa98132.{RH_MODULE}?arch=src"]
    assert slof.raw_statement["purl_source"] == "rpm_nevra"
    assert slof.raw_statement["product_ids"] == [
        "AppStream-8.1.0.Z.MAIN.EUS:SLOF-0:20171214-6.gitfa98132.module+el8.1.0+4066+0f1aadab.src",
        "CRB-8.1.0.Z.MAIN.EUS:SLOF-0:20171214-6.gitfa98132.module+el8.1.0+4066+0f1aadab.src",
    ]
    # Red Hat's impact threats are severities, not not-affected reasons: nothing is attached.
    assert {(r.statement.justification, r.statement.impact_statement) for r in doc.records} == {
        (None, None)
    }


# --- inline documents -------------------------------------------------------------------


def openvex(**statement: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "vulnerability": {"name": "CVE-2024-0001"},
        "products": [{"@id": "pkg:apk/wolfi/bash@1.0.0"}],
        "status": "fixed",
    }
    return {
        "@context": "https://openvex.dev/ns/v0.2.0",
        "@id": "https://example.com/vex-1",
        "author": "Example Security",
        "timestamp": "2024-01-01T00:00:00Z",
        "version": 1,
        "statements": [{**base, **statement}],
    }


def csaf(product_status: dict[str, list[str]], **vulnerability: Any) -> dict[str, Any]:
    return {
        "document": {
            "category": "csaf_vex",
            "csaf_version": "2.0",
            "publisher": {"category": "vendor", "name": "Example", "namespace": "https://ex.com"},
            "title": "t",
            "tracking": {"id": "EX-1", "current_release_date": "2024-02-01T00:00:00Z"},
        },
        "product_tree": {
            "branches": [
                {
                    "category": "vendor",
                    "name": "Example",
                    "branches": [
                        {
                            "category": "product_version",
                            "name": "1.0",
                            "product": {
                                "name": "lib 1.0",
                                "product_id": "P1",
                                "product_identification_helper": {"purl": "pkg:pypi/lib@1.0"},
                            },
                        },
                        {
                            "category": "product_version",
                            "name": "2.0",
                            "product": {"name": "lib 2.0", "product_id": "P2"},
                        },
                    ],
                }
            ],
            "product_groups": [{"group_id": "G1", "product_ids": ["P1"]}],
        },
        "vulnerabilities": [
            {"cve": "CVE-2024-0002", "product_status": product_status, **vulnerability}
        ],
    }


def encode(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def test_identical_statements_in_one_document_are_kept_once() -> None:
    doc = openvex()
    doc["statements"] *= 2
    assert len(parse_document(encode(doc)).records) == 1


def test_openvex_identifiers_purl_and_products_without_purl() -> None:
    doc = parse_document(
        encode(
            openvex(
                products=[
                    {
                        "@id": "https://example.com/products/app",
                        "identifiers": {"purl": "pkg:npm/app@1"},
                    },
                    {"@id": "https://example.com/products/other"},
                ]
            )
        )
    )
    assert [r.statement.component_purl for r in doc.records] == ["pkg:npm/app@1"]
    assert [(s.product, s.reason) for s in doc.skipped] == [
        ("https://example.com/products/other", "no purl")
    ]


def test_statement_last_updated_is_its_time() -> None:
    doc = parse_document(encode(openvex(last_updated="2024-03-01T12:00:00+02:00")))
    assert doc.records[0].statement.published_at == utc(2024, 3, 1, 10, 0, 0)


def test_statement_without_any_timestamp_is_kept_for_consensus_to_exclude() -> None:
    obj = openvex()
    del obj["timestamp"]
    (record,) = parse_document(encode(obj)).records
    assert record.statement.published_at is None


def test_csaf_flags_by_group_give_the_justification() -> None:
    obj = csaf(
        {"known_not_affected": ["P1"], "recommended": ["P1"]},
        flags=[{"label": "vulnerable_code_not_in_execute_path", "group_ids": ["G1"]}],
    )
    (record,) = parse_document(encode(obj)).records
    assert record.statement.status == "not_affected"
    assert record.statement.justification == "vulnerable_code_not_in_execute_path"
    assert record.statement.published_at == utc(2024, 2, 1, 0, 0, 0)


def test_csaf_flags_and_impact_threats_attach_only_to_not_affected() -> None:
    scoped = {"product_ids": ["P1"]}
    obj = csaf(
        {"known_affected": ["P1"]},
        flags=[{"label": "component_not_present", **scoped}],
        threats=[{"category": "impact", "details": "High", **scoped}],
    )
    (record,) = parse_document(encode(obj)).records
    assert record.statement.status == "affected"
    assert (record.statement.justification, record.statement.impact_statement) == (None, None)


def test_csaf_products_without_purl_are_reported_not_fatal() -> None:
    doc = parse_document(encode(csaf({"known_affected": ["P1", "P2"]})))
    assert [r.statement.component_purl for r in doc.records] == ["pkg:pypi/lib@1.0"]
    assert [(s.vulnerability_id, s.product, s.reason) for s in doc.skipped] == [
        ("CVE-2024-0002", "P2", "product has no purl")
    ]


def test_csaf_categories_mapping_to_one_status_stay_apart() -> None:
    doc = parse_document(encode(csaf({"first_affected": ["P1"], "known_affected": ["P1"]})))
    assert [r.raw_statement["product_status"] for r in doc.records] == [
        "first_affected",
        "known_affected",
    ]
    assert {r.statement.status for r in doc.records} == {"affected"}


def test_csaf_vulnerability_without_cve_uses_its_ids() -> None:
    obj = csaf({"fixed": ["P1"]})
    del obj["vulnerabilities"][0]["cve"]
    obj["vulnerabilities"][0]["ids"] = [{"system_name": "GHSA", "text": "GHSA-aaaa-bbbb-cccc"}]
    (record,) = parse_document(encode(obj)).records
    assert record.statement.vulnerability_id == "GHSA-aaaa-bbbb-cccc"


def _without_author() -> dict[str, Any]:
    obj = openvex()
    del obj["author"]
    return obj


def _csaf_without_namespace() -> dict[str, Any]:
    obj = csaf({"fixed": ["P1"]})
    del obj["document"]["publisher"]["namespace"]
    return obj


INVALID: dict[str, tuple[bytes, str]] = {
    "empty": (b"  \n", "empty document"),
    "not-utf8": (b"\xff\xfe{}", "not valid JSON"),
    "array": (b"[1, 2]", "a VEX document is a JSON object, got list"),
    "unknown-shape": (b'{"hello": "world"}', "unrecognised document"),
    "cyclonedx": (
        b'{"bomFormat": "CycloneDX", "specVersion": "1.5"}',
        "CycloneDX documents are not supported",
    ),
    "foreign-context": (
        encode({**openvex(), "@context": "https://example.com/ns"}),
        "unrecognised @context",
    ),
    "future-openvex": (
        encode({**openvex(), "@context": "https://openvex.dev/ns/v0.9.0"}),
        "unsupported OpenVEX version 0.9.0",
    ),
    "no-author": (encode(_without_author()), "missing required field `author`"),
    "blank-author": (encode({**openvex(), "author": "  "}), r"issuer \(author\) is blank"),
    "unknown-status": (encode(openvex(status="maybe")), r"at `\$.statements\[0\].status`"),
    "vulnerability-without-name": (
        encode(openvex(vulnerability={"aliases": ["X"]})),
        r"`\$.statements\[0\].vulnerability`",
    ),
    "vulnerability-id-too-long": (
        encode(openvex(vulnerability={"name": "CVE-" + "9" * 100})),
        "length <= 100",
    ),
    "no-products": (encode(openvex(products=[])), "statement 0 has no products"),
    "naive-timestamp": (
        encode(openvex(timestamp="2024-01-01T00:00:00")),
        "timezone",
    ),
    "legacy-with-new-shape": (
        encode({**openvex(), "@context": "https://openvex.dev/ns/v0.0.1"}),
        "invalid OpenVEX 0.0.1 document",
    ),
    "csaf-version": (
        encode({"document": {"csaf_version": "1.2"}}),
        "unsupported CSAF version '1.2'",
    ),
    "csaf-unknown-category": (
        encode(csaf({"sorta_affected": ["P1"]})),
        "unknown product_status category 'sorta_affected'",
    ),
    "csaf-without-namespace": (
        encode(_csaf_without_namespace()),
        r"`\$.document.publisher`",
    ),
}


@pytest.mark.parametrize(("data", "message"), [pytest.param(*v, id=k) for k, v in INVALID.items()])
def test_invalid_documents_are_refused_with_one_clear_line(data: bytes, message: str) -> None:
    with pytest.raises(DocumentError, match=message) as raised:
        parse_document(data)
    assert "\n" not in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_csaf_status_table() -> None:
    assert dict(CSAF_STATUS) == {
        "known_not_affected": "not_affected",
        "known_affected": "affected",
        "first_affected": "affected",
        "last_affected": "affected",
        "fixed": "fixed",
        "first_fixed": "fixed",
        "under_investigation": "under_investigation",
    }


def test_cyclonedx_status_table() -> None:
    assert dict(CYCLONEDX_STATUS) == {
        "not_affected": "not_affected",
        "false_positive": "not_affected",
        "exploitable": "affected",
        "resolved": "fixed",
        "resolved_with_pedigree": "fixed",
        "in_triage": "under_investigation",
    }


def test_openvex_statuses_are_the_consensus_statuses() -> None:
    assert set(OPENVEX_STATUS.items()) == {
        (s, s) for s in ("not_affected", "affected", "fixed", "under_investigation")
    }


def test_status_tables_are_read_only() -> None:
    with pytest.raises(TypeError):
        CSAF_STATUS["recommended"] = "fixed"  # type: ignore[index]
