"""Signed VEX export of a large consensus (prints figures, asserts nothing).

Starts its own embedded PostgreSQL, migrates it and stores ``--rows`` consensus rows
(five vulnerabilities per component, every status, some conflicts), then each round
times, back to back on the same rows:

(a) the baseline: a plain ``SELECT`` of the same rows, in the export's order;
(b) the bundle build: the export's read and the ``vex/consensus.json`` file and its
    manifest (``workers.export.service.build``, format json);
(c) the OpenVEX write: build in format openvex, sign the manifest (DSSE, ed25519) and
    write the bundle to disk, as ``fleet vex export --format openvex`` does;
(d) verify: ``fleet vex verify``'s check of (c)'s bundle (signature, then every file's
    size and sha256).

Each figure is printed as seconds and as a ratio to (a) measured in the same round
(how many plain SELECTs of the same rows it costs); the report gives the medians.
Run: ``python tests/perf/bench_exports.py [--rows N] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from devkit.embedded import start_postgres
from workers import signing
from workers.app import migration_steps
from workers.db import create_pool, load_migrations, migrate, schema_dir
from workers.export import service
from workers.settings import load_settings

VULNERABILITIES = 5

_SEED = """
INSERT INTO vex.consensus (
    consensus_id, component_purl, vulnerability_id, resolved_status, conflict_detected,
    contributing_vex_ids, confidence, digest, computed_at, scope_base
)
SELECT gen_random_uuid(),
       'pkg:npm/bench-' || lpad((i / $2)::text, 7, '0') || '@1.' || (i / $2 % 9) || '.0',
       'CVE-2026-' || (50000 + i % $2),
       (ARRAY['not_affected', 'affected', 'fixed', 'under_investigation'])[1 + i % 4],
       i % 17 = 0,
       ARRAY[gen_random_uuid(), gen_random_uuid()],
       round((i % 10000) / 10000.0, 4),
       encode(sha256(convert_to(i::text, 'UTF8')), 'hex'),
       timestamptz '2026-01-01 00:00:00Z' + i * interval '1 second',
       'pkg:npm/bench-' || lpad((i / $2)::text, 7, '0')
FROM generate_series(0, $1 - 1) AS i
"""

_PLAIN = """
SELECT consensus_id, component_purl, vulnerability_id, resolved_status, conflict_detected,
       contributing_vex_ids, confidence, digest, computed_at
FROM vex.consensus
ORDER BY component_purl, vulnerability_id
"""

LABELS = {
    "a": "plain SELECT of the rows",
    "b": "bundle build (json + manifest)",
    "c": "OpenVEX write (build, sign, write)",
    "d": "verify (signature + every hash)",
}


async def timed(work: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await work()
    return time.perf_counter() - started


async def one_round(pool: Any, folder: Path, index: int, key: Any) -> dict[str, float]:
    manifest = folder / f"round-{index}" / "manifest.json"
    figures: dict[str, float] = {}
    sizes: dict[str, int] = {}
    async with pool.acquire() as conn:

        async def plain() -> None:
            rows = await conn.fetch(_PLAIN)
            sizes["rows"] = len(rows)

        async def build_json() -> None:
            bundle = await service.build(conn, service.ExportOptions(profile="vex", format="json"))
            sizes["json"] = bundle.size

        async def write_openvex() -> None:
            options = service.ExportOptions(profile="vex", format="openvex")
            bundle = await service.build(conn, options)
            service.write_local(manifest, bundle, key)
            sizes["openvex"] = bundle.size

        async def verify() -> None:
            checked, _ = service.verify_local(manifest, key.public_key())
            sizes["checked"] = checked

        figures["a"] = await timed(plain)
        figures["b"] = await timed(build_json)
        figures["c"] = await timed(write_openvex)
        figures["d"] = await timed(verify)
    shutil.rmtree(manifest.parent, ignore_errors=True)
    seconds = "  ".join(f"({k}) {v:6.3f}s" for k, v in figures.items())
    ratios = "  ".join(f"{k}/a {v / figures['a']:5.2f}" for k, v in figures.items() if k != "a")
    name = "warm-up" if index < 0 else f"round {index + 1}"
    print(
        f"{name}: {seconds}   {ratios}   ({sizes['rows']} rows, json "
        f"{sizes['json'] / 1e6:.1f} MB, openvex {sizes['openvex'] / 1e6:.1f} MB)",
        flush=True,
    )
    return figures


async def bench(database_url: str, rows: int, rounds: int, folder: Path) -> None:
    settings = load_settings({}, database_url=database_url)
    pool = await create_pool(settings, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn, load_migrations(schema_dir()), steps=migration_steps())
            started = time.perf_counter()
            await conn.execute(_SEED, rows, VULNERABILITIES)
            await conn.execute("ANALYZE vex.consensus")
        print(f"seeded {rows} consensus rows in {time.perf_counter() - started:.2f}s")
        key = signing.generate_key()
        # One unmeasured pass: the first read pulls the table into shared buffers.
        await one_round(pool, folder, -1, key)
        results = [await one_round(pool, folder, index, key) for index in range(rounds)]
    finally:
        await pool.close()
    print(f"medians over {rounds} round(s), {rows} rows:")
    for name, label in LABELS.items():
        values = [r[name] for r in results]
        median = statistics.median(values)
        print(
            f"({name}) {label:<36}: {median:7.3f}s  {rows / median:>10,.0f} rows/s"
            f"   (range {min(values):.3f}-{max(values):.3f}s)"
        )
    for name in ("b", "c", "d"):
        ratios = [r[name] / r["a"] for r in results]
        print(
            f"ratio {name}/a = {statistics.median(ratios):.2f}   "
            f"(range {min(ratios):.2f}-{max(ratios):.2f}; {LABELS[name]} in plain SELECTs)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="streamfleet-bench-exports-"))
    folder.chmod(0o755)  # PostgreSQL runs as an unprivileged user when run as root
    server, url = start_postgres(folder / "data")
    try:
        asyncio.run(bench(url, args.rows, args.rounds, folder))
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
