"""`fleet demo` end to end: embedded servers, every worker, a workload, a summary."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def test_demo_reaches_its_summary_and_stops_its_servers() -> None:
    with tempfile.TemporaryDirectory(prefix="streamfleet-demo-") as folder:
        state = Path(folder) / "state"
        Path(folder).chmod(0o755)  # PostgreSQL runs unprivileged when tests run as root
        result = subprocess.run(
            [sys.executable, "-m", "workers", "demo", "--state-dir", str(state), "--scale", "0.2"],
            capture_output=True,
            timeout=180,
            check=False,
            env={**os.environ, "COLUMNS": "200"},
        )
        out = result.stdout.decode()
        assert result.returncode == 0, result.stderr.decode()[-3000:]
        assert "consumed" in out
        for table in ("notify.delivery_log", "vex.consensus", "feed snapshots"):
            assert table in out, out
        assert "TTE p50" in out
        assert "'ok': True" in out  # the audit chain verifies
        assert "servers stopped" in out
        assert "Traceback" not in result.stderr.decode()
