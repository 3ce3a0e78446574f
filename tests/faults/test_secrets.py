"""Secrets hygiene: passwords in URLs and the API token never appear in what we print.

A real worker process runs with debug logging against password-protected, TLS-only
Valkey and PostgreSQL (``tests/tls_servers.py``); everything it and the CLI write,
and every ops HTTP body, is captured and searched for each secret. Error paths are
driven on purpose (dead letters, wrong passwords, malformed URLs), since error
messages are where connection strings usually leak.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from contracts.wire import encode_event
from devkit import workload
from tests.helpers import fleet_cli, fleet_process, poll, process_log
from tests.tls_servers import TlsStack, free_port, tls_stack
from workers import streams

STREAM = "notify:delivery"
EVENTS = 200
API_TOKEN = f"tok-{secrets.token_hex(16)}"
WRONG_PASSWORD = f"wrongpw-{secrets.token_hex(8)}"


@dataclass
class Transcript:
    """Everything the processes and endpoints showed, by where it came from."""

    texts: list[tuple[str, str]] = field(default_factory=list)

    def add(self, source: str, text: str | bytes) -> str:
        shown = text.decode(errors="replace") if isinstance(text, bytes) else text
        self.texts.append((source, shown))
        return shown

    def add_run(self, source: str, result: subprocess.CompletedProcess[bytes]) -> str:
        self.add(f"{source} (stdout)", result.stdout)
        return self.add(f"{source} (stderr)", result.stderr)

    def assert_free_of(self, *secret_values: str) -> None:
        leaks = [
            f"{source} shows secret #{n} ({value[:4]}…): {_around(text, value)!r}"
            for n, value in enumerate(secret_values, start=1)
            for source, text in self.texts
            if value in text
        ]
        assert not leaks, "\n".join(leaks)


def _around(text: str, value: str) -> str:
    at = text.index(value)
    return text[max(0, at - 80) : at + len(value) + 20]


@pytest.fixture(scope="module")
def stack() -> Iterator[TlsStack]:
    with tls_stack() as servers:
        yield servers


def _secrets_of(stack: TlsStack) -> tuple[str, ...]:
    return (
        stack.valkey.password,
        stack.valkey.default_password,
        stack.postgres.password,
        API_TOKEN,
        WRONG_PASSWORD,
    )


def _env(stack: TlsStack, **overrides: str) -> dict[str, str]:
    return {
        "FLEET_VALKEY_URL": stack.valkey_url(),
        "FLEET_DATABASE_URL": stack.database_url(),
        "FLEET_API_TOKEN": API_TOKEN,
        "FLEET_LOG_LEVEL": "debug",
        "FLEET_LOG_FORMAT": "json",
        "FLEET_HTTP_HOST": "127.0.0.1",
        "FLEET_HTTP_PORT": "0",
        **overrides,
    }


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


async def test_a_running_worker_shows_no_secret_anywhere(stack: TlsStack) -> None:
    seen = Transcript()
    port = free_port()
    env = _env(stack, FLEET_HTTP_PORT=str(port), FLEET_CONSUMER_NAME="secrets-worker")

    migrated = fleet_cli(env, "migrate", timeout=120)
    seen.add_run("fleet migrate", migrated)
    assert migrated.returncode == 0, migrated.stderr
    lines = b"".join(encode_event(e) + b"\n" for e in workload.notification_events(EVENTS, seed=83))
    published = fleet_cli(env, "publish", STREAM, "-", stdin=lines)
    seen.add_run("fleet publish", published)
    assert published.returncode == 0, published.stderr

    valkey = aioredis.Redis.from_url(stack.valkey_url())
    pg = await asyncpg.connect(stack.database_url())
    try:
        # Error paths: one entry the group must dead-letter, one it ignores.
        await valkey.xadd(STREAM, {"type": "notification.sent", "data": b'{"version": 2}'})
        await valkey.xadd(STREAM, {"type": "someone.elses", "data": b"{}"})
        proc = fleet_process(env, "run", "notify-delivery")
        try:

            async def settled() -> bool:
                assert proc.poll() is None, process_log(proc)
                rows = await pg.fetchval("SELECT count(*) FROM notify.delivery_log")
                statuses = await streams.group_statuses(valkey, STREAM)
                dead = int(await valkey.xlen(streams.dlq_name(STREAM)))
                return rows == EVENTS and dead == 1 and all(s.pending == 0 for s in statuses)

            await poll(settled, timeout=90, what="the worker to settle")
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as session:
                bodies = {
                    path: await _get(session, base + path)
                    for path in (
                        "/status",
                        "/metrics",
                        "/health/readiness",
                        "/health/liveness",
                        "/no-such-page",
                    )
                }
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
    finally:
        await valkey.aclose()
        await pg.close()
    for path, (status, body) in bodies.items():
        seen.add(f"GET {path} ({status})", body)
    seen.add_run("fleet status", fleet_cli(env, "status", "--json"))
    seen.add_run("fleet dlq list", fleet_cli(env, "dlq", "list", STREAM))
    log = seen.add("worker log", process_log(proc))
    assert code == 0, log

    # The transcript must hold what could leak, or finding nothing would prove nothing.
    assert bodies["/status"][0] == 200 and bodies["/health/readiness"][0] == 200
    assert '"level": "debug"' in log and "event.dead_lettered" in log, log
    assert "fleet_events_total" in bodies["/metrics"][1]
    shown: dict[str, Any] = json.loads(bodies["/status"][1])["settings"]
    assert shown["api_token"] == "***"
    assert shown["valkey_url"].startswith(f"rediss://{stack.valkey.user}:***@localhost:")
    assert shown["database_url"].startswith(f"postgresql://{stack.postgres.user}:***@localhost:")

    seen.assert_free_of(*_secrets_of(stack))


# ------------------------------------------------------------------ errors


def _valkey(stack: TlsStack, **kwargs: Any) -> dict[str, str]:
    return {"FLEET_VALKEY_URL": stack.valkey_url(**kwargs)}


def _database(stack: TlsStack, **kwargs: Any) -> dict[str, str]:
    return {"FLEET_DATABASE_URL": stack.database_url(**kwargs)}


def _raw_valkey(stack: TlsStack, credentials: str, port: str | None = None) -> dict[str, str]:
    """A URL typed by hand: the password not percent-encoded."""
    where = f"localhost:{port or stack.valkey.port}"
    return {"FLEET_VALKEY_URL": f"rediss://{credentials}@{where}/0?ssl_ca_certs={stack.certs.ca}"}


def _raw_database(stack: TlsStack, credentials: str, port: str | None = None) -> dict[str, str]:
    where = f"localhost:{port or stack.postgres.port}"
    return {
        "FLEET_DATABASE_URL": f"postgresql://{credentials}@{where}/fleet"
        f"?sslmode=verify-full&sslrootcert={stack.certs.ca}"
    }


def case(name: str, make_env: Any, command: str, expected: str, marks: Any = ()) -> Any:
    """One error case: ``make_env(stack)`` on top of good settings, the command, and a
    pattern its single ``error:`` line must match."""
    return pytest.param(make_env, command, expected, marks=marks, id=name)


ERROR_CASES = [
    case(
        "valkey-wrong-password", lambda s: _valkey(s, password=WRONG_PASSWORD), "status", "Valkey"
    ),
    case(
        "valkey-wrong-password-run",
        lambda s: _valkey(s, password=WRONG_PASSWORD),
        "run notify-delivery",
        "Valkey",
    ),
    case(
        "valkey-unknown-user",
        lambda s: _valkey(s, user="nobody", password=WRONG_PASSWORD),
        "status",
        "Valkey",
    ),
    case(
        "valkey-password-percent-encoded",
        lambda s: _valkey(s, password=f"p@ss/w:rd#{WRONG_PASSWORD}"),
        "status",
        "Valkey",
    ),
    case(
        "postgres-wrong-password",
        lambda s: _database(s, password=WRONG_PASSWORD),
        "migrate",
        "password authentication failed",
    ),
    case(
        "postgres-wrong-password-run",
        lambda s: _database(s, password=WRONG_PASSWORD),
        "run notify-delivery",
        "password authentication failed",
    ),
    case(
        "valkey-bad-scheme",
        lambda s: {"FLEET_VALKEY_URL": f"https://fleet:{WRONG_PASSWORD}@localhost:1/0"},
        "status",
        "FLEET_VALKEY_URL",
    ),
    case(
        "postgres-bad-scheme",
        lambda s: {"FLEET_DATABASE_URL": f"mysql://fleet:{WRONG_PASSWORD}@localhost/fleet"},
        "migrate",
        "FLEET_DATABASE_URL",
    ),
    case(
        "valkey-bad-port",
        lambda s: _raw_valkey(s, f"fleet:{WRONG_PASSWORD}", port="notaport"),
        "status",
        "FLEET_VALKEY_URL",
    ),
    case(
        "valkey-bad-tls-parameter",
        lambda s: {"FLEET_VALKEY_URL": s.valkey_url(ca=None) + "?ssl_cert_reqs=sometimes"},
        "status",
        "Valkey",
    ),
    case(
        "postgres-bad-sslmode",
        lambda s: _database(s, sslmode="sometimes"),
        "migrate",
        "sslmode",
    ),
    case(
        "postgres-unparseable-url",
        lambda s: {"FLEET_DATABASE_URL": f"postgresql://fleet:{WRONG_PASSWORD}@[::1/fleet"},
        "migrate",
        "FLEET_DATABASE_URL|PostgreSQL",
    ),
    case(
        "another-setting-invalid",
        lambda s: {"FLEET_BATCH_SIZE": "lots"},
        "run notify-delivery",
        "FLEET_BATCH_SIZE",
    ),
    case(
        "postgres-bad-port",
        lambda s: _raw_database(s, f"fleet:{WRONG_PASSWORD}", port="notaport"),
        "migrate",
        "FLEET_DATABASE_URL|PostgreSQL",
    ),
    case(
        "valkey-password-with-slash",
        lambda s: _raw_valkey(s, f"fleet:ab/{WRONG_PASSWORD}"),
        "status",
        "FLEET_VALKEY_URL|Valkey",
    ),
    case(
        "valkey-password-with-hash",
        lambda s: _raw_valkey(s, f"fleet:ab#{WRONG_PASSWORD}"),
        "run notify-delivery",
        "FLEET_VALKEY_URL|Valkey",
    ),
    case(
        "valkey-password-with-slash-after-digits",
        lambda s: _raw_valkey(s, f"fleet:{s.valkey.port}/{WRONG_PASSWORD}"),
        "status",
        "FLEET_VALKEY_URL|Valkey",
    ),
    case(
        "postgres-password-with-slash",
        lambda s: _raw_database(s, f"fleet:ab/{WRONG_PASSWORD}"),
        "migrate",
        "FLEET_DATABASE_URL|PostgreSQL",
    ),
]


@pytest.mark.parametrize(("make_env", "command", "expected"), ERROR_CASES)
def test_error_messages_show_no_secret(
    stack: TlsStack, make_env: Any, command: str, expected: str
) -> None:
    seen = Transcript()
    result = fleet_cli(_env(stack, **make_env(stack)), *command.split(), timeout=60)
    stderr = seen.add_run(f"fleet {command}", result)

    seen.assert_free_of(*_secrets_of(stack))
    assert result.returncode != 0, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(expected, errors[0]), stderr
