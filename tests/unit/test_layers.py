"""The house's layers, lowest first: contracts <- kernel <- worker packages <- cli/app <-
dev kit. A module imports from its own layer or lower ones, never upward (lazy imports
inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("contracts", ("contracts",)),
    (
        "kernel",
        (
            "workers.kernel",
            "workers.streams",
            "workers.db",
            "workers.settings",
            "workers.metrics",
            "workers.errors",
            "workers.logs",
            "workers.s3",
            "workers.http",
            "workers.netio",
            "workers",  # the package itself: `from workers import metrics` names a module
        ),
    ),
    (
        "worker packages",
        (
            "workers.notify_delivery",
            "workers.scan_metrics",
            "workers.vex_consensus",
            "workers.snapshot_retention",
        ),
    ),
    ("cli/app", ("workers.app", "workers.cli", "workers.__main__", "workers.top")),
    ("dev kit", ("devkit",)),
]


_CLI_HELPERS = "the CLI's shared helpers (errors, output, settings) live in workers.cli"
# Known upward imports still to be untangled, each with its reason. The kernel and the
# contracts have none.
KNOWN_UPWARD: dict[tuple[str, str], str] = {
    ("workers.cli", "devkit.demo"): "`fleet demo` starts the dev kit",
    ("workers.scan_metrics.cli", "workers.cli"): "the CLI's shared helpers live in workers.cli",
    ("workers.vex_consensus.cli", "workers.cli"): "the CLI's shared helpers live in workers.cli",
    (
        "workers.snapshot_retention.cli",
        "workers.cli",
    ): "the CLI's shared helpers live in workers.cli",
}


def layer_of(module: str) -> int:
    """The layer of a dotted module name: the longest matching prefix decides."""
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "workers":
                found.extend(f"workers.{alias.name}" for alias in node.names)
            else:
                found.append(node.module)
    return [name for name in found if name.split(".")[0] in ("contracts", "workers", "devkit")]


SOURCES = sorted(
    [
        *ROOT.joinpath("contracts").rglob("*.py"),
        *ROOT.joinpath("workers").rglob("*.py"),
        *ROOT.joinpath("devkit").rglob("*.py"),
    ]
)


def test_every_module_has_a_layer() -> None:
    unplaced = [_module_name(p) for p in SOURCES if layer_of(_module_name(p)) < 0]
    assert not unplaced


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_imports_upward(path: Path) -> None:
    module = _module_name(path)
    here = layer_of(module)
    upward = [
        f"{name} ({LAYERS[layer_of(name)][0]})"
        for name in _imports(path)
        if layer_of(name) > here and (module, name) not in KNOWN_UPWARD
    ]
    assert not upward, f"{module} ({LAYERS[here][0]}) imports upward: {upward}"


def test_the_kernel_and_the_contracts_have_no_exceptions() -> None:
    assert all(layer_of(module) >= 2 for module, _ in KNOWN_UPWARD)


def test_the_layers_are_in_order() -> None:
    assert layer_of("workers.kernel.consumer") < layer_of("workers.vex_consensus.worker")
    assert layer_of("workers.vex_consensus.worker") < layer_of("workers.app")
    assert layer_of("workers.app") < layer_of("devkit.demo")
    assert layer_of("workers") == layer_of("workers.streams")
