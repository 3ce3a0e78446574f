"""promtool checks of the Prometheus configuration, rules and rule unit tests.

Runs the real promtool (Debian package `prometheus`) in a subprocess; every
test is skipped, with the reason shown in the summary, when promtool is not
on PATH. The queries of the Grafana dashboards and of the runbooks are
checked as PromQL too, by handing them to promtool as recording rules.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.ops_queries import dashboard_queries, runbook_queries

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "ops" / "prometheus"
RULES = PROMETHEUS / "rules" / "streamfleet.rules.yml"
RULE_TESTS = PROMETHEUS / "tests" / "streamfleet.test.yml"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not on PATH (apt-get install prometheus provides it)"
)

# Values Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "6h",
    "$__interval": "15s",
    "$stream": ".*",
    "$group": ".*",
}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", RULES)
    assert_ok(result)
    assert "SUCCESS" in result.stdout


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS)
    assert_ok(result)


def test_rule_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    # The same tests against rules whose lag threshold was raised must fail:
    # proof that they pin the thresholds rather than pass on anything.
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    rules = RULES.read_text(encoding="utf-8")
    assert "fleet:group_lag:max > 1000" in rules
    (tmp_path / "rules" / RULES.name).write_text(
        rules.replace("fleet:group_lag:max > 1000", "fleet:group_lag:max > 100000"),
        encoding="utf-8",
    )
    shutil.copy(RULE_TESTS, tmp_path / "tests" / RULE_TESTS.name)
    result = promtool("test", "rules", tmp_path / "tests" / RULE_TESTS.name)
    assert result.returncode != 0
    assert "FleetGroupLagGrowing" in result.stdout + result.stderr


def test_prometheus_config_is_valid() -> None:
    result = promtool("check", "config", PROMETHEUS / "prometheus.yml")
    assert_ok(result)
    assert "1 rule files found" in result.stdout


def test_dashboard_and_runbook_queries_are_valid_promql(tmp_path: Path) -> None:
    queries = [expr for _, expr in dashboard_queries() + runbook_queries()]
    assert len(queries) > 50
    expressions = []
    for query in queries:
        for variable, value in GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        assert "$" not in query, f"unknown Grafana variable in {query}"
        expressions.append(query)
    rules = {
        "groups": [
            {
                "name": "queries",
                "rules": [
                    {"record": f"query:check:{i}", "expr": expr}
                    for i, expr in enumerate(expressions)
                ],
            }
        ]
    }
    path = tmp_path / "queries.rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    result = promtool("check", "rules", path)
    assert_ok(result)
    assert f"{len(expressions)} rules found" in result.stdout
