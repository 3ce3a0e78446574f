"""A TCP proxy the fault tests put between the fleet and a server, and drive.

It forwards bytes both ways and, on the test's word, adds latency, throttles bandwidth,
resets every open connection (RST, mid-command), or black-holes traffic: no byte passes
and nothing is closed, as in a partition or with a peer that vanished. ``heal()`` lets
new connections through while the black-holed ones stay silent, as half-open TCP
sessions do after a network heals. Traffic goes to loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field

_CHUNK = 65536


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    silent: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class FaultProxy:
    """Listens on 127.0.0.1 and forwards to ``target`` (``(host, port)`` or a Unix
    socket path)."""

    def __init__(self, target: tuple[str, int] | str) -> None:
        self.target = target
        self.latency = 0.0  # seconds added to every chunk, each way
        self.rate: float | None = None  # bytes per second, each way
        self._blackholed = False
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            self._close(link)

    def blackhole(self) -> None:
        """From now on no byte passes, on open connections and on new ones."""
        self._blackholed = True
        for link in self._links:
            link.silent = True

    def heal(self) -> None:
        """New connections pass again; those black-holed stay silent (half-open)."""
        self._blackholed = False

    def reset(self) -> int:
        """Reset every open connection (RST to the client); how many there were."""
        links = list(self._links)
        for link in links:
            sock = link.client.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._close(link)
        return len(links)

    @property
    def open_connections(self) -> int:
        return len(self._links)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(client=writer, silent=self._blackholed)
        self._links.add(link)
        if link.silent:
            # Accepted, then nothing: the bytes are read and dropped.
            link.tasks.append(asyncio.create_task(self._swallow(reader)))
            return
        try:
            if isinstance(self.target, str):
                up_reader, up_writer = await asyncio.open_unix_connection(self.target)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._close(link)
            return
        link.upstream = up_writer
        link.tasks += [
            asyncio.create_task(self._pump(link, reader, up_writer)),
            asyncio.create_task(self._pump(link, up_reader, writer)),
        ]

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while await reader.read(_CHUNK):
                pass

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                if link.silent:
                    continue
                if self.latency:
                    await asyncio.sleep(self.latency)  # the latency being injected
                if link.silent:
                    continue
                writer.write(data)
                await writer.drain()
                if self.rate:
                    await asyncio.sleep(len(data) / self.rate)  # the bandwidth being injected
        except (OSError, asyncio.CancelledError):
            pass
        if not link.silent:
            self._close(link)

    def _close(self, link: _Link) -> None:
        self._links.discard(link)
        for writer in (link.client, link.upstream):
            if writer is not None:
                with contextlib.suppress(OSError, RuntimeError):
                    writer.close()
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current:
                task.cancel()
