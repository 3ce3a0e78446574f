"""Every PromQL expression in ops/ returns series on a real Prometheus scraping a real fleet.

Private Valkey, PostgreSQL 16 and S3 (moto) servers; every available worker runs as its
own ``fleet run <worker>`` process with its own ops port; Prometheus (Debian package
``prometheus``) scrapes them every second under job ``streamfleet`` with a ``worker``
label, as ops/prometheus/prometheus.yml does, and evaluates ops/prometheus/rules/*.yml
every second. The workload makes every metric family appear with the label sets the
queries select: events of every type (some published twice), poison entries, a type no
group handles, entries a departed consumer never acknowledged (reclaimed), a lagging
extra group whose entries a capped replica trims, VEX statements that disagree, scans
past the 120 s and 300 s SLOs, failed notifications, snapshots that are fresh, stale and
critical, a retention run that archives one and an API rollback, export requests (one
refused for want of a signing key, then one per profile) and a signed VEX document
refused on import.

Then every dashboard target (Grafana variables substituted), every recording rule (its
expression and the series it stores) and every alert expression (thresholds removed, see
:func:`tests.ops_queries.strip_thresholds`; the full expression must be accepted too) goes
through ``/api/v1/query`` and must return at least one series, and every metric of
docs/operations.md must have been observed (counters and histograms above zero).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
import yaml
from prometheus_client import REGISTRY

from contracts import Event, encode_entry
from contracts.exports import ExportProfile
from contracts.scanner import Phase, ScanCompleted, ScanFailed, ScanSubmitted
from devkit import workload
from devkit.embedded import free_port, start_postgres, start_s3, start_valkey
from tests.helpers import fleet_cli, fleet_process, process_log
from tests.ops_queries import (
    RULES_DIR,
    dashboard_all_values,
    dashboard_queries,
    rule_expressions,
    strip_thresholds,
    substitute,
)
from workers import metrics, signing, streams
from workers.app import available_workers, migration_steps
from workers.db import create_pool, load_migrations, migrate, schema_dir
from workers.settings import load_settings

PROMETHEUS = shutil.which("prometheus")
requires_prometheus = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="prometheus not on PATH (Debian package `prometheus`; .ci/run installs it)",
)

API_TOKEN = "live-prometheus-test-token"  # a test credential for the snapshot API
TENANT = workload.TENANTS[0]
STREAM_GROUPS = {
    "scan-metrics": ("scanner:events", "scan-metrics"),
    "vex-consensus": ("concelier:drift", "vex-consensus"),
    "notify-delivery": ("notify:delivery", "notify-workers"),
    "export": ("export:requests", "export-workers"),
}
LAGGING_GROUP = "replay-audit"
"""An extra group on notify:delivery that never reads: the hard cap trims past it."""
TRIMMED_BY_CAP = 10
VEX_COMPONENTS = 20
# Grafana's values for a 1 s scrape interval: $__rate_interval is at least four scrapes.
GRAFANA_VALUES = {"__rate_interval": "10s", "__interval": "2s", "__range": "1h"}
DEADLINE_SECONDS = 45.0


# ------------------------------------------------------------------ the checks


@dataclass(frozen=True)
class Check:
    where: str
    query: str
    must_have_series: bool = True


def checks() -> list[Check]:
    """Every query the dashboards and rules run, in the form Prometheus receives it."""
    values = {**GRAFANA_VALUES, **dashboard_all_values()}
    found = [Check(where, substitute(expr, values)) for where, expr in dashboard_queries()]
    for rule in rule_expressions():
        where = f"{rule.file}: {rule.kind} {rule.name}"
        expr = " ".join(rule.expr.split())
        if rule.kind == "record":
            found.append(Check(where, expr))
            found.append(Check(f"{where} (stored series)", rule.name))
        else:
            found.append(Check(f"{where} (thresholds removed)", strip_thresholds(expr)))
            found.append(Check(f"{where} (as written)", expr, must_have_series=False))
    return found


def spec_metric_checks() -> list[Check]:
    """Each documented metric observed by the workload: counters and histograms above zero
    (every process exports unlabelled ones at 0), gauges present."""
    found = []
    for family in REGISTRY.collect():
        if family.type == "counter":
            name, query = f"{family.name}_total", f"sum({family.name}_total) > 0"
        elif family.type == "histogram":
            name, query = family.name, f"sum({family.name}_count) > 0"
        else:
            name, query = family.name, family.name
        if name in metrics.METRIC_NAMES:
            found.append(Check(f"workload: {name} observed", query))
    assert len(found) == len(metrics.METRIC_NAMES)
    return found


# ------------------------------------------------------------------ processes


@dataclass
class Target:
    """One ``fleet run`` process and its ops port (a Prometheus scrape target)."""

    worker: str
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        self.proc = fleet_process(
            {**self.env, "FLEET_HTTP_PORT": str(self.port)}, "run", self.worker
        )
        return self.proc


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def prometheus_config(folder: Path, targets: list[Target]) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES_DIR / "*.yml")],
        "scrape_configs": [
            {
                "job_name": "streamfleet",
                "metrics_path": "/metrics",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{t.port}"], "labels": {"worker": t.worker}}
                    for t in targets
                ],
            }
        ],
    }
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def start_prometheus(folder: Path, config: Path, port: int) -> subprocess.Popen[bytes]:
    assert PROMETHEUS is not None
    log = (folder / "prometheus.log").open("wb")
    try:
        return subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


async def wait_http_ok(
    http: aiohttp.ClientSession,
    url: str,
    proc: subprocess.Popen[bytes],
    log: Callable[[], str],
    timeout: float = 30.0,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"{url}: the process exited {proc.returncode}\n{log()}"
        try:
            async with http.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, f"{url} not ready within {timeout}s"
        await asyncio.sleep(0.1)


# ------------------------------------------------------------------ workload


def _envelope(at: datetime) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4(),
        "version": 1,
        "tenant_id": TENANT,
        "occurred_at": at,
        "source": "live-prometheus-test",
    }


def _phases(started: datetime, seconds: float) -> list[Phase]:
    shares = (("ingest", 0.1), ("analyze", 0.4), ("reachability", 0.2), ("vex", 0.1))
    shares += (("sign", 0.1), ("publish", 0.1))
    phases, at = [], started
    for order, (name, share) in enumerate(shares):
        end = at + timedelta(seconds=seconds * share)
        phases.append(Phase(name=name, order=order, started_at=at, finished_at=end))  # type: ignore[arg-type]  # names are PhaseName literals
        at = end
    return phases


def scan_events(now: datetime) -> list[Event]:
    """Scans with TTEs from 30 s to 500 s (past both SLOs), a failed scan and a replay."""
    events: list[Event] = []
    for n, tte in enumerate((30, 45, 60, 90, 110, 150, 200, 280, 400, 500)):
        scan_id, started = uuid.uuid4(), now - timedelta(seconds=tte + 5)
        artifact: dict[str, Any] = {
            "scan_id": scan_id,
            "artifact_digest": f"sha256:{n:064x}",
            "artifact_type": "oci_image",
        }
        events.append(ScanSubmitted(**_envelope(started), **artifact, submitted_at=started))
        finished = started + timedelta(seconds=tte)
        events.append(
            ScanCompleted(
                **_envelope(finished),
                **artifact,
                started_at=started,
                finished_at=finished,
                phases=_phases(started, tte),
                is_replay=n == 0,
            )
        )
    started = now - timedelta(seconds=40)
    events.append(
        ScanFailed(
            **_envelope(now),
            scan_id=uuid.uuid4(),
            artifact_digest="sha256:" + "f" * 64,
            artifact_type="tarball",
            started_at=started,
            failed_at=now,
            failed_phase="analyze",
            error_code="ANALYZER_CRASHED",
            error_message="analyzer exited with status 137",
            phases=_phases(started, 20)[:2],
        )
    )
    generated = getattr(workload, "scan_events", None)
    if generated is not None:
        events.extend(generated(40, seed=31))
    return events


def poison(event_type: str) -> list[dict[str, bytes]]:
    """Entries no handler can take: dead-lettered with a reason."""
    return [{"type": event_type.encode(), "data": b"{not json"}, {"data": b"{}"}]


IGNORED = {"type": b"inventory.changed", "data": b"{}"}
"""A type no group handles: acknowledged and counted as ignored."""


async def publish(client: aioredis.Redis, stream: str, entries: list[dict[str, bytes]]) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for fields in entries:
            pipe.xadd(stream, fields)  # type: ignore[arg-type]  # str keys, bytes values are valid
        await pipe.execute()


async def seed_vex(pool: asyncpg.Pool) -> None:
    """Statements (issuers that disagree) and trust rows as an ingester stored them, before
    any recompute: the worker's first recompute of each pair finds the conflicts."""
    documents = getattr(workload, "vex_documents", None)
    trust = getattr(workload, "vex_trust", None)
    if documents is None or trust is None or "vex-consensus" not in available_workers():
        return
    from workers.vex_consensus import issuers, store
    from workers.vex_consensus.documents import parse_document

    parsed = [parse_document(data) for _, data in documents(VEX_COMPONENTS)]
    async with pool.acquire() as conn, conn.transaction():
        await store.insert_statements(conn, parsed)
        await issuers.upsert_trust(conn, trust())


