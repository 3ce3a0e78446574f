"""vex-consensus worker: one consensus per (component purl, vulnerability) pair.

Reads ``concelier:drift`` (group ``vex-consensus``); for every pair an advisory
touches, recomputes the consensus of ``vex.vex_raw`` statements weighted by
``vex.issuer_trust`` and upserts ``vex.consensus``; a changed result is published
as ``vex.consensus.updated`` on ``vex:consensus``.

- :mod:`workers.vex_consensus.consensus`: the consensus rules (docs/workers.md) as a pure,
  deterministic function (same statements in any order give byte-identical output).
- :mod:`workers.vex_consensus.documents`: pure parsing of OpenVEX and CSAF VEX
  documents into statements whose ids are derived from their content, so importing
  a document twice stores nothing new; one module per format
  (:mod:`~workers.vex_consensus.openvex`, :mod:`~workers.vex_consensus.csaf`) over the
  shared records and raw-id rule (:mod:`~workers.vex_consensus.records`).
- :mod:`workers.vex_consensus.store`: the set-based SQL of statements, consensus rows
  and conflicts (a fixed number of round trips per 5,000 pairs, never one per pair);
  :mod:`~workers.vex_consensus.issuers` holds issuer trust,
  :mod:`~workers.vex_consensus.keys` issuer keys.
- :mod:`workers.vex_consensus.outbox`: the ``vex.consensus.updated`` outbox, written
  in the recompute's transaction and published to ``vex:consensus`` after it.
- :mod:`workers.vex_consensus.service`: recompute, import and trust change, shared by
  the worker, ``fleet vex`` and the demo.
- :mod:`workers.vex_consensus.worker`: the consumer of ``concelier:drift``.
- :mod:`workers.vex_consensus.cli`: ``fleet vex import|show|trust``.

Idempotency key: the advisory's ``eventId`` (inbox); derived events carry a uuid5
of their pair and result digest, so an unchanged result is never published twice.
"""

from workers.vex_consensus.worker import VexConsensusWorker

__all__ = ["VexConsensusWorker"]
