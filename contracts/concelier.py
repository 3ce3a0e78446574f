"""Contracts of the ``concelier:drift`` stream: advisory drift.

Event types: ``advisory.new`` and ``advisory.updated`` (version 1). An
advisory names a vulnerability (``advisoryId`` plus ``aliases``) and the
package URLs it affects.
"""

from __future__ import annotations

import msgspec

from contracts.base import Event, NonEmpty, NonNegative, UtcDateTime


class AffectedPackage(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    purl: NonEmpty
    version_range: str | None = None


class _Advisory(Event, frozen=True, kw_only=True):
    advisory_id: NonEmpty
    aliases: list[str] = msgspec.field(default_factory=list)
    # The contract's advisory ``source`` (NVD, OSV, GHSA, RED_HAT, ...) and the
    # envelope's ``source`` share one flat key: for advisory events the producer
    # is named after the feed it relays, so the envelope field carries the feed.
    affected: list[AffectedPackage] = msgspec.field(default_factory=list)
    revision: NonNegative = 0
    severity: str | None = None
    document_sha256: NonEmpty
    modified_at: UtcDateTime
    withdrawn: bool = False


class AdvisoryNew(_Advisory, frozen=True, kw_only=True, tag="advisory.new"):
    pass


class AdvisoryUpdated(_Advisory, frozen=True, kw_only=True, tag="advisory.updated"):
    pass


ConcelierEvent = AdvisoryNew | AdvisoryUpdated
