"""Snapshot governance is split by capability (docs/snapshots.md): small modules, the pure
ones free of I/O, the HTTP API above the service and never imported by it. import-linter
enforces the last two (contracts ``snapshot-capabilities`` and ``snapshot-shell`` in
pyproject.toml); these tests prove each module is classified and the checks bite."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.unit.test_layers import CONFIG, PACKAGES, ROOT, lint_imports

PACKAGE = ROOT / "workers" / "snapshot_retention"
[CAPABILITIES] = [c for c in CONFIG["contracts"] if c["id"] == "snapshot-capabilities"]
[SHELL] = [c for c in CONFIG["contracts"] if c["id"] == "snapshot-shell"]
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def _short(names: list[str]) -> set[str]:
    return {name.removeprefix("workers.snapshot_retention.") for name in names}


def test_no_module_of_the_package_or_of_scan_metrics_is_over_500_lines() -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
        for folder in (PACKAGE, ROOT / "workers" / "scan_metrics")
        for p in folder.glob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > 500} == {}


def test_every_module_is_either_pure_or_part_of_the_shell() -> None:
    pure = _short(CAPABILITIES["source_modules"])
    shell = {name.strip() for layer in SHELL["layers"] for name in layer.split("|")}
    assert pure.isdisjoint(shell)
    assert shell <= _short(CAPABILITIES["forbidden_modules"])
    assert set(MODULES) == pure | shell


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("freshness.py", "import asyncpg"),
        ("audit.py", "from workers.snapshot_retention import store"),
        ("service.py", "from workers.snapshot_retention import api"),
    ],
    ids=["pure->asyncpg", "pure->store", "service->api"],
)
def test_an_io_import_in_a_pure_module_or_a_cycle_breaks_the_check(
    tmp_path: Path, module: str, line: str
) -> None:
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    target = tmp_path / "workers" / "snapshot_retention" / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n{line}  # noqa\n", "utf-8")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    assert f"workers.snapshot_retention.{module.removesuffix('.py')}" in result.stdout
