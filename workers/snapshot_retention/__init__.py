"""Snapshot governance and retention for imported feed snapshots (SPEC §5.4).

``core`` holds every decision as pure functions over plain data: snapshot ids, freshness,
the snapshot state machine, rollback and retention planning, the hash-chained audit log and
content-addressed object keys. The worker shell fetches rows and objects, calls the core,
and persists the returned changes in one transaction.
"""
