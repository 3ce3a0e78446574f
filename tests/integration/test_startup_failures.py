"""Every start-up failure of ``fleet run`` is one line on stderr and an exit code of its
own (README's table), with no traceback and no wait for the shutdown grace period."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devkit.embedded import free_port
from tests.helpers import empty_database, fleet_cli, fleet_process, poll, process_log
from workers.errors import ExitCode


def _env(valkey_url: str, database_url: str, **extra: str) -> dict[str, str]:
    return {
        "FLEET_VALKEY_URL": valkey_url,
        "FLEET_DATABASE_URL": database_url,
        "FLEET_HTTP_PORT": "0",
        "FLEET_LOG_LEVEL": "warning",
        "FLEET_SHUTDOWN_GRACE_SECONDS": "25",
        **extra,
    }


def _one_line_error(stderr: bytes) -> str:
    text = stderr.decode(errors="replace").strip()
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), text
    return lines[0]


CASES = {
    "usage": ({}, ["ghost-worker"], ExitCode.USAGE, "unknown worker"),
    "setting": ({"FLEET_BATCH_SIZE": "0"}, [], ExitCode.CONFIG, "FLEET_BATCH_SIZE"),
    "valkey": ({"FLEET_VALKEY_URL": "redis://127.0.0.1:1/0"}, [], ExitCode.VALKEY, "Valkey"),
    "postgres": (
        {"FLEET_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
        [],
        ExitCode.POSTGRES,
        "PostgreSQL",
    ),
    "s3": (
        {"FLEET_S3_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_MAX_ATTEMPTS": "1"},
        ["snapshot-retention"],
        ExitCode.S3,
        "S3",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_start_up_failure_is_one_line_and_its_own_exit_code(
    case: str, valkey_url: str, database_url: str
) -> None:
    extra, workers, code, named = CASES[case]
    started = time.monotonic()
    result = fleet_cli(_env(valkey_url, database_url, **extra), "run", *workers, timeout=60)
    took = time.monotonic() - started
    line = _one_line_error(result.stderr)
    assert result.returncode == code, (result.returncode, line)
    assert named in line
    assert took < 25, "waited for the shutdown grace period"


# Every subcommand opens its servers through the same clients() context, so the same
# kinds of failure end the same way: one line naming the server and what to do.
UNREACHABLE_VALKEY = {"FLEET_VALKEY_URL": "redis://127.0.0.1:1/0"}
UNREACHABLE_POSTGRES = {"FLEET_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
UNREACHABLE_S3 = {"FLEET_S3_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_MAX_ATTEMPTS": "1"}
SUBCOMMAND_CASES = {
    "status/valkey": (UNREACHABLE_VALKEY, ["status"], ExitCode.VALKEY, "FLEET_VALKEY_URL"),
    "dlq/valkey": (
        UNREACHABLE_VALKEY,
        ["dlq", "list", "notify:delivery"],
        ExitCode.VALKEY,
        "FLEET_VALKEY_URL",
    ),
    "migrate/postgres": (
        UNREACHABLE_POSTGRES,
        ["migrate", "--check"],
        ExitCode.POSTGRES,
        "FLEET_DATABASE_URL",
    ),
    "tte/postgres": (UNREACHABLE_POSTGRES, ["tte"], ExitCode.POSTGRES, "FLEET_DATABASE_URL"),
    "vex/postgres": (
        UNREACHABLE_POSTGRES,
        ["vex", "trust", "list"],
        ExitCode.POSTGRES,
        "FLEET_DATABASE_URL",
    ),
    "snapshots/s3": (
        UNREACHABLE_S3,
        ["snapshots", "retention"],
        ExitCode.S3,
        "FLEET_S3_ENDPOINT_URL",
    ),
}


@pytest.mark.parametrize("case", sorted(SUBCOMMAND_CASES))
def test_a_subcommand_whose_server_is_unavailable_says_so_in_one_line(
    case: str, valkey_url: str, database_url: str
) -> None:
    extra, args, code, what_to_do = SUBCOMMAND_CASES[case]
    result = fleet_cli(_env(valkey_url, database_url, **extra), *args, timeout=60)
    line = _one_line_error(result.stderr)
    assert result.returncode == code, (result.returncode, line)
    assert what_to_do in line, line


@pytest.mark.parametrize("args", [["tte"], ["snapshots", "list"], ["vex", "trust", "list"]])
async def test_a_subcommand_on_an_unmigrated_database_names_fleet_migrate(
    args: list[str], valkey_url: str, database_url: str
) -> None:
    empty = await empty_database(database_url, "fleet_unmigrated_cli")
    result = fleet_cli(_env(valkey_url, empty), *args, timeout=60)
    line = _one_line_error(result.stderr)
    assert result.returncode == ExitCode.UNMIGRATED, line
    assert "run `fleet migrate` first" in line


async def test_an_unmigrated_database_is_refused_naming_fleet_migrate(
    valkey_url: str, database_url: str
) -> None:
    empty = await empty_database(database_url, "fleet_unmigrated")
    result = fleet_cli(_env(valkey_url, empty), "run", "notify-delivery", timeout=60)
    line = _one_line_error(result.stderr)
    assert result.returncode == ExitCode.UNMIGRATED, line
    assert "fleet migrate" in line and "not migrated" in line


async def test_a_taken_http_port_is_one_line_and_an_exit_within_two_seconds_of_start_up(
    real_redis: Any, valkey_url: str, database_url: str
) -> None:
    port = free_port()
    env = _env(valkey_url, database_url, FLEET_HTTP_PORT=str(port))
    first = fleet_process(env, "run", "notify-delivery")
    try:

        async def serving() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        await poll(serving, timeout=60, what="the first process serving HTTP")
        # Start-up time of the interpreter and imports, measured the same way, is not the
        # fleet's to spend: the bound is two seconds past a bare `fleet --help`.
        baseline = time.monotonic()
        fleet_cli(env, "--help", timeout=60)
        imports = time.monotonic() - baseline
        started = time.monotonic()
        second = fleet_cli(env, "run", "notify-delivery", timeout=60)
        took = time.monotonic() - started
        line = _one_line_error(second.stderr)
        assert second.returncode == ExitCode.HTTP_PORT, line
        assert "FLEET_HTTP_PORT" in line and str(port) in line
        assert took < imports + 2, f"{took:.2f}s to exit ({imports:.2f}s to import)"
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0, process_log(first)


async def test_port_zero_picks_a_free_port_and_reports_it(
    real_redis: Any, valkey_url: str, database_url: str
) -> None:
    env = _env(valkey_url, database_url, FLEET_LOG_LEVEL="info", FLEET_LOG_FORMAT="json")
    proc = fleet_process(env, "run", "notify-delivery")
    try:

        async def logged() -> bool:
            return "fleet.started" in process_log(proc)

        await poll(logged, timeout=60, what="the start-up line")
        line = next(x for x in process_log(proc).splitlines() if "fleet.started" in x)
        port = int(json.loads(line)["http_port"])
        assert port > 0
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/status") as response,
        ):
            status = await response.json()
        assert status["http_port"] == port
        assert status["consumers"][0]["consumer"] == "notify-workers-0"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, process_log(proc)


# The command-line parser's own errors end like every other failure: one line, exit 2,
# pointing at the command's help.
USAGE_CASES = {
    "unknown option": (["status", "--bogus"], "No such option: --bogus", "fleet status --help"),
    "bad option value": (["trim", "--max-len", "-5"], "'--max-len'", "fleet trim --help"),
    "unknown command": (["nope"], "No such command 'nope'", "fleet --help"),
    "missing argument": (["dlq", "list"], "Missing argument", "fleet dlq list --help"),
    "missing file": (["publish", "notify:delivery", "/nonexistent/events.jsonl"], "no such", ""),
}


@pytest.mark.parametrize("case", sorted(USAGE_CASES))
def test_a_usage_error_is_one_line_and_exit_code_2(case: str) -> None:
    args, named, help_hint = USAGE_CASES[case]
    result = fleet_cli({}, *args, timeout=60)
    line = _one_line_error(result.stderr)
    assert result.returncode == ExitCode.USAGE, (result.returncode, line)
    assert named in line and help_hint in line, line


def test_a_failed_check_is_one_line_and_exit_code_1(tmp_path: Path) -> None:
    """``fleet contracts export --check`` against files that differ from the code."""
    assert fleet_cli({}, "contracts", "export", "--dir", str(tmp_path)).returncode == 0
    stale = tmp_path / "notification-sent.schema.json"
    stale.write_text("{}", encoding="utf-8")
    result = fleet_cli({}, "contracts", "export", "--dir", str(tmp_path), "--check")
    line = _one_line_error(result.stderr)
    assert result.returncode == ExitCode.FAILED, (result.returncode, line)
    assert stale.name in line


def test_help_is_success() -> None:
    result = fleet_cli({}, "--help")
    assert result.returncode == ExitCode.OK and b"Usage" in result.stdout
