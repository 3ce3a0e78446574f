"""Contracts of the ``vex:consensus`` stream, published by the vex-consensus worker.

``vex.consensus.updated`` (version 1) announces a changed consensus for one
(component purl, vulnerability) pair. Its ``eventId`` is a uuid5 over the pair
and the result digest, so re-publishing the same result is recognisable.
``resolvedStatus`` is absent when the consensus was withdrawn.
"""

from __future__ import annotations

import uuid
from typing import Literal

import msgspec

from contracts.base import Event, NonEmpty, UtcDateTime

VexStatus = Literal["not_affected", "affected", "fixed", "under_investigation"]


class ConsensusUpdated(Event, frozen=True, kw_only=True, tag="vex.consensus.updated"):
    component_purl: NonEmpty
    vulnerability_id: NonEmpty
    resolved_status: VexStatus | None = None
    conflict_detected: bool = False
    confidence: str | None = None
    contributing_vex_ids: list[uuid.UUID] = msgspec.field(default_factory=list)
    digest: str | None = None
    computed_at: UtcDateTime
    reason: str
