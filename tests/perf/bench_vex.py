"""VEX consensus recompute throughput for one large advisory (prints figures, asserts nothing).

Starts its own embedded PostgreSQL, migrates it, stores ``--issuers`` OpenVEX
documents about ``--purls`` components (each issuer speaks about every component,
so a pair has ``--issuers`` statements), then times the worker's ``apply`` for an
``advisory.updated`` naming every component:

(a) first advisory: every pair's result is new (upserts, conflicts, outbox rows);
(b) the same advisory again: nothing changed (reads and pure computation only);
(c) a trust change that flips every pair (``issuer_update``).

Each line shows pairs per second and the SQL round trips of that transaction.
Run: ``python tests/perf/bench_vex.py [--purls N] [--issuers N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from contracts.concelier import AdvisoryUpdated, AffectedPackage
from devkit import workload
from devkit.embedded import start_postgres
from workers.app import migration_steps
from workers.db import create_pool, load_migrations, migrate, schema_dir
from workers.kernel.worker import Resources
from workers.settings import load_settings
from workers.vex_consensus import VexConsensusWorker, outbox, service, store
from workers.vex_consensus import issuers as trust_rows
from workers.vex_consensus.consensus import IssuerTrust
from workers.vex_consensus.documents import parse_document

VULN = "CVE-2026-50000"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
STATUSES = ("not_affected", "affected", "fixed", "under_investigation")


def document(issuer: str, purls: list[str], status: str) -> bytes:
    return workload.openvex(
        issuer,
        [(purl, status, "component_not_present") for purl in purls],
        vulnerability=VULN,
        at=T0,
        doc_id=f"https://bench.example/{issuer}",
    )


def advisory(purls: list[str]) -> AdvisoryUpdated:
    return AdvisoryUpdated(
        event_id=uuid.uuid4(),
        version=1,
        tenant_id=uuid.uuid4(),
        occurred_at=datetime.now(UTC),
        source="OSV",
        advisory_id=VULN,
        affected=[AffectedPackage(purl=p) for p in purls],
        document_sha256="0" * 64,
        modified_at=T0,
    )


class Counter:
    def __init__(self) -> None:
        self.queries = 0

    def __call__(self, record: Any) -> None:
        if "typeinfo_tree" not in record.query and "set_config('jit'" not in record.query:
            self.queries += 1


async def timed(pool: Any, work: Any) -> tuple[float, int]:
    counter = Counter()
    async with pool.acquire() as conn:
        conn.add_query_logger(counter)
        try:
            started = time.perf_counter()
            async with conn.transaction():
                await work(conn)
            elapsed = time.perf_counter() - started
        finally:
            conn.remove_query_logger(counter)
    return elapsed, counter.queries


class _Open:
    """The kernel's transaction as apply sees it, on a connection the timer opened."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, statement: Any, *params: Any) -> None:
        raise NotImplementedError

    async def connection(self) -> Any:
        return self._conn


async def bench(database_url: str, n_purls: int, n_issuers: int) -> None:
    settings = load_settings({}, database_url=database_url)
    pool = await create_pool(settings, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn, load_migrations(schema_dir()), steps=migration_steps())
        purls = [f"pkg:npm/bench-{i:06d}@1.{i % 9}.0" for i in range(n_purls)]
        issuers = [f"https://issuer-{k}.example" for k in range(n_issuers)]
        trust = [
            IssuerTrust(issuer_id=issuer, trust_score=Decimal("0.50"), priority=1 + k % 2)
            for k, issuer in enumerate(issuers)
        ]
        started = time.perf_counter()
        docs = [
            parse_document(document(issuer, purls, STATUSES[k % len(STATUSES)]))
            for k, issuer in enumerate(issuers)
        ]
        async with pool.acquire() as conn, conn.transaction():
            await store.insert_statements(conn, docs)
            await trust_rows.upsert_trust(conn, trust)
        print(
            f"seeded {n_purls * n_issuers} statements ({n_issuers} per pair) "
            f"in {time.perf_counter() - started:.2f}s"
        )

        worker = VexConsensusWorker(Resources(settings=settings, redis=None, pool=pool))  # type: ignore[arg-type]  # apply never touches Valkey
        event = advisory(purls)

        async def apply(conn: Any) -> None:
            await worker.apply(_Open(conn), [event])

        for label in ("(a) first advisory, all new", "(b) same advisory, unchanged"):
            elapsed, queries = await timed(pool, apply)
            print(
                f"{label:34} {n_purls / elapsed:>10,.0f} pairs/s  "
                f"({n_purls} pairs in {elapsed:.2f}s, {queries} round trips)"
            )

        flipped = IssuerTrust(issuer_id=issuers[-1], trust_score=Decimal("1.00"), priority=0)

        async def trust_change(conn: Any) -> None:
            await service.set_trust(conn, [flipped])

        elapsed, queries = await timed(pool, trust_change)
        print(
            f"{'(c) trust change, all flip':34} {n_purls / elapsed:>10,.0f} pairs/s  "
            f"({n_purls} pairs in {elapsed:.2f}s, {queries} round trips)"
        )
        async with pool.acquire() as conn:
            waiting = await outbox.size(conn)
        print(f"outbox rows waiting to be published: {waiting}")
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--purls", type=int, default=10_000)
    parser.add_argument("--issuers", type=int, default=3)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="streamfleet-bench-vex-"))
    folder.chmod(0o755)  # PostgreSQL runs as an unprivileged user when run as root
    server, url = start_postgres(folder / "data")
    try:
        asyncio.run(bench(url, args.purls, args.issuers))
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
