"""FaultProxy: passes registry answers through byte for byte, and injects each fault on demand.

A tiny upstream with Range support runs in this file, so the proxy is tested without a registry.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from aoscore_py.errors import LocalError
from aoscore_py.powercut.faultproxy import Fault, FaultProxy, Request

BLOB = random.Random(7).randbytes(3 * 1024 * 1024)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
TRANSPORT_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError)


class _Upstream(BaseHTTPRequestHandler):
    """Serves BLOB at /blob/<anything>, as a registry serves a blob, plus one redirect."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def _serve(self) -> None:
        if self.path == "/redirect":
            self._head(307, {"Location": "/blob/redirected", "Content-Length": "0"})
            return
        if not self.path.startswith("/blob/"):
            self._head(404, {"Content-Length": "0"})
            return
        size, start, end, status = len(BLOB), 0, len(BLOB), 200
        headers = {"Accept-Ranges": "bytes", "Docker-Content-Digest": DIGEST}
        if (wanted := self.headers.get("Range")) is not None:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted)
            assert match is not None
            start = int(match[1])
            if start >= size:
                self._head(416, {"Content-Range": f"bytes */{size}", "Content-Length": "0"})
                return
            end = min(int(match[2]) + 1, size) if match[2] else size
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        headers["Content-Type"] = "application/octet-stream"
        headers["Content-Length"] = str(end - start)
        self._head(status, headers)
        if self.command == "GET":
            for at in range(start, end, 64 * 1024):
                self.wfile.write(BLOB[at : min(at + 64 * 1024, end)])

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the proxy hanging up mid-body is expected here


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = _QuietServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def proxy(upstream: str) -> Iterator[FaultProxy]:
    with FaultProxy(upstream) as running:
        yield running


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0, trust_env=False) as http:
        yield http


def fetch(client: httpx.Client, url: str, **headers: str) -> bytes:
    with client.stream("GET", url, headers=headers) as response:
        response.raise_for_status()
        return response.read()


def proxy_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("faultproxy")]


class TestPassthrough:
    def test_a_whole_blob_arrives_exactly_with_the_registry_headers(
        self, proxy: FaultProxy, client: httpx.Client
    ) -> None:
        response = client.get(f"{proxy.url}/blob/a")
        assert response.status_code == 200
        assert response.content == BLOB
        assert response.headers["content-length"] == str(len(BLOB))
        assert response.headers["docker-content-digest"] == DIGEST
        assert response.headers["accept-ranges"] == "bytes"
        assert response.headers["content-type"] == "application/octet-stream"
        assert proxy.bytes_sent() == len(BLOB)
        assert proxy.requests() == [Request("GET", "/blob/a", None, 200, len(BLOB), None)]

    def test_a_range_is_passed_up_and_its_206_back(
        self, proxy: FaultProxy, client: httpx.Client
    ) -> None:
        response = client.get(f"{proxy.url}/blob/a", headers={"Range": "bytes=100-1099"})
        assert response.status_code == 206
        assert response.content == BLOB[100:1100]
        assert response.headers["content-range"] == f"bytes 100-1099/{len(BLOB)}"
        tail = client.get(f"{proxy.url}/blob/a", headers={"Range": "bytes=3000000-"})
        assert tail.content == BLOB[3000000:]
        assert proxy.bytes_sent() == 1000 + len(BLOB) - 3000000
        assert [r.range for r in proxy.requests()] == ["bytes=100-1099", "bytes=3000000-"]

    def test_a_range_past_the_end_gets_416(self, proxy: FaultProxy, client: httpx.Client) -> None:
        response = client.get(f"{proxy.url}/blob/a", headers={"Range": f"bytes={len(BLOB)}-"})
        assert response.status_code == 416
        assert response.headers["content-range"] == f"bytes */{len(BLOB)}"

    def test_head_has_the_length_and_no_body(self, proxy: FaultProxy, client: httpx.Client) -> None:
        response = client.head(f"{proxy.url}/blob/a")
        assert response.status_code == 200
        assert response.headers["content-length"] == str(len(BLOB))
        assert response.content == b""
        assert proxy.bytes_sent() == 0

    def test_the_proxy_follows_upstream_redirects_itself(
        self, proxy: FaultProxy, client: httpx.Client
    ) -> None:
        response = client.get(f"{proxy.url}/redirect")
        assert response.status_code == 200
        assert response.content == BLOB

    def test_other_methods_get_405(self, proxy: FaultProxy, client: httpx.Client) -> None:
        response = client.post(f"{proxy.url}/blob/a", content=b"x")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD"

    def test_an_unreachable_upstream_gives_502(self, client: httpx.Client) -> None:
        with FaultProxy("http://127.0.0.1:9") as proxy:
            assert client.get(f"{proxy.url}/blob/a").status_code == 502