async def change_trust(live: Stack) -> None:
    """``fleet vex trust set`` moves a seeded issuer's score (a policy knob): the CLI's
    recompute and the change reach the dashboards through a running vex-consensus worker
    (fleet_vex_issuer_trust_changes_total, recompute duration with reason policy_knob)."""
    trust = getattr(workload, "vex_trust", None)
    if trust is None or "vex-consensus" not in available_workers():
        return
    row = trust()[0]
    score = "0.99" if str(row.trust_score) != "0.99" else "0.98"
    result = await asyncio.to_thread(
        fleet_cli, live.env, "vex", "trust", "set", row.issuer_id, "--score", score,
        "--priority", str(row.priority), "--type", row.issuer_type,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()


def feed(tag: str, records: int = 3) -> bytes:
    return json.dumps([{"id": f"{tag}-{i}", "severity": "high"} for i in range(records)]).encode()


async def seed_snapshots(env: dict[str, str], pool: asyncpg.Pool) -> None:
    """Imports dated in the past: grype critical with a 40-day-old previous (the retention
    run archives it), trivy stale."""
    from workers.s3 import open_s3
    from workers.snapshot_retention.service import Snapshots

    settings = load_settings(env)
    now = datetime.now(UTC)
    async with open_s3(settings) as s3:
        snapshots = Snapshots(settings, pool, s3)
        for tool, tag, days in (("grype", "a", 45), ("grype", "b", 40), ("trivy", "c", 20)):
            await snapshots.import_snapshot(
                tool, "1.0", feed(tag), actor="live-test", now=now - timedelta(days=days)
            )


async def consumed(client: aioredis.Redis, groups: list[tuple[str, str]]) -> bool:
    for stream, group in groups:
        statuses = {s.group: s for s in await streams.group_statuses(client, stream)}
        status = statuses.get(group)
        if status is None or status.pending or (status.lag or 0):
            return False
    return True


# ------------------------------------------------------------------ Prometheus API


async def query(http: aiohttp.ClientSession, base: str, expr: str) -> tuple[int, str | None]:
    """(series returned, error) for an instant query."""
    async with http.get(f"{base}/api/v1/query", params={"query": expr}) as response:
        body = await response.json()
    if response.status != 200 or body.get("status") != "success":
        return 0, f"HTTP {response.status}: {body.get('error')}"
    data = body["data"]
    if data["resultType"] in ("scalar", "string"):
        return 1, None
    return len(data["result"]), None


async def rule_health(http: aiohttp.ClientSession, base: str) -> dict[str, str]:
    async with http.get(f"{base}/api/v1/rules") as response:
        body = await response.json()
    return {
        rule["name"]: rule["health"] + (f": {rule['lastError']}" if rule.get("lastError") else "")
        for group in body["data"]["groups"]
        for rule in group["rules"]
    }


# ------------------------------------------------------------------ the test


@dataclass
class Stack:
    """Private servers, the environment every ``fleet`` process gets, and what to stop."""

    folder: Path
    env: dict[str, str]
    client: aioredis.Redis
    http: aiohttp.ClientSession
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


@pytest.fixture
def live_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="streamfleet-prom-"))
    folder.chmod(0o755)  # PostgreSQL runs as an unprivileged user when tests run as root
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def stack(live_dir: Path) -> AsyncIterator[Stack]:
    folder = live_dir
    with contextlib.ExitStack() as servers:
        valkey_port = free_port()
        valkey = start_valkey(folder / "valkey", port=valkey_port)
        servers.callback(valkey.stop)
        pg, pg_url = start_postgres(folder / "pg")
        servers.callback(pg.cleanup)
        s3, s3_url = start_s3()
        servers.callback(s3.stop)
        admin = await asyncpg.connect(pg_url)
        try:
            await admin.execute("CREATE DATABASE live")
        finally:
            await admin.close()
        db_url = pg_url.replace("/postgres?", "/live?")
        conn = await asyncpg.connect(db_url)
        try:
            await migrate(conn, load_migrations(schema_dir()), steps=migration_steps())
        finally:
            await conn.close()
        env = {
            "FLEET_VALKEY_URL": f"redis://127.0.0.1:{valkey_port}/0",
            "FLEET_DATABASE_URL": db_url,
            "FLEET_S3_ENDPOINT_URL": s3_url,
            "FLEET_S3_BUCKET": "live-prometheus",
            "AWS_ACCESS_KEY_ID": "streamfleet",
            "AWS_SECRET_ACCESS_KEY": "streamfleet-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "FLEET_HTTP_HOST": "127.0.0.1",
            "FLEET_BLOCK_MS": "200",
            "FLEET_RECLAIM_IDLE_SECONDS": "1",
            "FLEET_RECLAIM_INTERVAL_SECONDS": "0.5",
            "FLEET_MAINTENANCE_INTERVAL_SECONDS": "0.5",
            "FLEET_SHUTDOWN_GRACE_SECONDS": "5",
            "FLEET_LOG_LEVEL": "warning",
            "FLEET_API_TOKEN": API_TOKEN,
            # Retention every 2 s (croniter's sixth field is seconds), not at midnight.
            "FLEET_RETENTION_SCHEDULE": "* * * * * */2",
            # Written only after the first export request: that one fails to sign.
            "FLEET_EXPORT_KEY_FILE": str(folder / "export.pem"),
        }
        live = Stack(
            folder=folder,
            env=env,
            client=aioredis.Redis.from_url(env["FLEET_VALKEY_URL"]),
            http=aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)),
        )
        try:
            yield live
        finally:
            for proc in reversed(live.procs):
                stop(proc)
            await live.http.close()
            await live.client.aclose()
            for proc in live.procs:
                log_path = getattr(proc, "log_path", None)
                if log_path is not None:
                    os.unlink(log_path)


