"""vex-consensus worker: one consensus per (component purl, vulnerability) pair.

Reads ``concelier:drift`` (group ``vex-consensus``); for every pair an advisory
touches, recomputes the consensus of ``vex.vex_raw`` statements weighted by
``vex.issuer_trust`` and upserts ``vex.consensus``; a changed result is published
as ``vex.consensus.updated`` on ``vex:consensus``.

- :mod:`workers.vex_consensus.consensus`: the algorithm of SPEC §5.2.1 as a pure,
  deterministic function (same statements in any order give byte-identical output).
- :mod:`workers.vex_consensus.documents`: pure parsing of OpenVEX and CSAF VEX
  documents into statements whose ids are derived from their content, so importing
  a document twice stores nothing new.
"""