class TestFaults:
    def test_status_answers_times_then_passes(
        self, proxy: FaultProxy, client: httpx.Client
    ) -> None:
        proxy.add(Fault("status", status=500, times=2))
        statuses = [client.get(f"{proxy.url}/blob/a").status_code for _ in range(3)]
        assert statuses == [500, 500, 200]
        assert [r.fault for r in proxy.requests()] == ["status", "status", None]

    def test_drop_resets_after_exactly_n_body_bytes(
        self, proxy: FaultProxy, client: httpx.Client
    ) -> None:
        proxy.add(Fault("drop", after_bytes=100_000))
        got = bytearray()
        with pytest.raises(TRANSPORT_ERRORS), client.stream("GET", f"{proxy.url}/blob/a") as r:
            assert r.headers["content-length"] == str(len(BLOB))
            for chunk in r.iter_raw():
                got += chunk
        assert proxy.bytes_sent() == 100_000
        assert bytes(got) == BLOB[:100_000]  # written bytes reach the client before the reset
        assert fetch(client, f"{proxy.url}/blob/a") == BLOB  # used up: the next one passes

    def test_corrupt_keeps_the_length_and_breaks_the_digest(
        self, proxy: FaultProxy, client: httpx.Client
    ) -> None:
        proxy.add(Fault("corrupt", after_bytes=1000))
        body = fetch(client, f"{proxy.url}/blob/a")
        assert len(body) == len(BLOB)
        assert hashlib.sha256(body).digest() != hashlib.sha256(BLOB).digest()
        assert body[:1000] == BLOB[:1000]
        assert all(a != b for a, b in zip(body[1000:2000], BLOB[1000:2000], strict=True))

    def test_stall_holds_the_body_until_released(
        self, proxy: FaultProxy, client: httpx.Client
    ) -> None:
        proxy.add(Fault("stall", after_bytes=200_000))
        with ThreadPoolExecutor(1) as pool:
            body = pool.submit(fetch, client, f"{proxy.url}/blob/a")
            assert proxy.wait_stalled(5.0)
            assert proxy.wait_bytes(200_000, 5.0)
            time.sleep(0.1)
            assert proxy.bytes_sent() == 200_000
            assert not body.done()
            proxy.release()
            assert body.result(timeout=10) == BLOB
        assert not proxy.wait_stalled(0.0)

    def test_stall_ends_by_itself_after_stall_s(
        self, proxy: FaultProxy, client: httpx.Client
    ) -> None:
        proxy.add(Fault("stall", after_bytes=0, stall_s=0.2))
        assert fetch(client, f"{proxy.url}/blob/a") == BLOB

    def test_dead_closes_without_a_response(self, proxy: FaultProxy, client: httpx.Client) -> None:
        proxy.add(Fault("dead"))
        with pytest.raises(TRANSPORT_ERRORS):
            client.get(f"{proxy.url}/blob/a")
        assert proxy.requests() == [Request("GET", "/blob/a", None, 0, 0, "dead")]

    def test_path_contains_picks_the_requests(
        self, proxy: FaultProxy, client: httpx.Client
    ) -> None:
        proxy.add(Fault("status", path_contains="/blob/b", status=503, times=-1))
        assert client.get(f"{proxy.url}/blob/a").status_code == 200
        assert client.get(f"{proxy.url}/blob/b").status_code == 503
        assert client.get(f"{proxy.url}/blob/b").status_code == 503
        assert proxy.bytes_sent("/blob/a") == len(BLOB)

    def test_clear_removes_rules_and_releases_stalls(
        self, proxy: FaultProxy, client: httpx.Client
    ) -> None:
        proxy.add(Fault("stall", path_contains="/blob/s"))
        proxy.add(Fault("status", times=-1))
        with ThreadPoolExecutor(1) as pool:
            body = pool.submit(fetch, client, f"{proxy.url}/blob/s")
            assert proxy.wait_stalled(5.0)
            proxy.clear()
            assert body.result(timeout=10) == BLOB
        assert client.get(f"{proxy.url}/blob/a").status_code == 200

    def test_oversize_sends_more_than_the_blob_and_says_so(
        self, proxy: FaultProxy, client: httpx.Client
    ) -> None:
        proxy.add(Fault("oversize", extra_bytes=100_000))
        response = client.get(f"{proxy.url}/blob/a")
        assert response.status_code == 200
        assert response.headers["content-length"] == str(len(BLOB) + 100_000)
        assert response.content[: len(BLOB)] == BLOB
        assert len(response.content) == len(BLOB) + 100_000
        assert proxy.bytes_sent() == len(BLOB) + 100_000
        assert [r.fault for r in proxy.requests()] == ["oversize"]
        assert fetch(client, f"{proxy.url}/blob/a") == BLOB  # used up: the next one passes

    def test_wrong_range_answers_a_206_for_another_range(
        self, proxy: FaultProxy, client: httpx.Client
    ) -> None:
        proxy.add(Fault("wrong_range", after_bytes=0, times=2))
        response = client.get(f"{proxy.url}/blob/a", headers={"Range": "bytes=1000-"})
        assert response.status_code == 206
        assert response.headers["content-range"] == f"bytes 0-{len(BLOB) - 1}/{len(BLOB)}"
        assert response.content == BLOB
        # without a Range the client gets a 206 it did not ask for
        unasked = client.get(f"{proxy.url}/blob/a")
        assert unasked.status_code == 206
        assert [(r.range, r.status, r.fault) for r in proxy.requests()] == [
            ("bytes=1000-", 206, "wrong_range"),
            (None, 206, "wrong_range"),
        ]

    def test_wrong_range_from_an_offset(self, proxy: FaultProxy, client: httpx.Client) -> None:
        proxy.add(Fault("wrong_range", after_bytes=5))
        response = client.get(f"{proxy.url}/blob/a", headers={"Range": "bytes=1000-"})
        assert response.headers["content-range"] == f"bytes 5-{len(BLOB) - 1}/{len(BLOB)}"
        assert response.content == BLOB[5:]

    def test_unsatisfiable_answers_416_with_the_blob_length(
        self, proxy: FaultProxy, client: httpx.Client
    ) -> None:
        proxy.add(Fault("unsatisfiable"))
        response = client.get(f"{proxy.url}/blob/a", headers={"Range": "bytes=1000-"})
        assert response.status_code == 416
        assert response.headers["content-range"] == f"bytes */{len(BLOB)}"
        assert proxy.requests()[0] == Request(
            "GET", "/blob/a", "bytes=1000-", 416, len(response.content), "unsatisfiable"
        )
        again = client.get(f"{proxy.url}/blob/a", headers={"Range": "bytes=1000-"})
        assert (again.status_code, again.content) == (206, BLOB[1000:])

    def test_an_unknown_kind_is_refused(self, proxy: FaultProxy) -> None:
        with pytest.raises(LocalError):
            proxy.add(Fault("explode"))

    def test_negative_extra_bytes_are_refused(self, proxy: FaultProxy) -> None:
        with pytest.raises(LocalError, match="extra_bytes"):
            proxy.add(Fault("oversize", extra_bytes=-1))