def stream_entries(now: datetime) -> dict[str, list[dict[str, bytes]]]:
    """The valid entries of each stream, in publishing order."""
    entries = {
        "scanner:events": [encode_entry(e) for e in scan_events(now)],
        "notify:delivery": [
            encode_entry(e)
            for e in workload.notification_events(300, seed=17, failure_rate=0.2, start=now)
        ],
    }
    advisories = getattr(workload, "advisory_events", None)
    if advisories is not None:
        entries["concelier:drift"] = [
            encode_entry(e)
            for e in advisories(16, seed=23, components=VEX_COMPONENTS, per_advisory=10)
        ]
    return entries


async def start_fleet(live: Stack, targets: list[Target]) -> None:
    for target in targets:
        live.procs.append(target.start())
    for target in targets:
        assert target.proc is not None
        await wait_http_ok(
            live.http,
            f"http://127.0.0.1:{target.port}/health/readiness",
            target.proc,
            lambda proc=target.proc: process_log(proc)[-3000:],
        )


async def roll_back_through_the_api(live: Stack, retention: Target) -> None:
    """Two CLI imports of syft, then a rollback through the running service's API, whose
    process counts it and refreshes the freshness gauges."""
    payload = live.folder / "syft.json"
    for tag in ("syft-1", "syft-2"):
        payload.write_bytes(feed(tag))
        done = fleet_cli(live.env, "snapshots", "import", str(payload), "--tool", "syft")
        assert done.returncode == 0, done.stderr.decode()
    api = f"http://127.0.0.1:{retention.port}/api/v1/ingest/snapshots"
    async with live.http.get(api, params={"tool": "syft", "state": "previous"}) as response:
        (previous,) = (await response.json())["snapshots"]
    async with live.http.post(
        f"{api}/{previous['id']}/rollback",
        json={"reason": "live Prometheus test"},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    ) as response:
        assert response.status == 200, await response.text()


