"""A loopback TCP proxy that degrades or breaks the cloud link on demand.

The cloud-link fault tests need the agent's WebSocket to meet latency, connections reset in the
middle of a frame, and an unreachable cloud, while the agent runs as a separate process. The proxy
sits between the agent and the cloud on 127.0.0.1 and only moves bytes, so it works the same
under TLS. `LinkCore` is the asyncio core; `LinkProxy` runs it in a background thread with its own
event loop for synchronous tests.

A network profile (netprofiles.py) makes the proxy a whole impaired network: given one, each
chunk read is cut into segments that leave when the profile's schedule says (bandwidth, latency,
jitter, spikes, loss as stalls), and every connection is reset when it says (flaky links). The
schedule is pure; this file only sleeps until the times it gives.

Every fault ends a connection with a reset (SO_LINGER 0), as a peer that vanished would, never
with an orderly close the agent could mistake for the cloud's choice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import itertools
import socket
import struct
import termios
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, TypeVar

from aoscore_py.errors import LocalError
from aoscore_py.logs import get_logger
from aoscore_py.powercut.netprofiles import LinkSchedule, Profile, StreamSchedule, segments

CHUNK = 64 * 1024
QUEUE_CHUNKS = 256  # per direction: reading pauses when this many chunks wait for their time
CONNECT_S = 5.0
DRAIN_S = 1.0
STOP_S = 5.0
DIRECTIONS = ("up", "down")  # up: agent to cloud; down: cloud to agent

_T = TypeVar("_T")
_log = get_logger("linkproxy")


@dataclass(frozen=True)
class LinkStats:
    """Counters since start.

    Bytes are counted as they are handed to the far side (before the write, so a receiver
    holding them always finds them counted), not as they are read.
    """

    accepted: int = 0  # every connection accepted, refused ones included
    refused: int = 0
    open: int = 0
    resets: int = 0  # connections ended by a cut or by drop_all
    bytes_up: int = 0
    bytes_down: int = 0
    stalled: int = 0  # segments a profile's loss held one retransmission timeout
    spiked: int = 0  # segments a profile's spike held
    outages: int = 0  # the profile's scheduled disconnects (each resets every connection)


@dataclass(eq=False)
class _Conn:
    """One proxied connection: the two sides, the four pump tasks, the cuts armed on it."""

    id: int
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    cuts: dict[str, int] = field(default_factory=dict)  # direction: bytes left to forward
    streams: dict[str, StreamSchedule] = field(default_factory=dict)  # under the profile
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closed: bool = False


class LinkCore:
    """The proxy itself; every method but `stats` and `wait_for` runs on its event loop.

    Args:
        upstream_host: the cloud's address, as the agent would dial it.
        upstream_port: the cloud's port.
        host: the address to listen on; keep it on loopback.
        port: the port to listen on; a free one is picked when 0.
        profile: a network profile to impose from `start` on (see `set_profile`).
        seed: the profile's randomness.
        salt: tells this proxy's draws from those of other proxies with the same seed.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        profile: Profile | None = None,
        seed: int | str = 0,
        salt: str = "",
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._latency = {"up": 0.0, "down": 0.0}
        self._pending: dict[str, deque[int]] = {d: deque() for d in DIRECTIONS}
        self._refusing = False
        self._ids = itertools.count(1)
        self._cond = threading.Condition()  # guards _stats, which other threads read
        self._stats = LinkStats()
        self._profile = (profile, seed, salt)
        self._schedule: LinkSchedule | None = None
        self._outage = False  # the profile's disconnect holds: refuse new connections
        self._outages: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Listen; returns the port, which `port` also holds from now on."""
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
            self.port = int(self._server.sockets[0].getsockname()[1])
            _log.info(
                "linkproxy.started",
                port=self.port,
                upstream=f"{self.upstream_host}:{self.upstream_port}",
            )
            profile, seed, salt = self._profile
            if profile is not None:
                self.set_profile(profile, seed, salt)
        return self.port

    async def stop(self) -> None:
        """Stop listening, reset every connection and wait for each handler to finish."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self._stop_outages()
        self._reset_all()
        tasks = [*self._handlers, *(t for c in self._conns for t in c.tasks)]
        for task in self._handlers:
            task.cancel()  # a handler still dialling the cloud
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_S)
        await server.wait_closed()  # from Python 3.12 on, this waits for the connections too
        _log.info("linkproxy.stopped", port=self.port)

    def set_latency(self, up_s: float, down_s: float) -> None:
        """Delay each chunk read from now on by this long in its direction, keeping the order.

        A chunk never overtakes an earlier one, so lowering the latency takes effect once the
        chunks already delayed have passed.

        Raises:
            LocalError: a negative delay.
        """
        if up_s < 0 or down_s < 0:
            raise LocalError(f"latency must be >= 0, not up={up_s} down={down_s}")
        self._latency = {"up": up_s, "down": down_s}
        _log.info("linkproxy.latency", up_s=up_s, down_s=down_s)

    def cut_after(self, n_bytes: int, direction: str = "down", times: int = 1) -> None:
        """Reset the next `times` connections after exactly `n_bytes` more bytes in `direction`.

        Open connections take the cut first, oldest first, counting from now; the rest wait for
        new connections, counting from their first byte. Once the n-th byte is forwarded (and
        acknowledged by the receiver, for at most DRAIN_S), both sides are reset: a frame cut in
        the middle. With `n_bytes` 0 the next chunk in that direction triggers the reset and none
        of it passes.

        Raises:
            LocalError: an unknown direction, a negative count, or `times` below 1.
        """
        if direction not in DIRECTIONS:
            raise LocalError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
        if n_bytes < 0 or times < 1:
            raise LocalError(f"need n_bytes >= 0 and times >= 1, not {n_bytes} and {times}")
        left = times
        for conn in sorted(self._conns, key=lambda c: c.id):
            if left and not conn.closed:
                conn.cuts[direction] = n_bytes
                left -= 1
        self._pending[direction].extend([n_bytes] * left)
        armed = times - left
        _log.info("linkproxy.cut_armed", direction=direction, n_bytes=n_bytes, open=armed, new=left)

    def set_profile(self, profile: Profile | None, seed: int | str = 0, salt: str = "") -> None:
        """Impose `profile` from now on (None: none), on open connections too; its spikes and
        disconnects count from now. Before `start`, it is imposed from `start` on.

        Chunks already waiting keep the time they were given; `set_latency` adds to the
        profile's latency.
        """
        self._profile = (profile, seed, salt)
        if self._server is None:
            return
        self._stop_outages()
        loop = asyncio.get_running_loop()
        self._schedule = None if profile is None else LinkSchedule(profile, seed, loop.time(), salt)
        for conn in self._conns:
            conn.streams.clear()
        if self._schedule is not None and self._schedule.disconnects is not None:
            self._outages = loop.create_task(self._disconnect(self._schedule), name="outages")
        _log.info(
            "linkproxy.profile",
            port=self.port,
            profile=None if profile is None else profile.describe(),
            seed=seed,
        )

    @property
    def schedule(self) -> LinkSchedule | None:
        """The profile's schedule in force (None: no profile), in the loop's clock (which is
        `time.monotonic`), for a caller that waits for the next spike or disconnect."""
        return self._schedule

    def drop_all(self) -> None:
        """Reset every open connection now, as a link that died would."""
        count = self._reset_all()
        _log.info("linkproxy.dropped", connections=count)

    def refuse(self, on: bool) -> None:
        """While on, accept each new connection and reset it at once: the cloud is unreachable."""
        self._refusing = on
        _log.info("linkproxy.refuse", on=on)

    def clear(self) -> None:
        """Back to a healthy link: no latency, no armed cut, no refusal, no profile."""
        if self._profile[0] is not None:
            self.set_profile(None)
        self._latency = {"up": 0.0, "down": 0.0}
        for pending in self._pending.values():
            pending.clear()
        for conn in self._conns:
            conn.cuts.clear()
        self._refusing = False
        _log.info("linkproxy.cleared")

    def stats(self) -> LinkStats:
        """A snapshot of the counters; safe from any thread."""
        with self._cond:
            return self._stats

    def wait_for(self, condition: Callable[[LinkStats], bool], timeout_s: float) -> bool:
        """Block until `condition(stats)` holds; False on timeout. Never call it on the loop."""
        with self._cond:
            return self._cond.wait_for(lambda: condition(self._stats), timeout_s)

    def _count(self, **deltas: int) -> None:
        with self._cond:
            values = {k: getattr(self._stats, k) + v for k, v in deltas.items()}
            self._stats = replace(self._stats, **values)
            self._cond.notify_all()

    def _stop_outages(self) -> None:
        task, self._outages = self._outages, None
        if task is not None:
            task.cancel()
        self._outage = False

    async def _disconnect(self, schedule: LinkSchedule) -> None:
        """Reset every connection at each of the schedule's disconnects, and refuse new ones
        for its outage."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while (at := schedule.next_disconnect(max(last, loop.time()))) is not None:
            await asyncio.sleep(at - loop.time())
            last = at
            self._outage = True
            count = self._reset_all()
            self._count(outages=1)
            _log.info(
                "linkproxy.outage",
                port=self.port,
                connections=count,
                outage_s=schedule.profile.outage_s,
                next="refusing",
            )
            await asyncio.sleep(schedule.profile.outage_s)
            self._outage = False

    def _reset_all(self) -> int:
        # Connections closing already (a cut waiting for its last bytes) are reset, not counted.
        fresh = sum(not c.closed for c in self._conns)
        for conn in list(self._conns):
            self._abort(conn)
        self._count(resets=fresh)
        return fresh

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None, "a connection handler runs in a task"
        self._handlers.add(task)
        self._count(accepted=1)
        try:
            if self._refusing or self._outage:
                self._count(refused=1)
                _reset(writer)
                _log.debug("linkproxy.refused")
                return
            conn = _Conn(next(self._ids), writer)
            self._conns.add(conn)
            self._count(open=1)
            try:
                await self._run(conn, reader)
            finally:
                self._conns.discard(conn)
                self._count(open=-1)
        finally:
            self._handlers.discard(task)

    async def _run(self, conn: _Conn, client: asyncio.StreamReader) -> None:
        try:
            from_cloud, to_cloud = await asyncio.wait_for(
                asyncio.open_connection(self.upstream_host, self.upstream_port), CONNECT_S
            )
        except (OSError, TimeoutError) as exc:
            _log.warning("linkproxy.upstream_failed", conn=conn.id, error=repr(exc), next="reset")
            self._abort(conn)
            return
        conn.upstream = to_cloud
        if conn.closed:  # dropped while dialling
            self._abort(conn)
            return
        for direction in DIRECTIONS:
            if self._pending[direction] and direction not in conn.cuts:
                conn.cuts[direction] = self._pending[direction].popleft()
        _log.debug("linkproxy.connected", conn=conn.id, cuts=conn.cuts)
        up: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        down: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        conn.tasks = [
            asyncio.create_task(self._read(conn, client, up, "up")),
            asyncio.create_task(self._write(conn, to_cloud, up, "up")),
            asyncio.create_task(self._read(conn, from_cloud, down, "down")),
            asyncio.create_task(self._write(conn, conn.client, down, "down")),
        ]
        await asyncio.wait(conn.tasks)
        if not conn.closed:  # both directions ended with EOF
            conn.closed = True
            for writer in (conn.client, to_cloud):
                writer.close()
        _log.debug("linkproxy.closed", conn=conn.id)

    async def _read(
        self,
        conn: _Conn,
        src: asyncio.StreamReader,
        queue: asyncio.Queue[tuple[float, bytes]],
        direction: str,
    ) -> None:
        """Stamp each chunk with the time it may leave; b"" carries the EOF in order."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await src.read(CHUNK)
                schedule = self._schedule
                if schedule is None or not schedule.profile.shapes or not data:
                    await queue.put((loop.time() + self._latency[direction], data))
                else:
                    await self._stamp(conn, schedule, queue, direction, data)
                if not data:
                    return
        except OSError as exc:
            _log.debug("linkproxy.read_failed", conn=conn.id, direction=direction, error=repr(exc))
            self._abort(conn)

    async def _stamp(
        self,
        conn: _Conn,
        schedule: LinkSchedule,
        queue: asyncio.Queue[tuple[float, bytes]],
        direction: str,
        data: bytes,
    ) -> None:
        """Cut `data` into the profile's segments, each stamped with its departure."""
        loop = asyncio.get_running_loop()
        stream = conn.streams.get(direction)
        if stream is None:
            stream = conn.streams[direction] = schedule.stream(conn.id, direction)
        for piece in segments(data, schedule.profile.segment_bytes):
            departure = stream.departure(loop.time(), len(piece), direction)
            if departure.lost or departure.spike_s:
                self._count(stalled=int(departure.lost), spiked=int(departure.spike_s > 0))
            await queue.put((departure.due + self._latency[direction], piece))

    async def _write(
        self,
        conn: _Conn,
        dst: asyncio.StreamWriter,
        queue: asyncio.Queue[tuple[float, bytes]],
        direction: str,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                due, data = await queue.get()
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                left = conn.cuts.get(direction)
                if left is not None and len(data) >= left:
                    await self._cut(conn, dst, data[:left], direction)
                    return
                if left is not None:
                    conn.cuts[direction] = left - len(data)
                self._count(**{f"bytes_{direction}": len(data)})
                dst.write(data)
                await dst.drain()
        except OSError as exc:
            _log.debug("linkproxy.write_failed", conn=conn.id, direction=direction, error=repr(exc))
            self._abort(conn)

    async def _cut(
        self, conn: _Conn, dst: asyncio.StreamWriter, last: bytes, direction: str
    ) -> None:
        """Forward the last bytes, let the receiver acknowledge them, then reset both sides."""
        conn.closed = True
        self._cancel_pumps(conn)
        self._count(resets=1)
        if last:
            self._count(**{f"bytes_{direction}": len(last)})
            dst.write(last)
        _log.info(
            "linkproxy.cut", conn=conn.id, direction=direction, last_bytes=len(last), next="reset"
        )
        await _flushed(dst, DRAIN_S)
        self._abort(conn)

    def _cancel_pumps(self, conn: _Conn) -> None:
        current = asyncio.current_task()
        for task in conn.tasks:
            if task is not current:
                task.cancel()

    def _abort(self, conn: _Conn) -> None:
        """Reset both sides; safe to repeat."""
        conn.closed = True
        self._cancel_pumps(conn)
        for writer in (conn.client, conn.upstream):
            if writer is not None:
                _reset(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (SO_LINGER 0): the peer sees ECONNRESET, not an orderly end."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _flushed(writer: asyncio.StreamWriter, timeout_s: float) -> None:
    # A reset discards what the receiver's kernel has not acknowledged, so "forwarded exactly n
    # bytes" needs both asyncio's buffer and the kernel send queue empty first. TIOCOUTQ on a TCP
    # socket is Linux's SIOCOUTQ (bytes not yet acknowledged).
    sock = writer.get_extra_info("socket")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    with contextlib.suppress(OSError):
        while loop.time() < deadline:
            if writer.transport.get_write_buffer_size() == 0:
                raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
                if struct.unpack("i", raw)[0] == 0:
                    return
            await asyncio.sleep(0.002)


class LinkProxy:
    """`LinkCore` on its own event loop in a background thread, for synchronous tests.

    Control calls return once the loop has applied them, so a `drop_all()` has reset every
    connection by the time it returns. Before `start` they apply directly.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        profile: Profile | None = None,
        seed: int | str = 0,
        salt: str = "",
    ) -> None:
        self.core = LinkCore(
            upstream_host, upstream_port, host, port, profile=profile, seed=seed, salt=salt
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.core.port

    def url_for(self, scheme: str, path: str = "", host: str | None = None) -> str:
        """The URL the agent should dial, such as `wss://127.0.0.1:PORT/ws`.

        Pass `host` when TLS must verify a name the certificate holds, such as `localhost`.
        """
        return f"{scheme}://{host or self.core.host}:{self.port}{path}"

    def start(self) -> int:
        """Listen in a background thread; returns the port."""
        if self._thread is not None:
            return self.port
        loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        thread = threading.Thread(target=self._main, args=(loop, ready), name="linkproxy")
        thread.start()
        try:
            ready.result(STOP_S)
        except BaseException:
            thread.join(STOP_S)
            raise
        self._loop, self._thread = loop, thread
        return self.port

    def stop(self) -> None:
        """Reset every connection, close the listener, end the loop and join the thread."""
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.core.stop(), loop).result(STOP_S + 1)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(STOP_S)

    def __enter__(self) -> LinkProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def set_latency(self, up_s: float, down_s: float) -> None:
        """See `LinkCore.set_latency`."""
        self._call(self.core.set_latency, up_s, down_s)

    def cut_after(self, n_bytes: int, direction: str = "down", times: int = 1) -> None:
        """See `LinkCore.cut_after`."""
        self._call(self.core.cut_after, n_bytes, direction, times)

    @property
    def schedule(self) -> LinkSchedule | None:
        """See `LinkCore.schedule`."""
        return self.core.schedule

    def set_profile(self, profile: Profile | None, seed: int | str = 0, salt: str = "") -> None:
        """See `LinkCore.set_profile`."""
        self._call(self.core.set_profile, profile, seed, salt)

    def drop_all(self) -> None:
        """See `LinkCore.drop_all`."""
        self._call(self.core.drop_all)

    def refuse(self, on: bool) -> None:
        """See `LinkCore.refuse`."""
        self._call(self.core.refuse, on)

    def clear(self) -> None:
        """See `LinkCore.clear`."""
        self._call(self.core.clear)

    def stats(self) -> LinkStats:
        """See `LinkCore.stats`."""
        return self.core.stats()

    def wait_for(self, condition: Callable[[LinkStats], bool], timeout_s: float) -> bool:
        """See `LinkCore.wait_for`."""
        return self.core.wait_for(condition, timeout_s)

    def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = self._loop
        if loop is None:
            return fn(*args)
        done: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn(*args))
            except Exception as exc:
                done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return done.result(STOP_S)

    def _main(self, loop: asyncio.AbstractEventLoop, ready: concurrent.futures.Future[int]) -> None:
        asyncio.set_event_loop(loop)
        try:
            try:
                ready.set_result(loop.run_until_complete(self.core.start()))
            except Exception as exc:
                ready.set_exception(exc)
                return
            loop.run_forever()
            leftover = asyncio.all_tasks(loop)
            if leftover:
                _log.warning("linkproxy.leftover_tasks", count=len(leftover), next="cancel")
                for task in leftover:
                    task.cancel()
                loop.run_until_complete(asyncio.wait(leftover, timeout=STOP_S))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
