"""The ops HTTP endpoint every process serves (aiohttp).

``/metrics`` (Prometheus text), ``/health/liveness`` (the event loop answers),
``/health/readiness`` (Valkey, PostgreSQL and, where used, S3 reachable) and
``/status`` (version, commit, workers, consumer names, settings without
secrets). Workers may add routes (the snapshot API) through ``extra_routes``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import workers
from workers.errors import ConfigError, ExitCode
from workers.kernel.worker import Resources

Check = Callable[[], Awaitable[None]]


def _commit() -> str:
    env = os.environ.get("FLEET_COMMIT")
    if env:
        return env
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=2,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def bind(host: str, port: int) -> socket.socket:
    """Bind the ops HTTP port before anything else starts, so a taken port is one line
    and an immediate exit (:attr:`ExitCode.HTTP_PORT`), not a failure after start-up.
    Port 0 lets the kernel choose a free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot serve HTTP on {host}:{port} (FLEET_HTTP_PORT={port}): {exc.strerror or exc}; "
            "choose another FLEET_HTTP_PORT, or 0 for any free port",
            ExitCode.HTTP_PORT,
        ) from None
    sock.setblocking(False)
    return sock


class OpsServer:
    def __init__(
        self,
        resources: Resources,
        *,
        status: Callable[[], dict[str, Any]],
        checks: dict[str, Check],
        extra_routes: Iterable[web.RouteDef] = (),
    ) -> None:
        self.resources = resources
        self._status = status
        self._checks = checks
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/metrics", self.metrics),
                web.get("/health/liveness", self.liveness),
                web.get("/health/readiness", self.readiness),
                web.get("/status", self.status),
                *extra_routes,
            ]
        )
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.commit = _commit()

    async def start(self, host: str, port: int, sock: socket.socket | None = None) -> int:
        """Serve on ``sock`` (bound beforehand with :func:`bind`) or on ``host:port``;
        returns the port (the one the kernel chose for port 0)."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site: web.BaseSite
        if sock is not None:
            site = web.SockSite(self._runner, sock)
        else:
            site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only through the server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def liveness(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readiness(self, request: web.Request) -> web.Response:
        results: dict[str, str] = {}
        ok = True
        for name, check in self._checks.items():
            try:
                await asyncio.wait_for(check(), timeout=3)
                results[name] = "ok"
            except Exception as exc:  # noqa: BLE001 - any failure makes the dependency unready
                ok = False
                results[name] = f"unavailable: {type(exc).__name__}"
        return web.json_response(
            {"status": "ok" if ok else "unavailable", "checks": results}, status=200 if ok else 503
        )

    async def status(self, request: web.Request) -> web.Response:
        body = {
            "version": workers.__version__,
            "commit": self.commit,
            **self._status(),
            "settings": self.resources.settings.public(),
        }
        return web.json_response(body)