def _export_request(profile: ExportProfile) -> dict[str, bytes]:
    return encode_entry(workload.export_request(profile, tenant_id=TENANT, source="live-test"))


def write_key(path: Path) -> None:
    path.write_bytes(signing.private_pem(signing.generate_key()))


async def export_and_refuse(live: Stack) -> None:
    """One export request before the signing key exists (export.failed, an attestation
    failure), then one per profile with the key; then a signed VEX document by a key no
    issuer registered, which the import refuses and the vex-consensus worker counts."""
    client = live.client

    async def outcomes(n: int) -> None:
        deadline = time.monotonic() + 30
        while int(await client.xlen("export:events")) < n:
            assert time.monotonic() < deadline, f"{n} export outcomes not seen within 30 s"
            await asyncio.sleep(0.2)

    await publish(client, "export:requests", [_export_request("vex")])
    await outcomes(1)
    write_key(Path(live.env["FLEET_EXPORT_KEY_FILE"]))
    await publish(
        client,
        "export:requests",
        [_export_request(p) for p in ("vex", "scan-metrics", "snapshots")],
    )
    await outcomes(4)
    document = {
        "@context": "https://openvex.dev/ns/v0.2.0",
        "author": "https://unregistered.example/psirt",
        "timestamp": datetime.now(UTC).isoformat(),
        "statements": [
            {
                "vulnerability": {"name": "CVE-2025-9999"},
                "products": [{"@id": "pkg:npm/left-pad@1.3.0"}],
                "status": "affected",
            }
        ],
    }
    envelope = signing.sign_envelope(
        json.dumps(document).encode(), "application/vnd.openvex+json", signing.generate_key()
    )
    signed = live.folder / "unregistered.dsse.json"
    signed.write_text(json.dumps(envelope))
    refused = fleet_cli(live.env, "vex", "import", str(signed))
    assert refused.returncode == 1 and b"unknown_key" in refused.stderr, refused.stderr


