"""`fleet demo` end to end: embedded servers, every worker, a workload, a summary."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from devkit.embedded import free_port


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
        # A signed OpenVEX import verified against the key registered for its issuer,
        # a tampered copy refused and counted once by the running worker.
        assert re.search(r"signed vex: ed25519 key [0-9a-f]{16}… registered for", out), out
        assert "attestation verified and accepted, 3 statement(s) stored with key id" in out
        assert "tampered copy refused (bad_signature)" in out
        assert 'fleet_vex_dsse_verification_failures_total{reason="bad_signature"} +1 ' in out
        # An export by the export worker, stored in S3 and verified with the public key.
        made = re.search(
            r"export: vex bundle \(OpenVEX\) by the export worker .*s3://\S+/manifest\.json, "
            r"1 file\(s\), (\d+) bytes, manifest signed by key",
            out,
        )
        assert made and int(made.group(1)) > 0, out
        verified = re.search(
            r"export: verified from S3: DSSE signature ok \(key [0-9a-f]{16}…\), "
            r"1 file hash\(es\) ok; [1-9]\d* OpenVEX statement\(s\)",
            out,
        )
        assert verified, out
        assert "servers stopped" in out
        assert "Traceback" not in result.stderr.decode()


def _events_total(url: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("fleet_events_total{")
    )


def _ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bool(response.status == 200)


def _until(predicate: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(OSError, ValueError):
            value = predicate()
            if value:
                return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)  # polling interval of the deadline loop


def test_demo_serve_keeps_the_fleet_working_until_ctrl_c() -> None:
    with tempfile.TemporaryDirectory(prefix="streamfleet-serve-") as folder:
        Path(folder).chmod(0o755)  # PostgreSQL runs unprivileged when tests run as root
        port = free_port()
        log = Path(folder) / "serve.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "workers", "demo", "--serve",
                    "--state-dir", str(Path(folder) / "state"), "--port", str(port),
                    "--rate", "50",
                ],
                stdout=sink, stderr=sink, env={**os.environ, "COLUMNS": "200"},
                start_new_session=True,  # a process group of its own, as a terminal gives
            )  # fmt: skip
        try:
            metrics = f"http://127.0.0.1:{port}/metrics"
            first = _until(lambda: _events_total(metrics), 120, "events handled")
            _until(lambda: _events_total(metrics) > first, 30, "the counters to move")
            text = log.read_text(errors="replace")
            assert f"{metrics}" in text and f"http://127.0.0.1:{port}/status" in text
            assert "fleet top" in text and "FLEET_VALKEY_URL=redis://" in text
            if shutil.which("prometheus"):
                url = re.search(r"prometheus\s+(http://127\.0\.0\.1:\d+)", text)
                assert url, text
                ready = f"{url.group(1)}/-/ready"
                _until(lambda: _ok(ready), 30, ready)
            # Ctrl-C: SIGINT to the whole process group, embedded servers included.
            os.killpg(proc.pid, signal.SIGINT)
            code = proc.wait(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = log.read_text(errors="replace")
        assert code == 0, text[-3000:]
        assert "servers stopped" in text and "Traceback" not in text
        # Valkey ignored the Ctrl-C meant for the fleet: the drain never lost it.
        assert "valkey.unavailable" not in text
