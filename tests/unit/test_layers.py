"""The house's layers, lowest first: contracts <- kernel <- worker packages <- cli/app <-
dev kit (docs/architecture.md). import-linter checks them (`lint-imports`, contracts in
pyproject.toml, with a second contract forbidding import cycles between sibling
modules); these tests prove that every module is placed in a layer, that the check passes
on the tree, and that it fails on a deliberate upward or sideways import and on a cycle."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("contracts", "workers", "devkit")
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
    "importlinter"
]
[LAYERS_CONTRACT] = [c for c in CONFIG["contracts"] if c["id"] == "layers"]
# Highest layer first, as import-linter lists them; each layer names its modules.
LAYERS: list[list[str]] = [
    [name.strip() for name in layer.replace("|", ":").split(":")]
    for layer in LAYERS_CONTRACT["layers"]
]


def layer_of(module: str) -> int:
    """The layer's index, lowest (contracts) = 0; -1 when the module is in none. The
    longest matching prefix decides."""
    best, best_len = -1, -1
    for index, names in enumerate(reversed(LAYERS)):
        for prefix in names:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


SOURCES = sorted(p for package in PACKAGES for p in ROOT.joinpath(package).rglob("*.py"))


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the tree under ``root``, with the project's contracts."""
    code = (
        "import sys; from importlinter.cli import lint_imports; "
        f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, "
        "no_cache=True, no_logo=True))"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_tree(target: Path) -> None:
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__")
        )


def test_every_module_has_a_layer() -> None:
    """A module outside every layer would escape the check: place it in pyproject.toml."""
    unplaced = [
        _module_name(p)
        for p in SOURCES
        if _module_name(p) not in PACKAGES and layer_of(_module_name(p)) < 0
    ]
    assert not unplaced


def test_the_layers_are_in_order() -> None:
    assert layer_of("contracts.wire") < layer_of("workers.kernel.consumer")
    assert layer_of("workers.kernel.consumer") < layer_of("workers.vex_consensus.worker")
    assert layer_of("workers.shell") < layer_of("workers.vex_consensus.cli")
    assert layer_of("workers.vex_consensus.worker") < layer_of("workers.app")
    assert layer_of("workers.cli.publish") == layer_of("workers.app")
    assert layer_of("workers.app") < layer_of("devkit.demo")


def test_the_tree_keeps_the_import_contracts() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "imports"),
    [
        ("workers/kernel/probe_upward.py", "from workers.app import WORKERS"),
        ("workers/kernel/probe_worker.py", "from workers.notify_delivery import worker"),
        ("workers/kernel/probe_devkit.py", "import devkit.workload"),
        ("workers/scan_metrics/probe_cli.py", "from workers.cli import options"),
        ("workers/scan_metrics/probe_devkit.py", "from devkit import embedded"),
        ("workers/scan_metrics/probe_sideways.py", "from workers.vex_consensus import store"),
        ("workers/cli/probe_devkit.py", "import devkit.demo"),
        ("contracts/probe_upward.py", "import workers.settings"),
    ],
    ids=[
        "kernel->app",
        "kernel->worker",
        "kernel->devkit",
        "worker->cli",
        "worker->devkit",
        "worker->worker",
        "cli->devkit",
        "contracts->kernel",
    ],
)
def test_an_upward_or_sideways_import_breaks_the_check(
    tmp_path: Path, module: str, imports: str
) -> None:
    """The same check on a copy of the tree with one deliberate bad import fails, and
    names the importing module."""
    copy_tree(tmp_path)
    probe = tmp_path / module
    probe.write_text(f'"""A deliberate layering violation."""\n\n{imports}\n', encoding="utf-8")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    assert _module_name(probe, tmp_path) in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("module", "imports", "package"),
    [
        # Both in the kernel layer: the layers contract allows each import alone.
        ("workers/streams.py", "from workers import clients", "workers"),
        ("workers/kernel/triage.py", "from workers.kernel import consumer", "workers.kernel"),
        ("contracts/base.py", "from contracts import registry", "contracts"),
    ],
    ids=["streams<->clients", "triage<->consumer", "base<->registry"],
)
def test_an_import_cycle_breaks_the_check(
    tmp_path: Path, module: str, imports: str, package: str
) -> None:
    """A module that imports, at its end, one that already imports it (directly or
    through others) makes a cycle within one layer: the layers contract stays kept, the
    acyclic one fails and names the package holding the cycle."""
    copy_tree(tmp_path)
    path = tmp_path / module
    source = path.read_text(encoding="utf-8")
    path.write_text(f"{source}\n{imports}  # noqa: E402\n", encoding="utf-8")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{LAYERS_CONTRACT['name']} KEPT" in result.stdout, result.stdout
    assert f"No cycles are allowed in {package}." in result.stdout, result.stdout
