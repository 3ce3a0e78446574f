"""Static checks of the ops artifacts.

compose.yaml and the Dockerfile, the Kubernetes and KEDA manifests, the
Prometheus configuration and rules, the Grafana dashboards, the runbooks and
the Valkey configuration and ACL file. Pure file checks: no server is started
and nothing leaves the machine. promtool's own checks live in
test_ops_promtool.py.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from tests.ops_queries import dashboard_queries, dashboards, runbook_queries, walk_panels

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
RULES_FILE = OPS / "prometheus" / "rules" / "streamfleet.rules.yml"
RUNBOOKS = OPS / "runbooks"
K8S = OPS / "k8s"
ACL_FILE = OPS / "valkey" / "users.acl"

# worker -> (stream, consumer group), as in docs/workers.md.
STREAM_WORKERS: dict[str, tuple[str, str]] = {
    "scan-metrics": ("scanner:events", "scan-metrics"),
    "vex-consensus": ("concelier:drift", "vex-consensus"),
    "notify-delivery": ("notify:delivery", "notify-workers"),
    "export": ("export:requests", "export-workers"),
}
WORKERS = [*STREAM_WORKERS, "snapshot-retention"]
SHUTDOWN_GRACE_SECONDS = 25

# Mirrors the metric names and types of docs/operations.md ("Metrics").
SPEC_METRICS: dict[str, str] = {
    "fleet_events_total": "counter",
    "fleet_event_handle_seconds": "histogram",
    "fleet_batch_size": "histogram",
    "fleet_stream_length": "gauge",
    "fleet_group_lag": "gauge",
    "fleet_group_lag_estimated": "gauge",  # figures SREs can trust
    "fleet_group_pending": "gauge",
    "fleet_oldest_pending_age_seconds": "gauge",
    "fleet_consumers": "gauge",
    "fleet_dead_letters_total": "counter",
    "fleet_reclaimed_total": "counter",
    "fleet_stream_trimmed_unconsumed_total": "counter",
    "fleet_after_commit_failures_total": "counter",  # worker statements
    "fleet_connection_replaced_total": "counter",  # connections
    "fleet_scan_tte_seconds": "histogram",
    "fleet_scan_phase_duration_seconds": "histogram",
    "fleet_scans_total": "counter",
    "fleet_scan_slo_breaches_total": "counter",
    "fleet_vex_consensus_latency_seconds": "histogram",
    "fleet_vex_conflict_queue_depth": "gauge",
    "fleet_vex_recompute_duration_seconds": "histogram",
    "fleet_vex_conflict_queue_tenant_max_depth": "gauge",  # seed 004: > 500 for any tenant
    "fleet_vex_issuer_trust_changes_total": "counter",  # seed 004: issuer trust changes
    "fleet_vex_consensus_conflicts_total": "counter",
    "fleet_notify_deliveries_total": "counter",
    "fleet_notify_delivery_latency_seconds": "histogram",
    "fleet_snapshot_age_seconds": "gauge",
    "fleet_snapshot_freshness": "gauge",
    "fleet_snapshot_threshold_seconds": "gauge",
    "fleet_snapshot_retention_actions_total": "counter",
    "fleet_snapshot_rollbacks_total": "counter",
    # exports and signed VEX (seeds 002 and 004, docs/exports.md)
    "fleet_vex_dsse_verification_failures_total": "counter",
    "fleet_vex_export_duration_seconds": "histogram",
    "fleet_export_job_duration_seconds": "histogram",
    "fleet_export_bundle_size_bytes": "histogram",
    "fleet_export_attestation_failures_total": "counter",
    "fleet_export_queue_depth": "gauge",
    "fleet_export_manifest_publish_total": "counter",
    "fleet_exports_total": "counter",
}
SCRAPE_METRICS = {"up"}

ALERTS = {
    "FleetExportDurationHigh",
    "FleetExportAttestationFailures",
    "FleetVexDsseVerificationFailures",
    "FleetExportFailureRatioHigh",
    "FleetExportQueueStalled",
    "FleetGroupLagGrowing",
    "FleetOldestPendingTooOld",
    "FleetDeadLettersArriving",
    "FleetGroupWithoutConsumers",
    "FleetStreamTrimmedUnconsumed",
    "FleetAfterCommitFailing",
    "FleetWorkerDown",
    "FleetWorkerUnavailable",
    "FleetScanTTEP50SLOBreach",
    "FleetScanTTEP95SLOBreach",
    "FleetVexConsensusLatencyHigh",
    "FleetVexConflictQueueDeep",
    "FleetNotifyFailureRatioHigh",
    "FleetSnapshotStale",
    "FleetSnapshotCritical",
}

# Commands a worker needs on Valkey (docs/kernel.md), plus CLIENT SETINFO, which
# client libraries send on connect, and MULTI/EXEC, which wrap the XADD to the
# dead-letter stream and the XACK of the original into one transaction.
CONNECTION_COMMANDS = {"ping", "hello", "auth", "client|setname", "client|setinfo"}
# What a Valkey Cluster client sends besides (docs/scaling.md); not the probe's business.
CLUSTER_COMMANDS = {"cluster|slots", "asking"}
WORKER_COMMANDS = (
    CONNECTION_COMMANDS
    | CLUSTER_COMMANDS
    | {
        "info",
        "multi",
        "exec",
        "xreadgroup",
        "xack",
        "xautoclaim",
        "xclaim",
        "xpending",
        "xinfo|stream",
        "xinfo|groups",
        "xinfo|consumers",
        "xgroup|create",
        "xgroup|createconsumer",
        "xgroup|delconsumer",
        "xadd",
        "xlen",
        "xrange",
        "xtrim",
    }
)


def _both_layouts(consumed: list[str], published: tuple[str, ...] = ()) -> set[str]:
    """The keys of streams in either layout: ``S``, ``S:dlq`` and ``{S:*}``, ``{S:*}:dlq``
    for a consumed stream; ``S`` and ``{S:*}`` for one only published to (docs/scaling.md)."""
    keys = {f"{s}{tail}" for s in consumed for tail in ("", ":dlq")}
    keys |= {f"{{{s}:*}}{tail}" for s in consumed for tail in ("", ":dlq")}
    return keys | set(published) | {f"{{{s}:*}}" for s in published}


WORKER_KEYS = {
    "scan-metrics": _both_layouts(["scanner:events"]),
    "vex-consensus": _both_layouts(["concelier:drift"], ("vex:consensus",)),
    "notify-delivery": _both_layouts(["notify:delivery"]),
    "snapshot-retention": set(),
    "export": _both_layouts(["export:requests"], ("export:events",)),
}
KEDA_COMMANDS = CONNECTION_COMMANDS | CLUSTER_COMMANDS | {"xinfo|groups", "xpending", "xlen"}
NEVER_GRANTED = {"flushall", "flushdb", "keys", "config", "debug", "shutdown", "acl", "module"}


# --- helpers -----------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def compose() -> dict[str, Any]:
    data = load_yaml(ROOT / "compose.yaml")
    assert isinstance(data, dict)
    return data


def k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(load_yaml_docs(path))
    return docs


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def rule_groups() -> list[dict[str, Any]]:
    groups = load_yaml(RULES_FILE)["groups"]
    assert groups
    return list(groups)


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in rule_groups() for r in g["rules"] if "alert" in r]


def recording_names() -> set[str]:
    return {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_PROMQL_WORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
    "group_left",
    "group_right",
}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions and labels left out)."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    return {m for m in _IDENTIFIER.findall(text) if m.lower() not in _PROMQL_WORDS}


def series_names(name: str) -> set[str]:
    """The series a documented metric exposes: histograms as _bucket, _sum and _count."""
    if SPEC_METRICS[name] == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return {name}


def spec_series_names() -> set[str]:
    return set(SCRAPE_METRICS).union(*(series_names(name) for name in SPEC_METRICS))


def allowed_metric_names() -> set[str]:
    """Names a rule or runbook may use: documented series and our recording rules."""
    return spec_series_names() | recording_names()


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(duration))
    assert match and any(match.groups()), f"unreadable duration {duration!r}"
    return int(match[1] or 0) * 60 + int(match[2] or 0)


def image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return False
    return tag != "latest" and re.search(r"\d", tag) is not None


def _acl_lines() -> list[tuple[list[str], list[list[str]]]]:
    """Each user line as (root rules, selectors); a selector is ``(rules…)``."""
    parsed = []
    for line in ACL_FILE.read_text(encoding="utf-8").splitlines():
        selectors = [group.split() for group in re.findall(r"\(([^()]*)\)", line)]
        words = re.sub(r"\([^()]*\)", " ", line).split()
        if words:
            parsed.append((words, selectors))
    return parsed


def acl_users() -> dict[str, list[str]]:
    """Each user's root rules (selectors apart: see :func:`acl_selectors`)."""
    users: dict[str, list[str]] = {}
    for words, _ in _acl_lines():
        assert words[0] == "user" and len(words) >= 3, f"bad ACL line: {words!r}"
        assert words[1] not in users, f"user {words[1]} defined twice"
        users[words[1]] = words[2:]
    return users


