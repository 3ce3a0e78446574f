"""The kernel's shape, as promised in docs/kernel.md: effectively-once written in one
place, one worker contract without code-path flags, parts small enough to read."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKERS = ROOT / "workers"
KERNEL = WORKERS / "kernel"


def _python_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def test_inbox_sql_is_written_in_one_module() -> None:
    writes = re.compile(r"(INSERT INTO|DELETE FROM|FROM|UPDATE)\s+fleet\.inbox", re.IGNORECASE)
    found = [p.relative_to(ROOT) for p in _python_files(WORKERS) if writes.search(p.read_text())]
    assert found == [Path("workers/kernel/inbox.py")]


def test_no_worker_chooses_a_code_path_by_flag() -> None:
    flags = re.compile(r"\b(uses_database|writes_inbox|apply_with_inbox)\b")
    found = [p.relative_to(ROOT) for p in _python_files(WORKERS) if flags.search(p.read_text())]
    assert found == []


def test_no_kernel_class_is_longer_than_250_lines() -> None:
    long = {}
    for path in _python_files(KERNEL):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 250:
                    long[f"{path.name}:{node.name}"] = length
    assert long == {}


def test_workers_keep_no_batch_state_between_apply_and_after_commit() -> None:
    # A value apply computes reaches after_commit as its result, never through self.
    for path in _python_files(WORKERS):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.AsyncFunctionDef) and node.name == "apply":
                assigned = [
                    target.attr
                    for stmt in ast.walk(node)
                    if isinstance(stmt, ast.Assign)
                    for target in stmt.targets
                    if isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "self"
                ]
                assert assigned == [], f"{path.name}: apply stores {assigned} on the worker"
