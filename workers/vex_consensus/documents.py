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

import msgspec

from workers.vex_consensus.csaf import parse_csaf
from workers.vex_consensus.openvex import parse_openvex
from workers.vex_consensus.records import (
    RAW_ID_NAMESPACE,
    DocumentError,
    DocumentFormat,
    ParsedDocument,
    SkippedProduct,
    VexRecord,
)

__all__ = [
    "RAW_ID_NAMESPACE",
    "DocumentError",
    "DocumentFormat",
    "ParsedDocument",
    "SkippedProduct",
    "VexRecord",
    "parse_document",
]


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
        return parse_openvex(obj)
    document = obj.get("document")
    if isinstance(document, dict) and "csaf_version" in document:
        return parse_csaf(obj)
    if obj.get("bomFormat") == "CycloneDX":
        raise DocumentError(
            "CycloneDX documents are not supported: import OpenVEX or CSAF 2.0 VEX documents"
        )
    raise DocumentError(
        "unrecognised document: expected OpenVEX (an '@context' of https://openvex.dev/ns) "
        "or CSAF 2.0 ('document.csaf_version')"
    )
