"""The PromQL that ships in ops/: dashboard targets, rule expressions, runbook snippets.

One extraction shared by the static checks (tests/unit/test_ops_*.py) and the live
Prometheus test (tests/integration/test_prometheus_live.py), so every check looks at
exactly the same queries. Pure file reading and string handling: no server, no I/O
beyond the repository.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "ops"
DASHBOARDS = OPS / "grafana" / "dashboards"
RULES_DIR = OPS / "prometheus" / "rules"
RUNBOOKS = OPS / "runbooks"


# ------------------------------------------------------------------ dashboards


def dashboards() -> dict[str, dict[str, Any]]:
    """Every provisioned dashboard, by file name."""
    boards = {
        p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS.glob("*.json"))
    }
    assert boards, "no dashboards found"
    return boards


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Panels depth-first, rows' nested panels included."""
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target of every dashboard."""
    out = []
    for name, board in dashboards().items():
        for panel in walk_panels(board["panels"]):
            for target in panel.get("targets", []):
                out.append((f"{name}: {panel['title']}", target["expr"]))
    return out


def dashboard_all_values() -> dict[str, str]:
    """Template variable -> the value Grafana sends when "All" is selected (``allValue``)."""
    values: dict[str, str] = {}
    for board in dashboards().values():
        for variable in board.get("templating", {}).get("list", []):
            if variable.get("type") == "query" and variable.get("includeAll"):
                values[variable["name"]] = variable.get("allValue") or ".*"
    return values


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace Grafana variables (``$name``, ``${name}``, ``${name:fmt}``, ``[[name]]``)
    the way Grafana does before a query reaches Prometheus. Unknown names raise
    ``KeyError`` so a new variable cannot slip through unsubstituted."""

    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(value, expr)


# ------------------------------------------------------------------ rules


@dataclass(frozen=True)
class RuleExpr:
    file: str
    group: str
    kind: str  # "alert" or "record"
    name: str
    expr: str


def rule_files() -> list[Path]:
    files = sorted(RULES_DIR.glob("*.yml"))
    assert files, f"no rule files in {RULES_DIR}"
    return files


def rule_expressions() -> list[RuleExpr]:
    """Every alerting and recording rule of ops/prometheus/rules/*.yml, in file order."""
    out = []
    for path in rule_files():
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                kind = "alert" if "alert" in rule else "record"
                out.append(RuleExpr(path.name, group["name"], kind, rule[kind], rule["expr"]))
    return out


# ------------------------------------------------------------------ runbooks


def runbook_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every query in the ```promql blocks of the runbooks.

    A block holds one query per line; an indented line continues the query above it.
    """
    out = []
    for path in sorted(RUNBOOKS.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        for block in re.findall(r"```promql\n(.*?)```", text, re.S):
            lines = [ln for ln in block.splitlines() if ln.strip() and ln.strip()[0] != "#"]
            base = min(len(ln) - len(ln.lstrip()) for ln in lines)
            queries: list[str] = []
            for line in lines:
                if queries and len(line) - len(line.lstrip()) > base:
                    queries[-1] += " " + line.strip()  # an indented line continues a query
                else:
                    queries.append(line.strip())
            out.extend((path.name, query) for query in queries)
    return out


# ------------------------------------------------------------------ thresholds

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][\w:]*)
  | (?P<cmp>==|!=|>=|<=|>|<)
  | (?P<matcher>=~|!~|=)
  | (?P<arith>[-+*/%^])
  | (?P<open>[(\[{])
  | (?P<close>[)\]}])
  | (?P<comma>,)
  | (?P<space>\s+)
    """,
    re.X,
)


def _tokens(expr: str) -> list[tuple[str, str, int, int]]:
    """(kind, text, start, end) of every token but whitespace."""
    found = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot tokenize {expr[pos:]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            found.append((kind, match.group(), match.start(), match.end()))
        pos = match.end()
    return found


def strip_thresholds(expr: str) -> str:
    """``expr`` with every filtering comparison against a number removed.

    An alert expression such as ``fleet:group_lag:max > 1000 and deriv(...) > 0`` only
    returns series while it fires; without its thresholds (``fleet:group_lag:max and
    deriv(...)``) it returns every series the alert watches, which is what a live check
    of "does this alert read metrics we emit" needs. Comparisons with ``bool`` are
    values, not filters, and stay. A comparison between two vectors raises
    ``ValueError``: which side to keep is a judgement this helper does not make.
    """
    tokens = _tokens(expr)
    cuts: list[tuple[int, int]] = []
    nesting = 0  # inside {...} (label matchers) or [...] (ranges): no operators there
    i = 0
    while i < len(tokens):
        kind, text, start, _ = tokens[i]
        if kind == "open" and text in "{[":
            nesting += 1
        elif kind == "close" and text in "}]":
            nesting -= 1
        elif kind == "cmp" and nesting == 0:
            j = i + 1
            if j < len(tokens) and tokens[j][1] == "bool":
                i += 1
                continue
            end, j = _scalar_end(tokens, j)
            if end is None:
                raise ValueError(f"comparison between vectors in {expr!r}; strip it by hand")
            cuts.append((start, end))
            i = j
            continue
        i += 1
    out = expr
    for start, end in reversed(cuts):
        out = out[:start] + " " + out[end:]
    return " ".join(out.split())


def _scalar_end(tokens: list[tuple[str, str, int, int]], j: int) -> tuple[int | None, int]:
    """End offset of the number-only expression starting at token ``j`` (None if it is
    not one), and the index of the first token after it."""
    depth = 0
    end: int | None = None
    last = ""
    while j < len(tokens):
        kind, text, _, stop = tokens[j]
        if kind == "open" and text == "(":
            depth += 1
        elif kind == "close" and text == ")" and depth > 0:
            depth -= 1
        elif kind not in ("number", "arith"):
            break
        end, last = stop, kind
        j += 1
    if depth or last not in ("number", "close"):
        return None, j  # a vector (or nothing) follows: not a threshold
    return end, j
