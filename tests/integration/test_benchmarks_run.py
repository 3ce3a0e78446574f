"""The benchmarks under tests/perf/ still run end to end: each is started on a tiny
workload and must finish and print its figures. Nothing about the figures is asserted
(they are measurements, printed for people; see README "Measured")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PERF = Path(__file__).resolve().parents[1] / "perf"


@pytest.mark.parametrize(
    ("script", "args", "printed"),
    [
        ("bench_runtime.py", ["--events", "2000", "--rounds", "1"], ["ratio b/a", "ratio c/a"]),
        (
            "bench_runtime.py",
            ["--events", "2000", "--rounds", "1", "--tracing"],
            ["ratio b/a", "ratio c/a", "spans exported"],
        ),
        ("bench_scan_metrics.py", ["--scans", "500", "--rounds", "1"], ["ratio c/a"]),
        ("bench_vex.py", ["--purls", "200"], ["pairs/s", "round trips"]),
        ("bench_exports.py", ["--rows", "500", "--rounds", "1"], ["ratio b/a", "ratio d/a"]),
        (
            "bench_cluster.py",
            ["--events", "1000", "--rounds", "1", "--replicas", "0"],
            ["ratio cluster/single", "valkey cpu per event"],
        ),
    ],
    ids=["runtime", "runtime-traced", "scan-metrics", "vex", "exports", "cluster"],
)
def test_benchmark_runs_and_prints_its_figures(
    script: str, args: list[str], printed: list[str]
) -> None:
    result = subprocess.run(
        [sys.executable, str(PERF / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for text in printed:
        assert text in result.stdout, result.stdout[-2000:]