async def trim_past_a_lagging_group(live: Stack, capped: Target) -> None:
    """A group that never reads holds every notify:delivery entry; a replica with a hard
    length cap trims past it and counts what it dropped."""
    client = live.client
    await client.xgroup_create("notify:delivery", LAGGING_GROUP, id="0")
    length = int(await client.xlen("notify:delivery"))
    capped.env = {**capped.env, "FLEET_STREAM_MAX_LEN": str(length - TRIMMED_BY_CAP)}
    live.procs.append(capped.start())
    deadline = time.monotonic() + 30
    while int(await client.xlen("notify:delivery")) > length - TRIMMED_BY_CAP:
        proc = live.procs[-1]
        assert proc.poll() is None, process_log(proc)[-3000:]
        assert time.monotonic() < deadline, "the capped replica did not trim within 30 s"
        await asyncio.sleep(0.2)


async def evaluate(
    live: Stack, base: str, to_check: list[Check]
) -> tuple[dict[Check, tuple[int, str | None]], dict[str, str]]:
    """Query until every check has its series and every rule evaluates (or time runs out):
    Prometheus needs a few scrapes and rule evaluations to see it all."""
    rule_names = {r.name for r in rule_expressions()}
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        results = {c: await query(live.http, base, c.query) for c in to_check}
        health = await rule_health(live.http, base)
        complete = set(health) == rule_names and all(h == "ok" for h in health.values())
        if complete and not missing(results):
            return results, health
        if time.monotonic() > deadline:
            return results, health
        await asyncio.sleep(0.5)


def missing(results: dict[Check, tuple[int, str | None]]) -> list[Check]:
    return [c for c, (n, error) in results.items() if error or (c.must_have_series and not n)]


