"""The Python step of migration ``0007_vex_canonical_purls``: stored purls made canonical.

``fleet migrate`` runs :func:`canonicalize_stored_purls` right after that file's SQL,
in the same transaction (``workers.db.migrate``), so a failure leaves the database
as it was and the migration pending. What it does, in order:

1. Every distinct purl stored in ``vex.vex_raw``, ``vex.consensus`` and
   ``vex.consensus_conflicts`` is parsed once (:func:`plan_canonical_forms`, pure).
2. Statements take their canonical purl and its package (``scope_base``). Raw ids are
   kept: they cover the statement as written, so re-importing an old document still
   stores nothing new.
3. A consensus row stored under a spelling that is not canonical is withdrawn (deleted,
   its open conflicts closed as superseded, a withdrawal announced through the
   outbox), and its review-queue history is renamed to the canonical purl.
4. Every pair is recomputed under the scope rule (docs/workers.md, consensus rule 4; reason
   ``policy_knob``): pairs that collapsed into one are merged into one row, and results
   the old exact-string lookup got wrong are corrected and announced. Running workers
   publish the outbox.

A stored purl the purl specification refuses (possible only for rows written before
purls were parsed) is kept as written, with itself as its package: nothing is lost,
it takes part in no scope matching, and its pairs are left as they are. Their number
is part of the step's summary line.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Final, NamedTuple

from workers.db import DbConn
from workers.vex_consensus import service
from workers.vex_consensus.purls import PurlError, canonical_purl, package_of
from workers.vex_consensus.store import Pair

CHUNK: Final = 5000


class CanonicalForm(NamedTuple):
    stored: str
    canonical: str
    package: str


class CanonicalPlan(NamedTuple):
    forms: tuple[CanonicalForm, ...]
    """One per distinct stored purl (refused ones map to themselves)."""
    refused: tuple[str, ...]

    @property
    def renamed(self) -> tuple[CanonicalForm, ...]:
        return tuple(f for f in self.forms if f.canonical != f.stored)


def plan_canonical_forms(stored: Iterable[str]) -> CanonicalPlan:
    """The canonical form and package of each distinct stored purl (pure)."""
    forms: list[CanonicalForm] = []
    refused: list[str] = []
    for purl in sorted(set(stored)):
        try:
            canonical = canonical_purl(purl)
        except PurlError:
            refused.append(purl)
            forms.append(CanonicalForm(purl, purl, purl))
            continue
        forms.append(CanonicalForm(purl, canonical, package_of(canonical)))
    return CanonicalPlan(forms=tuple(forms), refused=tuple(refused))


_STORED_PURLS = """
SELECT component_purl FROM vex.vex_raw
UNION SELECT component_purl FROM vex.consensus
UNION SELECT component_purl FROM vex.consensus_conflicts
"""

_REWRITE_STATEMENTS = """
UPDATE vex.vex_raw r SET component_purl = m.canonical, scope_base = m.package
FROM unnest($1::text[], $2::text[], $3::text[]) AS m(stored, canonical, package)
WHERE r.component_purl = m.stored
"""

_MISSPELT_CONSENSUS = """
SELECT component_purl, vulnerability_id, digest FROM vex.consensus
WHERE component_purl = ANY($1::text[])
"""

_RENAME_CONFLICTS = """
UPDATE vex.consensus_conflicts k SET component_purl = m.canonical
FROM unnest($1::text[], $2::text[]) AS m(stored, canonical)
WHERE k.component_purl = m.stored
"""

_CONSENSUS_SCOPE = """
UPDATE vex.consensus c SET scope_base = m.package
FROM unnest($1::text[], $2::text[]) AS m(stored, package)
WHERE c.component_purl = m.stored AND c.scope_base IS DISTINCT FROM m.package
"""

_ALL_PAIRS = """
SELECT component_purl, vulnerability_id FROM vex.vex_raw
WHERE NOT component_purl = ANY($1::text[])
UNION
SELECT component_purl, vulnerability_id FROM vex.consensus
WHERE NOT component_purl = ANY($1::text[])
"""


def _chunks(forms: Sequence[CanonicalForm]) -> Iterable[Sequence[CanonicalForm]]:
    for start in range(0, len(forms), CHUNK):
        yield forms[start : start + CHUNK]


async def canonicalize_stored_purls(conn: DbConn, *, now: datetime | None = None) -> str:
    """Rewrite stored purls in canonical form and recompute every pair; a summary line.

    Runs inside the migration's transaction; see the module docstring for the steps.
    """
    at = now or datetime.now(UTC)
    plan = plan_canonical_forms(r["component_purl"] for r in await conn.fetch(_STORED_PURLS))
    for chunk in _chunks(plan.forms):
        await conn.execute(
            _REWRITE_STATEMENTS,
            [f.stored for f in chunk],
            [f.canonical for f in chunk],
            [f.package for f in chunk],
        )
    renamed = plan.renamed
    misspelt: dict[Pair, str] = {}
    for chunk in _chunks(renamed):
        for r in await conn.fetch(_MISSPELT_CONSENSUS, [f.stored for f in chunk]):
            misspelt[(r["component_purl"], r["vulnerability_id"])] = r["digest"]
    await service.withdraw(conn, misspelt, reason="policy_knob", now=at)
    for chunk in _chunks(renamed):
        await conn.execute(
            _RENAME_CONFLICTS, [f.stored for f in chunk], [f.canonical for f in chunk]
        )
    for chunk in _chunks(plan.forms):
        await conn.execute(_CONSENSUS_SCOPE, [f.stored for f in chunk], [f.package for f in chunk])
    await conn.execute("ALTER TABLE vex.vex_raw ALTER COLUMN scope_base SET NOT NULL")
    pairs = [
        (r["component_purl"], r["vulnerability_id"])
        for r in await conn.fetch(_ALL_PAIRS, list(plan.refused))
    ]
    report = await service.recompute(conn, pairs, reason="policy_knob", now=at)
    return (
        f"{len(renamed)} of {len(plan.forms)} stored purl(s) rewritten in canonical form, "
        f"{len(plan.refused)} refused by the purl specification and kept as written; "
        f"{len(misspelt)} consensus row(s) under another spelling withdrawn; "
        f"{report.pairs} pair(s) recomputed, {report.changed} changed"
    )
