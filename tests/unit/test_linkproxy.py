"""LinkProxy: passes bytes through unchanged, delays them in order, and breaks the link on demand.

A tiny echo server runs in this file and records what each connection received and how it
ended, so every fault is checked from both sides over real loopback sockets.
"""

from __future__ import annotations

import asyncio
import random
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from aoscore_py.errors import LocalError
from aoscore_py.powercut.linkproxy import LinkCore, LinkProxy, LinkStats
from aoscore_py.powercut.netprofiles import Profile

WAIT_S = 3.0
BANNER = b"hello\n"


@dataclass
class _Record:
    """What one upstream connection received, and whether it ended with EOF or a reset."""

    data: bytearray = field(default_factory=bytearray)
    end: str = ""
    done: threading.Event = field(default_factory=threading.Event)


class _Echo(socketserver.BaseRequestHandler):
    server: _Upstream

    def handle(self) -> None:
        record = _Record()
        self.server.add(record)
        sock: socket.socket = self.request
        try:
            if self.server.banner:
                sock.sendall(self.server.banner)
            while data := sock.recv(65536):
                record.data += data
                sock.sendall(data)
            record.end = "eof"
        except ConnectionResetError:
            record.end = "reset"
        except OSError as exc:
            record.end = repr(exc)
        finally:
            record.done.set()


