"""TCP settings that make a silent peer noticed: shared by the Valkey and PostgreSQL
clients.

A partition, a vanished host or a NAT that dropped an idle flow sends nothing: no data,
no reset. Without help, a connection waiting for a reply waits for ever. Keepalive
probes after ``KEEPALIVE_IDLE`` seconds of silence (``KEEPALIVE_COUNT`` probes,
``KEEPALIVE_INTERVAL`` apart) and ``TCP_USER_TIMEOUT`` for data sent but never
acknowledged close such a connection within about ``SILENT_PEER_SECONDS``; the client
then opens a new one (counted in ``fleet_connection_replaced_total{server}``).
"""

from __future__ import annotations

import socket
from typing import Any

KEEPALIVE_IDLE = 5
KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 3
SILENT_PEER_SECONDS = KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT


def tcp_options() -> dict[int, int]:
    """``IPPROTO_TCP`` options by number, those this platform has."""
    wanted = {
        "TCP_KEEPIDLE": KEEPALIVE_IDLE,
        "TCP_KEEPINTVL": KEEPALIVE_INTERVAL,
        "TCP_KEEPCNT": KEEPALIVE_COUNT,
        "TCP_USER_TIMEOUT": SILENT_PEER_SECONDS * 1000,
    }
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


def tune(sock: Any) -> None:
    """Keepalive and the user timeout on a connected TCP socket; other sockets (Unix)
    are left as they are."""
    if sock is None or getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in tcp_options().items():
        sock.setsockopt(socket.IPPROTO_TCP, option, value)