class TestCounters:
    def test_reset_forgets_requests_and_bytes(
        self, proxy: FaultProxy, client: httpx.Client
    ) -> None:
        fetch(client, f"{proxy.url}/blob/a")
        proxy.reset_counters()
        assert proxy.bytes_sent() == 0
        assert proxy.requests() == []
        assert not proxy.wait_bytes(1, 0.05)

    def test_a_response_streaming_across_a_reset_counts_what_follows(
        self, proxy: FaultProxy, client: httpx.Client
    ) -> None:
        proxy.add(Fault("stall", after_bytes=1000))
        with ThreadPoolExecutor(1) as pool:
            body = pool.submit(fetch, client, f"{proxy.url}/blob/a")
            assert proxy.wait_stalled(5.0)
            proxy.reset_counters()
            assert proxy.requests() == []
            proxy.release()
            assert body.result(timeout=10) == BLOB
        assert proxy.bytes_sent() == len(BLOB) - 1000
        assert [r.fault for r in proxy.requests()] == ["stall"]


class TestConcurrencyAndLifecycle:
    def test_four_downloads_stream_at_once(self, proxy: FaultProxy, client: httpx.Client) -> None:
        proxy.add(Fault("stall", after_bytes=1000, times=4))
        with ThreadPoolExecutor(4) as pool:
            bodies = [pool.submit(fetch, client, f"{proxy.url}/blob/{i}") for i in range(4)]
            assert proxy.wait_stalled(5.0, count=4)  # all four are open at the same time
            proxy.release()
            assert all(body.result(timeout=10) == BLOB for body in bodies)
        assert proxy.bytes_sent() == 4 * len(BLOB)

    def test_stop_closes_everything_and_is_idempotent(
        self, upstream: str, client: httpx.Client
    ) -> None:
        proxy = FaultProxy(upstream).start()
        proxy.add(Fault("stall", path_contains="/blob/s"))
        assert client.get(f"{proxy.url}/blob/a").status_code == 200  # leaves a kept-alive link
        with ThreadPoolExecutor(1) as pool:
            stalled: Future[bytes] = pool.submit(fetch, client, f"{proxy.url}/blob/s")
            assert proxy.wait_stalled(5.0)
            proxy.stop()
            proxy.stop()
            with pytest.raises(TRANSPORT_ERRORS):
                stalled.result(timeout=10)
        assert proxy_threads() == []
        with pytest.raises(httpx.ConnectError):
            client.get(f"{proxy.url}/blob/a")

    def test_url_needs_a_started_proxy(self, upstream: str) -> None:
        with pytest.raises(LocalError):
            _ = FaultProxy(upstream).url
