"""A loopback reverse proxy that injects download faults on demand.

Integration tests and the download benchmark need the blob downloader to meet dropped connections,
error answers, corrupted, oversized or misplaced bodies, refused ranges and stalls from a real
registry while the agent runs as a separate process. The proxy sits between the two on
127.0.0.1, the test process scripts its faults with `Fault` rules, and it counts the exact body
bytes written to clients, so a test can see which requests a resumed download made and what
they fetched.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
import sys
import termios
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import httpx

from aoscore_py.errors import LocalError
from aoscore_py.logs import get_logger

CHUNK = 64 * 1024
KINDS = frozenset(
    {"drop", "status", "corrupt", "stall", "dead", "oversize", "wrong_range", "unsatisfiable"}
)
STOP_JOIN_S = 5.0
DRAIN_S = 1.0

# Request headers the downloader's answer depends on; everything else stays behind.
_FORWARDED = ("Accept", "Authorization", "If-None-Match", "If-Range", "Range")
_PASSED_BACK = (
    "Content-Length",
    "Content-Range",
    "Content-Type",
    "Content-Encoding",
    "Docker-Content-Digest",
    "Docker-Distribution-Api-Version",
    "Accept-Ranges",
    "ETag",
    "Last-Modified",
)
_FLIP = bytes(b ^ 0xFF for b in range(256))
_NO_BODY = frozenset({204, 304})

_log = get_logger("faultproxy")


@dataclass
class Fault:
    """One fault rule; the first rule that matches the path and has uses left applies.

    Kinds:
    - drop: send the headers (full Content-Length) and `after_bytes` body bytes, then reset.
    - status: answer `status` with a short body, without asking upstream.
    - corrupt: flip every body byte from offset `after_bytes` on; the length stays the same.
    - stall: send `after_bytes` body bytes, wait for `release()` or `stall_s`, then go on.
    - dead: reset the connection without any response.
    - oversize: pass the body through, then send `extra_bytes` more; Content-Length says so,
      as a server holding a bigger blob than the cloud announced would.
    - wrong_range: ask upstream for `bytes=<after_bytes>-` instead of the range the client asked
      (or did not ask) for, and pass its 206 back: a Content-Range for another range.
    - unsatisfiable: answer 416 with `Content-Range: bytes */<length>` (the length upstream
      gives), without sending a body, as a server does for a range past the end.

    Offsets count from the start of this response's body, not of the blob (for wrong_range,
    `after_bytes` is the first byte of the blob served).
    """

    kind: str
    path_contains: str = ""
    after_bytes: int = 0
    status: int = 500
    times: int = 1  # how many requests it applies to; -1 means always
    stall_s: float = 3600.0
    extra_bytes: int = 1024


@dataclass(frozen=True)
class Request:
    """What the proxy did with one request, for assertions."""

    method: str
    path: str
    range: str | None
    status: int  # 0 while no status line was sent (dead, or headers not sent yet)
    body_bytes: int
    fault: str | None


@dataclass
class _Live:
    """The mutable record of a request while its response streams."""

    method: str
    path: str
    range: str | None
    fault: str | None
    generation: int
    status: int = 0
    body_bytes: int = 0

    def snapshot(self) -> Request:
        return Request(self.method, self.path, self.range, self.status, self.body_bytes, self.fault)


@dataclass
class _Rule:
    fault: Fault
    left: int


class FaultProxy:
    """A reverse proxy from `url` to `upstream` (GET and HEAD only) with scripted faults.

    Args:
        upstream: the registry's base URL, such as `http://127.0.0.1:5000`.
        host: the address to listen on; keep it on loopback.
        port: the port to listen on; a free one is picked when 0.
    """

    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.host = host
        self.port = port
        self._cond = threading.Condition()
        self._rules: list[_Rule] = []
        self._records: list[_Live] = []
        self._generation = 0  # bumped by reset_counters
        self._stalls: list[threading.Event] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self.port == 0:
            raise LocalError("the fault proxy has no port yet: start it first")
        return f"http://{self.host}:{self.port}"

    def start(self) -> FaultProxy:
        """Listen and serve in a background thread, one more thread per client connection."""
        if self._server is not None:
            return self
        client = httpx.Client(
            follow_redirects=True,
            trust_env=False,
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=16),
        )
        try:
            server = _Server((self.host, self.port), self, client)
        except BaseException:
            client.close()
            raise
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="faultproxy-serve",
            daemon=True,
        )
        self._thread.start()
        _log.info("faultproxy.started", url=self.url, upstream=self.upstream)
        return self

    def stop(self) -> None:
        """Close the listener and every client connection, release stalls, join the threads."""
        with self._cond:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        # Sockets first: a released stall must fail to write, not finish its body.
        server.closing.set()
        server.shutdown_connections()
        self.release()
        server.join_connections(STOP_JOIN_S)
        server.client.close()
        if thread is not None:
            thread.join(STOP_JOIN_S)
        _log.info("faultproxy.stopped", url=self.url)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def add(self, fault: Fault) -> None:
        """Append a rule; earlier rules win when several match.

        Raises:
            LocalError: an unknown kind or a negative offset.
        """
        if fault.kind not in KINDS:
            raise LocalError(f"unknown fault kind {fault.kind!r}: expected one of {sorted(KINDS)}")
        if fault.after_bytes < 0:
            raise LocalError(f"after_bytes must be >= 0, not {fault.after_bytes}")
        if fault.extra_bytes < 0:
            raise LocalError(f"extra_bytes must be >= 0, not {fault.extra_bytes}")
        with self._cond:
            self._rules.append(_Rule(fault, fault.times))

    def clear(self) -> None:
        """Remove all rules and release stalled responses."""
        with self._cond:
            self._rules.clear()
        self.release()

    def release(self) -> None:
        """Let responses stalled so far continue; later stall faults stall again."""
        with self._cond:
            for event in self._stalls:
                event.set()
            self._cond.notify_all()

    def wait_stalled(self, timeout_s: float, count: int = 1) -> bool:
        """True once at least `count` responses are stalled and not yet released."""
        with self._cond:
            return self._cond.wait_for(lambda: self._stalled() >= count, timeout_s)

    def wait_bytes(self, n: int, timeout_s: float, path_contains: str = "") -> bool:
        """True once at least `n` body bytes were sent on matching paths since the last reset."""
        with self._cond:
            return self._cond.wait_for(lambda: self._sum(path_contains) >= n, timeout_s)

    def bytes_sent(self, path_contains: str = "") -> int:
        """Body bytes written to client sockets for matching paths since the last reset."""
        with self._cond:
            return self._sum(path_contains)

    def requests(self) -> list[Request]:
        """A snapshot of the requests seen since the last reset, oldest first."""
        with self._cond:
            return [record.snapshot() for record in self._records]

    def reset_counters(self) -> None:
        """Forget all requests; a response still streaming reappears, counted from zero."""
        with self._cond:
            self._records = []
            self._generation += 1

    def _stalled(self) -> int:
        return sum(not event.is_set() for event in self._stalls)

    def _sum(self, path_contains: str) -> int:
        return sum(r.body_bytes for r in self._records if path_contains in r.path)

    def _begin(self, method: str, path: str, range_: str | None) -> tuple[Fault | None, _Live]:
        with self._cond:
            fault = None
            for rule in self._rules:
                if rule.left != 0 and rule.fault.path_contains in path:
                    fault = rule.fault
                    if rule.left > 0:
                        rule.left -= 1
                    break
            record = _Live(method, path, range_, fault.kind if fault else None, self._generation)
            self._records.append(record)
            return fault, record

    def _update(self, record: _Live, *, status: int = 0, sent: int = 0) -> None:
        with self._cond:
            record.status = status or record.status
            if sent and record.generation != self._generation:
                if sent < 0:
                    return  # undoing bytes that a reset already forgot
                record.generation, record.body_bytes = self._generation, 0
                self._records.append(record)
            record.body_bytes += sent
            self._cond.notify_all()

    def _stall(self, seconds: float, closing: threading.Event) -> None:
        event = threading.Event()
        with self._cond:
            if closing.is_set():
                return
            self._stalls.append(event)
            self._cond.notify_all()
        try:
            event.wait(seconds)
        finally:
            with self._cond:
                self._stalls.remove(event)
                self._cond.notify_all()


def _corrupt(chunk: bytes, offset: int, start: int) -> bytes:
    skip = max(0, start - offset)
    if skip >= len(chunk):
        return chunk
    return chunk[:skip] + chunk[skip:].translate(_FLIP)


def _drain(sock: socket.socket, seconds: float) -> None:
    # A reset discards what the kernel has not delivered yet; wait so the client really gets
    # the bytes we counted. TIOCOUTQ on a TCP socket is Linux's SIOCOUTQ (unacknowledged bytes).
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        if struct.unpack("i", raw)[0] == 0:
            return
        time.sleep(0.005)


SEND_BUFFER_BYTES = 64 * 1024


class _Server(ThreadingHTTPServer):
    """Tracks its connection threads so `stop` can close and join them all."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], proxy: FaultProxy, client: httpx.Client) -> None:
        self.proxy = proxy
        self.client = client
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._open: dict[socket.socket, threading.Thread] = {}
        self._aborted: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # A small send buffer keeps "counted as sent" close to "received by the client": bytes
        # parked in a large kernel buffer when a client dies were never fetched by it.
        request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="faultproxy-conn",
            daemon=True,
        )
        with self._lock:
            self._open[request] = thread
        thread.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._open.pop(request, None)

    def shutdown_request(self, request: Any) -> None:
        # The base class half-closes first, which would send a FIN before our reset.
        with self._lock:
            aborted = request in self._aborted
            self._aborted.discard(request)
        if aborted:
            self.close_request(request)
        else:
            super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.debug("faultproxy.error", client=str(client_address), error=repr(sys.exc_info()[1]))

    def mark_aborted(self, sock: socket.socket) -> None:
        with self._lock:
            self._aborted.add(sock)

    def shutdown_connections(self) -> None:
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def join_connections(self, timeout_s: float) -> None:
        with self._lock:
            threads = list(self._open.values())
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("faultproxy.request", line=format % args)

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def _refuse(self) -> None:
        _, record = self.server.proxy._begin(self.command, self.path, self.headers.get("Range"))
        # Read a small body so closing cannot reset the answer away; give up on anything else.
        length = self.headers.get("Content-Length", "0")
        if "Transfer-Encoding" not in self.headers and length.isdigit() and int(length) <= CHUNK:
            self.rfile.read(int(length))
        else:
            self.close_connection = True
        self._answer(record, 405, "only GET and HEAD are proxied\n", {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _serve(self) -> None:
        proxy = self.server.proxy
        fault, record = proxy._begin(self.command, self.path, self.headers.get("Range"))
        try:
            if fault is not None and fault.kind == "status":
                self._answer(record, fault.status, f"fault proxy: status {fault.status}\n")
            elif fault is not None and fault.kind == "dead":
                self._abort(drain=False)
            elif fault is not None and fault.kind == "unsatisfiable":
                self._unsatisfiable(record)
            else:
                self._forward(record, fault)
        except (OSError, httpx.HTTPError) as exc:
            # The client left or upstream broke mid-body: a truncated body must not look whole.
            _log.debug("faultproxy.broken", path=self.path, error=repr(exc))
            self._abort(drain=False)

    def _unsatisfiable(self, record: _Live) -> None:
        url = self.server.proxy.upstream + self.path
        try:
            head = self.server.client.head(url, headers={"Accept-Encoding": "identity"})
        except httpx.HTTPError as exc:
            self._answer(record, 502, f"fault proxy: upstream failed: {exc}\n")
            return
        length = head.headers.get("content-length", "*")
        text = "fault proxy: range not satisfiable\n"
        self._answer(record, 416, text, {"Content-Range": f"bytes */{length}"})

    def _forward(self, record: _Live, fault: Fault | None) -> None:
        headers = {name: v for name in _FORWARDED if (v := self.headers.get(name)) is not None}
        headers["Accept-Encoding"] = "identity"  # raw bytes then equal the body we count
        if fault is not None and fault.kind == "wrong_range":
            headers["Range"] = f"bytes={fault.after_bytes}-"
        extra = fault.extra_bytes if fault is not None and fault.kind == "oversize" else 0
        url = self.server.proxy.upstream + self.path
        with contextlib.ExitStack() as stack:
            try:
                upstream = stack.enter_context(
                    self.server.client.stream(self.command, url, headers=headers)
                )
            except httpx.HTTPError as exc:
                self._answer(record, 502, f"fault proxy: upstream failed: {exc}\n")
                return
            self._send_head(record, upstream.status_code, upstream.headers, extra)
            has_body = self.command != "HEAD" and upstream.status_code not in _NO_BODY
            if has_body:
                self._send_body(record, fault, upstream.iter_raw(CHUNK))
                self._send_extra(record, extra)
            elif fault is not None and fault.kind == "drop":
                self._abort(drain=True)

    def _send_head(
        self, record: _Live, status: int, headers: httpx.Headers, extra: int = 0
    ) -> None:
        self.send_response(status)
        for name in _PASSED_BACK:
            if (value := headers.get(name)) is not None:
                if name == "Content-Length" and extra:
                    value = str(int(value) + extra)
                self.send_header(name, value)
        if "content-length" not in headers and self.command != "HEAD":
            self.send_header("Connection", "close")  # the end of the body marks its length
            self.close_connection = True
        self.end_headers()
        self.server.proxy._update(record, status=status)

    def _send_body(self, record: _Live, fault: Fault | None, chunks: Iterable[bytes]) -> None:
        kind = fault.kind if fault is not None else None
        cut = fault.after_bytes if fault is not None and kind in ("drop", "stall") else None
        offset = 0
        for chunk in chunks:
            if fault is not None and kind == "corrupt":
                chunk = _corrupt(chunk, offset, fault.after_bytes)
            if fault is not None and cut is not None and offset + len(chunk) > cut:
                head, chunk = chunk[: cut - offset], chunk[cut - offset :]
                self._write(record, head)
                offset += len(head)
                if kind == "drop":
                    self._abort(drain=True)
                    return
                self.server.proxy._stall(fault.stall_s, self.server.closing)
                cut = None
            self._write(record, chunk)
            offset += len(chunk)
        if kind == "drop":
            self._abort(drain=True)  # the body ended before the cut: close all the same

    def _send_extra(self, record: _Live, extra: int) -> None:
        """The bytes an oversize fault adds after the body."""
        while extra > 0:
            n = min(extra, CHUNK)
            self._write(record, b"\xa5" * n)
            extra -= n

    def _write(self, record: _Live, data: bytes) -> None:
        # Counted before the write, so a client holding the bytes always finds them counted;
        # a failed write is taken back whole.
        if not data:
            return
        self.server.proxy._update(record, sent=len(data))
        try:
            self.wfile.write(data)
        except OSError:
            self.server.proxy._update(record, sent=-len(data))
            raise

    def _answer(
        self, record: _Live, status: int, text: str, extra: dict[str, str] | None = None
    ) -> None:
        body = text.encode()
        self.send_response(status)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.server.proxy._update(record, status=status)
        if self.command != "HEAD":
            self._write(record, body)

    def _abort(self, *, drain: bool) -> None:
        """Close with a reset (SO_LINGER 0), as a peer that died mid-transfer would."""
        self.close_connection = True
        sock = self.connection
        with contextlib.suppress(OSError):
            if drain and not self.server.closing.is_set():
                _drain(sock, DRAIN_S)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.server.mark_aborted(sock)
