"""A loopback TCP gate: a port that refuses connections until it is opened, then forwards each
one to a target, byte for byte.

The matrix points an agent's cloud URL at a gate to order what a device may meet after a power
cut: the cloud unreachable while the unit comes up, so that the SMs reconnect to the CM before
its cloud link does (a spoiled store's instances are then adopted from what the nodes report).
It forwards bytes only; TLS, WebSocket and everything else pass through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from types import TracebackType

from ..logs import get_logger

CHUNK = 64 * 1024
STOP_JOIN_S = 5.0

log = get_logger("powercut.gate")


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TcpGate:
    """Forwards 127.0.0.1:`port` to `target_host`:`target_port` once `open()` was called.

    Until then nothing listens on the port, so a client's connection is refused and it dials
    again with its own backoff. `close()` (or leaving the `with` block) stops listening and
    closes the connections in flight.
    """

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-gate")
        self._thread.daemon = True
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    def open(self) -> None:
        """Start listening and forwarding (idempotent)."""
        asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(STOP_JOIN_S)
        log.info("gate.opened", port=self.port, target=f"{self.target[0]}:{self.target[1]}")

    def close(self) -> None:
        """Stop listening, close every forwarded connection, and end the gate's thread."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(TimeoutError):
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(STOP_JOIN_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STOP_JOIN_S)
        self._loop.close()

    def __enter__(self) -> TcpGate:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def _open(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError as exc:
            log.warning("gate.target_refused", error=str(exc), next="closing the client")
            writer.close()
            return
        pipes = [
            asyncio.create_task(_pump(reader, up_writer)),
            asyncio.create_task(_pump(up_reader, writer)),
        ]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._pipes.difference_update(pipes)
            for w in (writer, up_writer):
                w.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes until end of stream or a connection error."""
    with contextlib.suppress(ConnectionError, OSError):
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