class _Upstream(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, banner: bytes = b"") -> None:
        self.banner = banner
        self.records: list[_Record] = []
        self._cond = threading.Condition()
        super().__init__(("127.0.0.1", 0), _Echo)

    def add(self, record: _Record) -> None:
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()

    def record(self, index: int) -> _Record:
        """The index-th connection's record once it has ended."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.records) > index, WAIT_S)
            record = self.records[index]
        assert record.done.wait(WAIT_S), f"upstream connection {index} still open"
        return record


@pytest.fixture
def upstream() -> Iterator[_Upstream]:
    server = _Upstream()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(upstream: _Upstream) -> Iterator[LinkProxy]:
    with LinkProxy("127.0.0.1", upstream.server_address[1]) as link:
        yield link


def _connect(link: LinkProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", link.port), timeout=WAIT_S)
    sock.settimeout(WAIT_S)
    return sock


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"closed after {len(data)} of {n} bytes"
        data += chunk
    return bytes(data)


def _recv_to_end(sock: socket.socket) -> tuple[bytes, str]:
    """Everything until the connection ends, and how: "eof" or "reset"."""
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        return bytes(data), "reset"
    return bytes(data), "eof"


def _wait(link: LinkProxy, condition: object) -> LinkStats:
    assert callable(condition)
    assert link.wait_for(condition, WAIT_S), link.stats()
    return link.stats()


class TestPassThrough:
    def test_bytes_pass_unchanged_both_ways_and_are_counted(
        self, proxy: LinkProxy, upstream: _Upstream
    ) -> None:
        payload = random.Random(3).randbytes(1024 * 1024)
        with _connect(proxy) as sock:
            sender = threading.Thread(target=sock.sendall, args=(payload,))
            sender.start()
            assert _recv_exact(sock, len(payload)) == payload
            sender.join(WAIT_S)
            sock.shutdown(socket.SHUT_WR)
            assert _recv_to_end(sock) == (b"", "eof")  # an orderly close stays orderly
        record = upstream.record(0)
        assert (bytes(record.data), record.end) == (payload, "eof")
        stats = _wait(proxy, lambda s: s.open == 0)
        assert stats == LinkStats(accepted=1, bytes_up=len(payload), bytes_down=len(payload))

    def test_url_for_names_the_listening_port(self, proxy: LinkProxy) -> None:
        assert proxy.url_for("wss", "/ws") == f"wss://127.0.0.1:{proxy.port}/ws"
        assert proxy.url_for("wss", host="localhost") == f"wss://localhost:{proxy.port}"


class TestLatency:
    def test_each_direction_is_delayed_on_its_own(self, upstream: _Upstream) -> None:
        upstream.banner = BANNER
        with LinkProxy("127.0.0.1", upstream.server_address[1]) as link:
            link.set_latency(0.4, 0.0)
            with _connect(link) as sock:
                start = time.monotonic()
                sock.sendall(b"x")
                assert _recv_exact(sock, len(BANNER)) == BANNER
                assert time.monotonic() - start < 0.3  # the up queue does not hold down bytes
                assert _recv_exact(sock, 1) == b"x"
                assert time.monotonic() - start >= 0.4

    def test_round_trip_adds_both_delays(self, proxy: LinkProxy) -> None:
        proxy.set_latency(0.1, 0.15)
        with _connect(proxy) as sock:
            start = time.monotonic()
            sock.sendall(b"ping")
            assert _recv_exact(sock, 4) == b"ping"
            assert time.monotonic() - start >= 0.25

    def test_a_chunk_never_overtakes_a_delayed_one(self, proxy: LinkProxy) -> None:
        proxy.set_latency(0.0, 0.25)
        with _connect(proxy) as sock:
            start = time.monotonic()
            sock.sendall(b"A")
            time.sleep(0.05)
            proxy.set_latency(0.0, 0.0)
            sock.sendall(b"B")
            assert _recv_exact(sock, 2) == b"AB"
            assert time.monotonic() - start >= 0.25


class TestCutAfter:
    def test_down_cut_on_an_open_connection_forwards_exactly_n_bytes_then_resets(
        self, proxy: LinkProxy, upstream: _Upstream
    ) -> None:
        with _connect(proxy) as sock:
            sock.sendall(b"hello")
            assert _recv_exact(sock, 5) == b"hello"
            proxy.cut_after(1000, "down")
            sock.sendall(bytes(5000))
            assert _recv_to_end(sock) == (bytes(1000), "reset")
        assert upstream.record(0).end == "reset"  # the cloud sees the link die too
        stats = _wait(proxy, lambda s: s.open == 0)
        assert (stats.bytes_down, stats.resets) == (1005, 1)

    def test_up_cut_applies_to_the_next_connection_only(
        self, proxy: LinkProxy, upstream: _Upstream
    ) -> None:
        proxy.cut_after(3000, "up")
        payload = random.Random(5).randbytes(10000)
        with _connect(proxy) as sock:
            sock.sendall(payload)
            echoed, end = _recv_to_end(sock)
        assert end == "reset"
        assert payload.startswith(echoed)
        record = upstream.record(0)
        assert (bytes(record.data), record.end) == (payload[:3000], "reset")
        with _connect(proxy) as sock:
            sock.sendall(payload)
            assert _recv_exact(sock, len(payload)) == payload

    def test_zero_bytes_times_two_resets_two_connections_on_their_first_byte(
        self, proxy: LinkProxy, upstream: _Upstream
    ) -> None:
        proxy.cut_after(0, "up", times=2)
        for index in range(2):
            with _connect(proxy) as sock:
                sock.sendall(b"x")
                assert _recv_to_end(sock) == (b"", "reset")
            assert upstream.record(index).data == b""
        with _connect(proxy) as sock:
            sock.sendall(b"y")
            assert _recv_exact(sock, 1) == b"y"
        assert proxy.stats().resets == 2

    @pytest.mark.parametrize(
        ("call", "args"),
        [("cut_after", (-1,)), ("cut_after", (1, "sideways")), ("cut_after", (1, "up", 0))],
    )
    def test_misuse_raises(self, proxy: LinkProxy, call: str, args: tuple[object, ...]) -> None:
        with pytest.raises(LocalError):
            getattr(proxy, call)(*args)

    def test_negative_latency_raises(self, proxy: LinkProxy) -> None:
        with pytest.raises(LocalError):
            proxy.set_latency(-0.1, 0.0)


class TestBreakTheLink:
    def test_refuse_resets_new_connections_without_dialling_the_cloud(
        self, proxy: LinkProxy, upstream: _Upstream
    ) -> None:
        proxy.refuse(True)
        try:
            with _connect(proxy) as sock:
                assert _recv_to_end(sock) == (b"", "reset")
        except ConnectionResetError:
            pass  # the reset can beat connect() to the client: the agent may see either
        assert proxy.stats() == LinkStats(accepted=1, refused=1)
        assert upstream.records == []
        proxy.refuse(False)
        with _connect(proxy) as sock:
            sock.sendall(b"back")
            assert _recv_exact(sock, 4) == b"back"

    def test_drop_all_resets_every_open_connection_at_once(
        self, proxy: LinkProxy, upstream: _Upstream
    ) -> None:
        socks = [_connect(proxy), _connect(proxy)]
        for sock in socks:
            sock.sendall(b"up")
            assert _recv_exact(sock, 2) == b"up"
        proxy.drop_all()
        for index, sock in enumerate(socks):
            with sock:
                assert _recv_to_end(sock) == (b"", "reset")
            assert upstream.record(index).end == "reset"
        stats = _wait(proxy, lambda s: s.open == 0)
        assert (stats.accepted, stats.resets) == (2, 2)
        with _connect(proxy) as sock:
            sock.sendall(b"again")
            assert _recv_exact(sock, 5) == b"again"


class TestStop:
    def test_stop_resets_connections_closes_the_port_and_joins_the_thread(
        self, upstream: _Upstream
    ) -> None:
        link = LinkProxy("127.0.0.1", upstream.server_address[1])
        port = link.start()
        with _connect(link) as sock:
            sock.sendall(b"x")
            assert _recv_exact(sock, 1) == b"x"
            start = time.monotonic()
            link.stop()
            assert time.monotonic() - start < 2.0
            assert _recv_to_end(sock) == (b"", "reset")
        assert not [t for t in threading.enumerate() if t.name == "linkproxy"]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=WAIT_S).close()
        link.stop()  # a second stop does nothing

    def test_the_async_core_leaves_no_task_behind(self, upstream: _Upstream) -> None:
        async def main() -> None:
            core = LinkCore("127.0.0.1", upstream.server_address[1])
            async with asyncio.timeout(WAIT_S):
                port = await core.start()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
                await core.stop()
            assert asyncio.all_tasks() == {asyncio.current_task()}
            writer.close()

        asyncio.run(main())


class TestProfile:
    def test_the_rate_cap_holds_and_bytes_pass_unchanged(self, upstream: _Upstream) -> None:
        slow = Profile("slow", rate_bps=800_000, burst_bytes=1448)  # 100 kB/s each way
        payload = random.Random(5).randbytes(150_000)
        link = LinkProxy("127.0.0.1", upstream.server_address[1], profile=slow)
        with link, _connect(link) as sock:
            start = time.monotonic()
            sender = threading.Thread(target=sock.sendall, args=(payload,))
            sender.start()
            assert _recv_exact(sock, len(payload)) == payload
            elapsed = time.monotonic() - start
            sender.join(WAIT_S)
        # the lower bound is the cap; the upper one only says it is not stuck (a loaded runner)
        assert 1.4 <= elapsed < 8.0, f"150 kB up then down at 100 kB/s took {elapsed:.2f} s"

    def test_loss_stalls_segments_and_keeps_the_stream_intact(self, upstream: _Upstream) -> None:
        lossy = Profile("lossy", loss=0.2, rto_s=0.01, segment_bytes=1000)
        payload = random.Random(6).randbytes(100_000)
        with LinkProxy("127.0.0.1", upstream.server_address[1], profile=lossy, seed=1) as link:
            with _connect(link) as sock:
                sock.sendall(payload)
                assert _recv_exact(sock, len(payload)) == payload
            stats = link.stats()
        assert 20 <= stats.stalled <= 60, stats  # 20 % of 200 segments (100 up, 100 down)

    def test_a_spike_holds_the_link_until_it_ends(self, upstream: _Upstream) -> None:
        spiky = Profile("spiky", spike_every_s=6.0, spike_s=1.0)
        with LinkProxy("127.0.0.1", upstream.server_address[1], profile=spiky, seed=3) as link:
            schedule = link.schedule
            assert schedule is not None and schedule.spikes is not None
            with _connect(link) as sock:
                opens = schedule.spikes.next_start(time.monotonic())  # the loop's clock
                time.sleep(opens + 0.2 - time.monotonic())
                sock.sendall(b"x")
                assert _recv_exact(sock, 1) == b"x"
                arrived = time.monotonic()
        assert arrived >= opens + 1.0, f"arrived {arrived - opens:.2f} s into a 1 s spike"
        assert arrived < opens + 5.0  # released when it ends, well before the next one
        assert link.stats().spiked >= 1

    def test_flaky_resets_every_connection_and_refuses_for_the_outage(
        self, upstream: _Upstream
    ) -> None:
        flaky = Profile("flaky", disconnect_every_s=0.5, outage_s=0.2)
        with LinkProxy("127.0.0.1", upstream.server_address[1], profile=flaky) as link:
            with _connect(link) as a, _connect(link) as b:
                a.sendall(b"a")
                assert _recv_exact(a, 1) == b"a"
                assert _recv_to_end(a)[1] == "reset"
                assert _recv_to_end(b)[1] == "reset"
            stats = _wait(link, lambda s: s.outages >= 2)
            assert stats.resets >= 2
            link.set_profile(None)
            with _connect(link) as sock:
                sock.sendall(b"ok")
                assert _recv_exact(sock, 2) == b"ok"

    def test_clear_removes_the_profile(self, upstream: _Upstream) -> None:
        flaky = Profile("flaky", disconnect_every_s=0.3, outage_s=0.1)
        with LinkProxy("127.0.0.1", upstream.server_address[1], profile=flaky) as link:
            link.clear()
            with _connect(link) as sock:
                time.sleep(0.8)
                sock.sendall(b"still")
                assert _recv_exact(sock, 5) == b"still"
            assert link.stats().outages == 0