def test_alert_thresholds_strip_to_the_watched_series() -> None:
    assert strip_thresholds("a:max > 1000 and deriv(a:max[10m]) > 0") == (
        "a:max and deriv(a:max[10m])"
    )
    assert strip_thresholds('max by (t) (x) >= 14 * 86400 and on (t) y{s="a>1"} == 1') == (
        'max by (t) (x) and on (t) y{s="a>1"}'
    )
    assert strip_thresholds("x > bool 0.5") == "x > bool 0.5"
    with pytest.raises(ValueError, match="between vectors"):
        strip_thresholds("x > y")
    with pytest.raises(ValueError, match="between vectors"):
        strip_thresholds("x > 2 * y")
    # Every shipped alert can be checked this way (no vector-to-vector comparison).
    alerts = [r for r in rule_expressions() if r.kind == "alert"]
    assert alerts
    for rule in alerts:
        stripped = strip_thresholds(rule.expr)
        assert not any(op in stripped for op in (" > ", " < ", " == ", " >= ")), stripped


@requires_prometheus
async def test_every_dashboard_and_rule_query_returns_series(stack: Stack) -> None:
    started = time.monotonic()
    live, client = stack, stack.client
    workers_here = available_workers()
    for worker in ("snapshot-retention", *STREAM_GROUPS):
        assert worker in workers_here, f"worker {worker} is not available in this build"
    pool = await create_pool(load_settings(live.env), max_size=2)
    try:
        await seed_vex(pool)
        await seed_snapshots(live.env, pool)
    finally:
        await pool.close()

    # A consumer reads three entries of each stream and goes away without acknowledging
    # them: the workers reclaim them once they have been idle for a second.
    entries = stream_entries(datetime.now(UTC))
    for stream, group in STREAM_GROUPS.values():
        if stream not in entries:
            continue
        await streams.ensure_group(client, stream, group)
        await publish(client, stream, entries[stream][:3])
        taken = await client.xreadgroup(group, "departed-consumer", {stream: ">"}, count=3)
        assert len(taken[0][1]) == 3

    targets = [Target(w, free_port(), live.env) for w in workers_here]
    capped = Target("notify-delivery", free_port(), live.env)  # started later, capped
    prometheus_port = free_port()
    config = prometheus_config(live.folder, [*targets, capped])
    prometheus = start_prometheus(live.folder, config, prometheus_port)
    live.procs.append(prometheus)
    base = f"http://127.0.0.1:{prometheus_port}"
    await start_fleet(live, targets)
    await wait_http_ok(
        live.http,
        f"{base}/-/ready",
        prometheus,
        lambda: (live.folder / "prometheus.log").read_text(errors="replace"),
    )

    for stream, valid in entries.items():
        await publish(client, stream, valid[3:] + valid[:5])  # the first five twice
        await publish(client, stream, [*poison(valid[0]["type"].decode()), IGNORED])
    await roll_back_through_the_api(
        live, next(t for t in targets if t.worker == "snapshot-retention")
    )
    await change_trust(live)
    groups = [STREAM_GROUPS[w] for w in workers_here if w in STREAM_GROUPS]
    deadline = time.monotonic() + 30
    while not await consumed(client, groups):
        assert time.monotonic() < deadline, "the workload was not consumed within 30 s"
        await asyncio.sleep(0.2)
    await export_and_refuse(live)
    await trim_past_a_lagging_group(live, capped)

    to_check = checks() + spec_metric_checks()
    results, health = await evaluate(live, base, to_check)
    print(f"\n{len(to_check)} queries against a live Prometheus (series returned):")
    for check, (n, error) in results.items():
        print(f"  {n:>4}  {check.where}\n        {check.query}")
        if error:
            print(f"        {error}")
    print(f"  ({time.monotonic() - started:.1f}s)")

    assert set(health) == {r.name for r in rule_expressions()}, f"rules loaded: {sorted(health)}"
    unhealthy = {name: h for name, h in health.items() if h != "ok"}
    assert not unhealthy, f"rules failing to evaluate: {unhealthy}"
    empty = missing(results)
    assert not empty, "queries without series or failing:\n" + "\n".join(
        f"  {c.where}: {c.query} -> {results[c][1] or 'no series'}" for c in empty
    )
    for proc in live.procs:
        assert proc.poll() is None, f"{proc.args} exited: {process_log(proc)[-3000:]}"