def acl_selectors() -> dict[str, list[list[str]]]:
    return {words[1]: selectors for words, selectors in _acl_lines()}


def acl_commands(rules: list[str]) -> set[str]:
    """Commands granted after applying the rules in order (explicit grants only)."""
    granted: set[str] = set()
    for rule in rules:
        if rule in {"reset", "-@all", "nocommands"}:
            granted.clear()
        elif rule.startswith("+") and not rule.startswith("+@"):
            granted.add(rule[1:].lower())
        elif rule.startswith("-") and not rule.startswith("-@"):
            granted.discard(rule[1:].lower())
    return granted


def acl_keys(rules: list[str]) -> set[str]:
    keys: set[str] = set()
    for rule in rules:
        if rule in {"reset", "resetkeys"}:
            keys.clear()
        elif rule.startswith("~"):
            keys.add(rule[1:])
        elif rule.startswith("%"):
            keys.add(rule)
    return keys


def dev_passwords() -> dict[str, str]:
    """The development passwords table of ops/valkey/README.md."""
    text = (OPS / "valkey" / "README.md").read_text(encoding="utf-8")
    section = text.split("## Development passwords", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([\w-]+)` \| `([^`]+)` \|$", section, re.M))


# --- metric names ------------------------------------------------------------


def test_metric_name_extraction_ignores_functions_labels_and_keywords() -> None:
    expr = (
        'sum by (stream) (rate(fleet_events_total{group="a:b", le="1"}[5m])) > 0'
        " and on (stream) group_left fleet:stream_length:max offset 1h"
        ' or absent(up{job="x"}) unless histogram_quantile(0.5, x_bucket) > 1e3'
    )
    assert metric_names(expr) == {"fleet_events_total", "fleet:stream_length:max", "up", "x_bucket"}


def test_rule_expressions_use_only_spec_metrics() -> None:
    allowed = allowed_metric_names()
    used = {
        name: rule.get("alert") or rule.get("record")
        for group in rule_groups()
        for rule in group["rules"]
        for name in metric_names(rule["expr"])
    }
    assert used
    unknown = {name: where for name, where in used.items() if name not in allowed}
    assert not unknown, f"metric names not in docs/operations.md: {unknown}"


def test_dashboard_queries_use_only_spec_metrics() -> None:
    allowed = spec_series_names()
    queries = dashboard_queries()
    assert queries
    unknown = [(where, name) for where, expr in queries for name in metric_names(expr) - allowed]
    assert not unknown, f"dashboard queries use metric names not in docs/operations.md: {unknown}"


def test_dashboard_variables_use_only_spec_metrics() -> None:
    for name, board in dashboards().items():
        for variable in board["templating"]["list"]:
            if variable["type"] != "query":
                continue
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((\w+)(?:\{.*\})?, *(\w+)\)", query)
            assert match, f"{name}: variable {variable['name']} has an unexpected query {query}"
            assert match[1] in SPEC_METRICS, f"{name}: {match[1]} is not in docs/operations.md"


def test_runbook_queries_use_only_spec_metrics() -> None:
    allowed = allowed_metric_names()
    queries = runbook_queries()
    assert len(queries) >= len(ALERTS)
    unknown = [(where, n) for where, expr in queries for n in metric_names(expr) - allowed]
    assert not unknown, f"runbook queries use unknown metric names: {unknown}"


def test_every_spec_metric_is_on_a_dashboard() -> None:
    used = {name for _, expr in dashboard_queries() for name in metric_names(expr)}
    missing = [name for name in SPEC_METRICS if not series_names(name) & used]
    assert not missing, f"metrics no dashboard shows: {missing}"


# --- alert rules and runbooks ------------------------------------------------


def test_alert_set_is_the_documented_one() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert set(names) == ALERTS


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_alert_has_severity_and_runbook(alert: str) -> None:
    (rule,) = [r for r in alert_rules() if r["alert"] == alert]
    assert rule["labels"]["severity"] in {"warning", "critical"}
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    assert annotations["runbook_url"] == f"ops/runbooks/{alert}.md"
    runbook = ROOT / annotations["runbook_url"]
    assert runbook.is_file(), f"missing runbook {runbook}"
    text = runbook.read_text(encoding="utf-8")
    assert text.startswith(f"# {alert}\n")
    for heading in ("## Meaning", "## Impact", "## Diagnosis", "## Remediation"):
        assert heading in text, f"{runbook.name} lacks {heading}"
    assert "```promql" in text, f"{runbook.name} has no PromQL"
    assert re.search(r"`fleet (status|dlq list|tte|vex|snapshots|export)", text), (
        f"{runbook.name} does not use the fleet CLI"
    )


def test_every_runbook_belongs_to_an_alert() -> None:
    pages = {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"}
    assert pages == ALERTS
    index = (RUNBOOKS / "README.md").read_text(encoding="utf-8")
    assert all(f"[{alert}.md]({alert}.md)" in index for alert in ALERTS)


def test_recording_rules_follow_the_naming_convention() -> None:
    names = recording_names()
    assert names
    for name in names:
        assert re.fullmatch(r"fleet:[a-z0-9_]+:[a-z0-9_]+", name), name


def test_prometheus_scrapes_every_worker_under_one_job() -> None:
    config = load_yaml(OPS / "prometheus" / "prometheus.yml")
    assert config["rule_files"] == ["rules/*.rules.yml"]
    assert RULES_FILE.match("rules/*.rules.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "streamfleet"]
    (sd,) = job["dns_sd_configs"]
    assert sorted(sd["names"]) == sorted(WORKERS)
    assert set(sd["names"]) <= set(compose()["services"])
    assert sd["port"] == 8080
    assert {"source_labels": ["__meta_dns_name"], "target_label": "worker"} in job[
        "relabel_configs"
    ]


def test_kubernetes_scrape_example_labels_job_and_worker() -> None:
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    (snippet,) = re.findall(r"```yaml\n(- job_name: streamfleet\n.*?)```", readme, re.S)
    (job,) = yaml.safe_load(snippet)
    assert job["job_name"] == "streamfleet"
    relabels = job["relabel_configs"]
    assert {
        "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
        "target_label": "worker",
    } in relabels
    (monitor,) = load_yaml_docs(K8S / "podmonitor.yaml")
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/part-of"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
        "targetLabel": "worker",
    } in endpoint["relabelings"]


# --- Grafana ------------------------------------------------------------------


def test_dashboards_are_consistent() -> None:
    uids = set()
    for name, board in dashboards().items():
        assert board["uid"] not in uids, f"{name}: duplicate uid"
        uids.add(board["uid"])
        assert board["title"].startswith("Streamfleet / ")
        assert "streamfleet" in board["tags"]
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["query"] == "prometheus"
        panels = list(walk_panels(board["panels"]))
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in panels:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            assert panel.get("description"), f"{name}: {panel['title']} has no description"


def test_grafana_provisioning_matches_compose() -> None:
    services = compose()["services"]
    (source,) = load_yaml(OPS / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert source["type"] == "prometheus"
    url = urlsplit(source["url"])
    assert url.hostname in services
    assert url.port == 9090
    (provider,) = load_yaml(OPS / "grafana/provisioning/dashboards/streamfleet.yml")["providers"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"] if ":" in v)
    assert mounts["./ops/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./ops/grafana/provisioning"] == "/etc/grafana/provisioning"


# --- compose.yaml and Dockerfile ---------------------------------------------


def compose_spec_schema() -> dict[str, Any]:
    # check-jsonschema vendors the Compose Specification schema; importing the
    # package would pull in its CLI, so only its location is looked up.
    spec = importlib.util.find_spec("check_jsonschema")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(
            "Compose Specification schema unavailable: install check-jsonschema, which ships "
            "it as check_jsonschema/builtin_schemas/vendor/compose-spec.json"
        )
    location = Path(next(iter(spec.submodule_search_locations)))
    schema_path = location / "builtin_schemas" / "vendor" / "compose-spec.json"
    if not schema_path.is_file():
        pytest.skip(f"check-jsonschema is installed but {schema_path} is missing")
    schema: dict[str, Any] = json.loads(schema_path.read_text(encoding="utf-8"))
    return schema


def test_compose_file_matches_the_compose_specification() -> None:
    schema = compose_spec_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors, "\n".join(errors)
    # The schema must be able to reject something, or the check above is empty.
    broken = compose()
    broken["services"]["valkey"]["restart_policy"] = "always"
    assert not validator.is_valid(broken)


def test_every_compose_image_is_pinned() -> None:
    services = compose()["services"]
    images = {name: s["image"] for name, s in services.items() if "image" in s}
    assert set(images) == set(services), "every service names its image"
    unpinned = {name: image for name, image in images.items() if not image_is_pinned(image)}
    assert not unpinned, f"images without a version tag: {unpinned}"
    assert images["valkey"].startswith("valkey/valkey:8.")
    assert re.fullmatch(r"postgres:16\.\d+", images["postgres"])
    assert re.fullmatch(r"minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", images["minio"])
    assert re.fullmatch(r"minio/mc:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", images["minio-init"])


def test_image_pin_check_rejects_floating_tags() -> None:
    for image in ("valkey/valkey", "valkey/valkey:latest", "postgres:alpine", "localhost:5000/x"):
        assert not image_is_pinned(image), image
    for image in ("valkey/valkey:8.1.10", "localhost:5000/x:1.2", "x@sha256:" + "0" * 64):
        assert image_is_pinned(image), image


def test_dockerfile_pins_python_311_slim_and_installs_the_package() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert bases
    assert all(re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base) for base in bases), bases
    # The package with its tracing extra, so FLEET_TRACING=otlp works in the image.
    assert re.search(r'^RUN pip install "\.\[tracing\]"$', text, re.M)
    assert re.search(r"^USER \S+", text, re.M), "the image must not run as root"


@pytest.mark.parametrize("worker", WORKERS)
def test_compose_worker_service(worker: str) -> None:
    service = compose()["services"][worker]
    assert service["command"] == ["fleet", "run", worker]
    assert service["build"] == "."
    assert "container_name" not in service, "a fixed name prevents --scale"
    assert "ports" not in service, "fixed host ports prevent --scale"
    check = " ".join(service["healthcheck"]["test"])
    assert "/health/readiness" in check
    assert service["healthcheck"]["test"][:2] == ["CMD", "python"], "no curl in the image"
    assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert seconds(service["stop_grace_period"]) > SHUTDOWN_GRACE_SECONDS


def test_compose_migrate_is_a_one_shot() -> None:
    services = compose()["services"]
    migrate = services["migrate"]
    assert migrate["command"] == ["fleet", "migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    init = services["minio-init"]
    assert init["restart"] == "no"
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mc mb --ignore-existing" in " ".join(init["entrypoint"])


def test_compose_mounts_ops_configuration() -> None:
    services = compose()["services"]
    valkey_conf = (OPS / "valkey" / "valkey.conf").read_text(encoding="utf-8")
    settings = dict(
        line.split(None, 1) for line in valkey_conf.splitlines() if line and line[0] != "#"
    )
    assert settings["appendonly"] == "yes"
    assert settings["appendfsync"] == "everysec"
    mounts = dict(v.split(":")[:2] for v in services["valkey"]["volumes"])
    assert mounts["./ops/valkey/users.acl"] == settings["aclfile"]
    conf_target = mounts["./ops/valkey/valkey.conf"]
    assert services["valkey"]["command"] == ["valkey-server", conf_target]
    prometheus_mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    assert prometheus_mounts["./ops/prometheus"] == "/etc/prometheus"
    for source in [*mounts, *prometheus_mounts]:
        if source.startswith("./"):
            assert (ROOT / source).exists(), source


def test_compose_valkey_credentials_match_the_acl_file() -> None:
    services = compose()["services"]
    users = acl_users()
    expected_user = {worker: worker for worker in WORKERS} | {"migrate": "fleet-admin"}
    for service, user in expected_user.items():
        url = urlsplit(services[service]["environment"]["FLEET_VALKEY_URL"])
        assert url.username == user, service
        assert url.hostname == "valkey"
        digest = hashlib.sha256((url.password or "").encode()).hexdigest()
        assert f"#{digest}" in users[user], f"{service}: password does not match {user}'s hash"
    probe = services["valkey"]["environment"]["VALKEY_PROBE_PASSWORD"]
    assert f"#{hashlib.sha256(probe.encode()).hexdigest()}" in users["probe"]


# --- Valkey ACL -----------------------------------------------------------------


def test_acl_has_a_user_per_worker_plus_admin_and_keda() -> None:
    users = acl_users()
    assert set(WORKERS) | {"fleet-admin", "keda"} <= set(users)
    assert users["default"][0] == "off"


def test_acl_users_have_hashed_passwords_only() -> None:
    for user, rules in acl_users().items():
        assert "nopass" not in rules, user
        assert not any(r.startswith(">") for r in rules), f"{user}: clear-text password"
        if user == "default":
            continue
        assert "on" in rules, user
        hashes = [r for r in rules if r.startswith("#")]
        assert hashes, f"{user} has no password"
        assert all(re.fullmatch(r"#[0-9a-f]{64}", h) for h in hashes), user


def test_acl_never_grants_everything_or_dangerous_commands() -> None:
    for user, rules in acl_users().items():
        lowered = [r.lower() for r in rules]
        assert "-@all" in lowered, f"{user} does not start from -@all"
        assert "+@all" not in lowered and "allcommands" not in lowered, user
        assert "allkeys" not in lowered and "~*" not in lowered, user
        categories = {r for r in lowered if r.startswith("+@")}
        assert categories <= {"+@stream"}, f"{user} is granted {categories}"
        granted = acl_commands(rules)
        assert not {c.split("|")[0] for c in granted} & NEVER_GRANTED, f"{user}: {granted}"


# A stream worker leases its consumer name (workers/kernel/lease.py): these commands, on
# its lease keys only (a selector), so it cannot delete or overwrite its streams.
LEASE_COMMANDS = {"set", "get", "pexpire", "del", "watch", "unwatch"}


@pytest.mark.parametrize("worker", WORKERS)
def test_acl_worker_leases_names_only_on_its_lease_keys(worker: str) -> None:
    selectors = acl_selectors()[worker]
    if worker == "snapshot-retention":
        assert selectors == []
        return
    stream = next(s for name, (s, _) in STREAM_WORKERS.items() if name == worker)
    (selector,) = selectors
    assert acl_keys(selector) == {f"{stream}:lease:*"}
    assert acl_commands(selector) == LEASE_COMMANDS


@pytest.mark.parametrize("worker", WORKERS)
def test_acl_worker_is_limited_to_its_streams_and_commands(worker: str) -> None:
    rules = acl_users()[worker]
    assert acl_keys(rules) == WORKER_KEYS[worker]
    granted = acl_commands(rules)
    if worker == "snapshot-retention":
        assert granted == CONNECTION_COMMANDS | {"info"}
    else:
        assert granted == WORKER_COMMANDS


def test_acl_keda_is_read_only_on_the_input_streams() -> None:
    rules = acl_users()["keda"]
    streams = [stream for stream, _ in STREAM_WORKERS.values()]
    assert acl_keys(rules) == {f"%R~{s}" for s in streams} | {f"%R~{{{s}:*}}" for s in streams}
    assert acl_commands(rules) == KEDA_COMMANDS


def test_acl_admin_sees_only_fleet_streams() -> None:
    rules = acl_users()["fleet-admin"]
    prefixes = ("scanner:*", "concelier:*", "notify:*", "vex:*", "export:*")
    assert acl_keys(rules) == {*prefixes, *(f"{{{p}" for p in prefixes)}


def test_acl_command_simulation_follows_rule_order() -> None:
    assert acl_commands(["+xadd", "-@all", "+ping", "+xlen", "-xlen"]) == {"ping"}


def test_documented_dev_passwords_match_the_hashes() -> None:
    passwords = dev_passwords()
    users = acl_users()
    assert set(passwords) == set(users) - {"default"}
    for user, password in passwords.items():
        assert f"#{hashlib.sha256(password.encode()).hexdigest()}" in users[user], user


# --- Kubernetes and KEDA -------------------------------------------------------


def test_every_manifest_parses_and_names_its_kind() -> None:
    paths = sorted(K8S.glob("*.yaml"))
    assert paths
    for path in paths:
        docs = load_yaml_docs(path)
        assert docs, f"{path.name} is empty"
        for doc in docs:
            assert doc.get("apiVersion"), path.name
            assert doc.get("kind"), path.name
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], path.name


def test_kustomization_lists_existing_files_and_pins_the_image() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert {f"{w}.yaml" for w in WORKERS} <= set(kustomization["resources"])
    for image in kustomization["images"]:
        assert image_is_pinned(f"{image['newName']}:{image['newTag']}")


@pytest.mark.parametrize("worker", WORKERS)
def test_deployment_probes_shutdown_and_resources(worker: str) -> None:
    deployment = k8s_object("Deployment", worker)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > SHUTDOWN_GRACE_SECONDS
    (container,) = pod["containers"]
    assert container["command"] == ["fleet", "run", worker]
    assert image_is_pinned(container["image"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (
        ("livenessProbe", "/health/liveness"),
        ("readinessProbe", "/health/readiness"),
    ):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == 8080
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), f"{worker}: {kind}"
    secret_refs = [e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e]
    assert secret_refs == [f"streamfleet-{worker}"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    service = k8s_object("Service", worker)
    assert service["spec"]["selector"].items() <= labels.items()
    assert [p["port"] for p in service["spec"]["ports"]] == [8080]


@pytest.mark.parametrize("worker", sorted(STREAM_WORKERS))
def test_keda_scales_each_stream_worker_on_its_group(worker: str) -> None:
    stream, group = STREAM_WORKERS[worker]
    scaled = k8s_object("ScaledObject", worker)
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == worker
    assert spec["minReplicaCount"] >= 1
    assert spec["maxReplicaCount"] > spec["minReplicaCount"]
    trigger, counted = spec["triggers"]
    assert trigger["type"] == "redis-streams"
    # The lag the workers count when Valkey cannot report it (after XDEL/XTRIM).
    assert counted["type"] == "prometheus"
    query = counted["metadata"]["query"]
    # Every key of the stream in either layout (S, or {S:0} … with partitions), each
    # key's lag once whatever the number of replicas exporting it, summed.
    keys = f"{stream}|[{{]{stream}:[0-9]+[}}]"
    assert query == f'sum(max by (stream) (fleet_group_lag{{stream=~"{keys}",group="{group}"}}))'
    assert counted["metadata"]["threshold"] == trigger["metadata"]["lagCount"]
    metadata = trigger["metadata"]
    assert metadata["stream"] == stream
    assert metadata["consumerGroup"] == group
    counts = [metadata[k] for k in ("lagCount", "pendingEntriesCount") if k in metadata]
    assert counts and all(isinstance(c, str) and int(c) > 0 for c in counts)
    auth = k8s_object("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]} == {"username", "password"}
    # The address comes from the target container's environment.
    env_name = metadata["addressFromEnv"]
    config = k8s_object("ConfigMap", "streamfleet-config")
    assert re.fullmatch(r"[\w.-]+:\d+", config["data"][env_name])
    (container,) = k8s_object("Deployment", worker)["spec"]["template"]["spec"]["containers"]
    assert {"configMapRef": {"name": "streamfleet-config"}} in container["envFrom"]
    assert "replicas" not in k8s_object("Deployment", worker)["spec"], "KEDA owns replicas"


def test_snapshot_retention_runs_one_replica_without_autoscaling() -> None:
    assert k8s_object("Deployment", "snapshot-retention")["spec"]["replicas"] == 1
    targets = [
        d["spec"]["scaleTargetRef"]["name"] for d in k8s_docs() if d["kind"] == "ScaledObject"
    ]
    assert sorted(targets) == sorted(STREAM_WORKERS)


def test_example_secrets_cover_every_reference() -> None:
    secrets = {
        d["metadata"]["name"]: d["stringData"]
        for d in load_yaml_docs(K8S / "secrets.example.yaml")
        if d["kind"] == "Secret"
    }
    users = acl_users()
    for worker in WORKERS:
        url = urlsplit(secrets[f"streamfleet-{worker}"]["FLEET_VALKEY_URL"])
        assert url.username == worker
        assert f"#{hashlib.sha256((url.password or '').encode()).hexdigest()}" in users[worker]
    keda = secrets["streamfleet-keda-valkey"]
    assert keda["username"] == "keda"
    assert f"#{hashlib.sha256(keda['password'].encode()).hexdigest()}" in users["keda"]
    (job_container,) = k8s_object("Job", "streamfleet-migrate-0-1-0")["spec"]["template"]["spec"][
        "containers"
    ]
    assert job_container["command"] == ["fleet", "migrate"]
    refs = [e["secretRef"]["name"] for e in job_container["envFrom"] if "secretRef" in e]
    assert refs == ["streamfleet-admin"]
    assert urlsplit(secrets["streamfleet-admin"]["FLEET_VALKEY_URL"]).username == "fleet-admin"
