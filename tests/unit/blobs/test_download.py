"""Downloader: every URL, retries, Range resume, digest check, verifier, cancel, parallelism.

The HTTP side is httpx's MockTransport here (pure logic); the real registry behind a fault proxy
is exercised in tests/integration/test_downloads.py.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from aoscore_py.blobs.download import Downloader, DownloadPolicy, blob_client
from aoscore_py.blobs.store import BlobStore
from aoscore_py.errors import AosCode, BlobError
from aoscore_py.iam.tls import client_context
from aoscore_py.protocol import BlobUrlInfo

from .. import loopback

DATA = bytes(range(256)) * 4096  # 1 MiB
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
GOOD = "http://mirror-b.test/blob"
OTHER = "http://mirror-a.test/blob"


def info(*urls: str, data: bytes = DATA) -> BlobUrlInfo:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return BlobUrlInfo(digest, urls, hashlib.sha256(data).digest(), len(data))


class Broken(httpx.AsyncByteStream):
    """A body that stops with a connection error after `n` bytes."""

    def __init__(self, data: bytes, n: int) -> None:
        self.data, self.n = data, n

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data[: self.n]
        raise httpx.ReadError("connection reset by peer")


class Slow(httpx.AsyncByteStream):
    """A body that trickles, so a test can cancel in the middle."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), 4096):
            await asyncio.sleep(0.01)
            yield self.data[i : i + 4096]


def serve(data: bytes = DATA, *, ranges: bool = True) -> Callable[[httpx.Request], httpx.Response]:
    """A well-behaved blob server, honouring `Range: bytes=N-` when `ranges`."""

    def handle(request: httpx.Request) -> httpx.Response:
        wanted = request.headers.get("range")
        if wanted and ranges:
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                return httpx.Response(416)
            headers = {"content-range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            return httpx.Response(206, content=data[start:], headers=headers)
        return httpx.Response(200, content=data)

    return handle


class Server:
    """Routes requests per URL host, and records them."""

    def __init__(self, **hosts: Callable[[httpx.Request], httpx.Response]) -> None:
        self.hosts = hosts
        self.requests: list[tuple[str, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.url.host, request.headers.get("range")))
        handler = self.hosts.get(request.url.host.replace("-", "_").split(".")[0])
        if handler is None:
            raise httpx.ConnectError("connection refused")
        return handler(request)


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path)


class _UrlFailures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "blob.url_failed":
            fields = getattr(record, "fields", {})
            self.seen.append((fields["url"], fields["error"]))


@pytest.fixture
def url_failures() -> Iterator[list[tuple[str, str]]]:
    """Every (url, error) the downloader logs as `blob.url_failed`, in order.

    A handler on the downloader's own logger, so it sees the records whatever another test
    did to the logging tree (`logs.configure` stops propagation).
    """
    logger = logging.getLogger("aoscore.blobs.download")
    handler = _UrlFailures()
    logger.addHandler(handler)
    try:
        yield handler.seen
    finally:
        logger.removeHandler(handler)


def downloader(store: BlobStore, server: Server, **policy: object) -> Downloader:
    async def no_sleep(_delay: float) -> None:
        await asyncio.sleep(0)

    http = httpx.AsyncClient(transport=httpx.MockTransport(server))
    return Downloader(http, store, DownloadPolicy(**policy), sleep=no_sleep)  # type: ignore[arg-type]


def accept(_hashes: Mapping[str, bytes]) -> None:
    pass


async def test_a_blob_is_fetched_checked_and_committed(store: BlobStore) -> None:
    seen: list[Mapping[str, bytes]] = []
    result = await downloader(store, Server(mirror_b=serve())).fetch(
        info(GOOD), ("sha256", "sha512"), seen.append
    )
    assert store.read(DIGEST) == DATA
    assert (result.size, result.fetched, result.resumed_from, result.url) == (
        len(DATA),
        len(DATA),
        0,
        GOOD,
    )
    assert seen == [
        {"sha256": hashlib.sha256(DATA).digest(), "sha512": hashlib.sha512(DATA).digest()}
    ]
    assert store.partial_digests() == {}


async def test_a_partial_file_is_resumed_with_range(store: BlobStore) -> None:
    store.partial_path(DIGEST).write_bytes(DATA[:300_000])
    server = Server(mirror_b=serve())
    result = await downloader(store, server).fetch(info(GOOD), ("sha256",), accept)
    assert server.requests == [("mirror-b.test", "bytes=300000-")]
    assert (result.resumed_from, result.fetched) == (300_000, len(DATA) - 300_000)
    assert store.read(DIGEST) == DATA


async def test_a_complete_partial_is_committed_without_a_request(store: BlobStore) -> None:
    store.partial_path(DIGEST).write_bytes(DATA)
    server = Server(mirror_b=serve())
    result = await downloader(store, server).fetch(info(GOOD), ("sha256",), accept)
    assert server.requests == []
    assert result.fetched == 0
    assert store.read(DIGEST) == DATA


async def test_a_server_that_ignores_range_gives_the_whole_blob(store: BlobStore) -> None:
    store.partial_path(DIGEST).write_bytes(DATA[:1000])
    result = await downloader(store, Server(mirror_b=serve(ranges=False))).fetch(
        info(GOOD), ("sha256",), accept
    )
    assert result.fetched == len(DATA)
    assert store.read(DIGEST) == DATA


async def test_a_wrong_partial_is_dropped_and_the_blob_fetched_whole(store: BlobStore) -> None:
    store.partial_path(DIGEST).write_bytes(b"X" * 1000)
    server = Server(mirror_b=serve())
    await downloader(store, server).fetch(info(GOOD), ("sha256",), accept)
    assert server.requests == [("mirror-b.test", "bytes=1000-"), ("mirror-b.test", None)]
    assert store.read(DIGEST) == DATA


async def test_a_dropped_connection_resumes_where_it_stopped(store: BlobStore) -> None:
    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(200, stream=Broken(DATA, 400_000))
        return serve()(request)

    server = Server(mirror_b=flaky)
    result = await downloader(store, server).fetch(info(GOOD), ("sha256",), accept)
    assert server.requests == [("mirror-b.test", None), ("mirror-b.test", "bytes=400000-")]
    assert result.fetched == len(DATA), "no byte is fetched twice"
    assert store.read(DIGEST) == DATA


async def test_5xx_is_retried_until_it_passes(store: BlobStore) -> None:
    statuses = iter([503, 500, 502])

    def failing(request: httpx.Request) -> httpx.Response:
        status = next(statuses, None)
        return httpx.Response(status) if status else serve()(request)

    server = Server(mirror_b=failing)
    await downloader(store, server).fetch(info(GOOD), ("sha256",), accept)
    assert len(server.requests) == 4
    assert store.read(DIGEST) == DATA


async def test_every_url_is_tried_in_order(store: BlobStore) -> None:
    server = Server(mirror_a=lambda r: httpx.Response(404), mirror_b=serve())
    result = await downloader(store, server).fetch(
        info("http://dead.test/blob", OTHER, GOOD), ("sha256",), accept
    )
    assert [host for host, _ in server.requests] == ["dead.test", "mirror-a.test", "mirror-b.test"]
    assert result.url == GOOD


async def test_a_blob_fails_after_the_last_round(store: BlobStore) -> None:
    server = Server(mirror_b=lambda r: httpx.Response(503))
    with pytest.raises(BlobError) as err:
        await downloader(store, server, rounds=3).fetch(info(GOOD, OTHER), ("sha256",), accept)
    assert len(server.requests) == 6, "3 rounds over 2 URLs"
    assert "HTTP 503" in err.value.message and "ConnectError" in err.value.message


async def test_urls_that_refuse_fail_the_blob_without_rounds(store: BlobStore) -> None:
    server = Server(mirror_b=lambda r: httpx.Response(403))
    with pytest.raises(BlobError) as err:
        await downloader(store, server, rounds=5).fetch(info(GOOD), ("sha256",), accept)
    assert len(server.requests) == 1
    assert "HTTP 403" in err.value.message


async def test_rounds_that_make_progress_do_not_count(store: BlobStore) -> None:
    """A link that drops every 100 kB still delivers the blob, however many drops it takes."""

    def trickle(request: httpx.Request) -> httpx.Response:
        response = serve()(request)
        start = int((request.headers.get("range") or "bytes=0-")[6:-1])
        return httpx.Response(
            response.status_code, headers=response.headers, stream=Broken(DATA[start:], 100_000)
        )

    server = Server(mirror_b=trickle)
    result = await downloader(store, server, rounds=2).fetch(info(GOOD), ("sha256",), accept)
    assert len(server.requests) == 11
    assert result.fetched == len(DATA)


async def test_altered_bytes_are_refused_with_invalid_checksum(store: BlobStore) -> None:
    altered = DATA[:-1] + b"\x00"
    server = Server(mirror_b=serve(altered))
    with pytest.raises(BlobError) as err:
        await downloader(store, server).fetch(info(GOOD), ("sha256",), accept)
    assert err.value.code == AosCode.INVALID_CHECKSUM
    assert store.stat(DIGEST) is None
    assert store.partial_size(DIGEST) == 0, "bad bytes are not kept for resuming"


async def test_a_corrupt_mirror_is_skipped_for_a_good_one(store: BlobStore) -> None:
    server = Server(mirror_a=serve(DATA[:-1] + b"\x00"), mirror_b=serve())
    result = await downloader(store, server).fetch(info(OTHER, GOOD), ("sha256",), accept)
    assert result.url == GOOD
    assert store.read(DIGEST) == DATA


class Endless(httpx.AsyncByteStream):
    """`data`, then more bytes for as long as the client reads; counts what it gave."""

    def __init__(self, data: bytes, cap: int = 64 << 20) -> None:
        self.data, self.cap, self.given = data, cap, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        body = self.data
        while self.given < self.cap:
            chunk = body[:65536] or b"x" * 65536
            body = body[len(chunk) :]
            self.given += len(chunk)
            yield chunk


async def test_more_bytes_than_announced_are_refused_before_the_digest_check(
    store: BlobStore, url_failures: list[tuple[str, str]]
) -> None:
    body = Endless(DATA)
    server = Server(mirror_b=lambda r: httpx.Response(200, stream=body))
    with pytest.raises(BlobError) as err:
        await downloader(store, server).fetch(info(GOOD), ("sha256",), accept)
    # the bytes are not the blob's, as with a digest mismatch: permanent, not fetched again
    assert err.value.code == AosCode.INVALID_CHECKSUM
    assert "no URL gave bytes matching the digest" in err.value.message
    refusal = f"sent more than the {len(DATA)} bytes announced"
    assert f"{GOOD}: {refusal}" in err.value.message, err.value.message
    assert url_failures == [(GOOD, refusal)]
    assert len(server.requests) == 1, "a URL that sends too much is not asked again"
    assert body.given <= len(DATA) + 2 * DownloadPolicy().chunk_bytes, "stopped reading at once"
    assert store.stat(DIGEST) is None
    assert store.partial_size(DIGEST) == 0, "the extra bytes are not kept for resuming"


async def test_an_oversized_body_is_refused_for_that_url_and_the_next_url_used(
    store: BlobStore, url_failures: list[tuple[str, str]]
) -> None:
    server = Server(mirror_a=serve(DATA + b"extra"), mirror_b=serve())
    result = await downloader(store, server).fetch(info(OTHER, GOOD), ("sha256",), accept)
    assert result.url == GOOD
    assert server.requests == [("mirror-a.test", None), ("mirror-b.test", None)]
    assert url_failures == [(OTHER, f"sent more than the {len(DATA)} bytes announced")]
    assert store.read(DIGEST) == DATA


def wrong_range(data: bytes = DATA, start: int = 0) -> Callable[[httpx.Request], httpx.Response]:
    """Answers every request with a 206 for `data` from `start`, whatever range was asked."""

    def handle(request: httpx.Request) -> httpx.Response:
        headers = {"content-range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        return httpx.Response(206, content=data[start:], headers=headers)

    return handle


def unsatisfiable(data: bytes = DATA) -> Callable[[httpx.Request], httpx.Response]:
    """Answers every Range request with 416, and a request without one with the whole blob."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.headers.get("range"):
            return httpx.Response(416, headers={"content-range": f"bytes */{len(data)}"})
        return httpx.Response(200, content=data)

    return handle


async def test_a_206_for_another_range_restarts_from_zero_and_succeeds(
    store: BlobStore, url_failures: list[tuple[str, str]]
) -> None:
    store.partial_path(DIGEST).write_bytes(DATA[:300_000])
    server = Server(mirror_b=wrong_range())
    result = await downloader(store, server).fetch(info(GOOD), ("sha256",), accept)
    assert server.requests == [("mirror-b.test", "bytes=300000-"), ("mirror-b.test", None)]
    assert url_failures == [(GOOD, "HTTP 206 for another range than bytes=300000-")]
    assert result.fetched == len(DATA), "the blob was fetched again from byte 0"
    assert store.read(DIGEST) == DATA


async def test_a_206_for_another_range_every_time_fails_the_blob_after_the_rounds(
    store: BlobStore,
) -> None:
    server = Server(mirror_b=wrong_range(start=5))
    with pytest.raises(BlobError) as err:
        await downloader(store, server, rounds=2).fetch(info(GOOD), ("sha256",), accept)
    assert err.value.code == AosCode.FAILED
    assert f"{GOOD}: HTTP 206 for another range than bytes=0-" in err.value.message
    assert server.requests == [("mirror-b.test", None)] * 2, "retried, each time from 0"
    assert store.partial_size(DIGEST) == 0, "bytes of another range are not kept"


async def test_a_416_for_a_resumed_range_restarts_from_zero_and_succeeds(
    store: BlobStore, url_failures: list[tuple[str, str]]
) -> None:
    store.partial_path(DIGEST).write_bytes(DATA[:300_000])
    server = Server(mirror_b=unsatisfiable())
    result = await downloader(store, server).fetch(info(GOOD), ("sha256",), accept)
    assert server.requests == [("mirror-b.test", "bytes=300000-"), ("mirror-b.test", None)]
    assert url_failures == [(GOOD, "HTTP 416 for bytes=300000-; starting over")]
    assert result.fetched == len(DATA), "the blob was fetched again from byte 0"
    assert store.read(DIGEST) == DATA


async def test_a_416_without_a_range_refuses_the_url(store: BlobStore) -> None:
    server = Server(mirror_b=lambda r: httpx.Response(416))
    with pytest.raises(BlobError) as err:
        await downloader(store, server).fetch(info(GOOD), ("sha256",), accept)
    assert err.value.code == AosCode.FAILED
    assert err.value.message.endswith(f"every URL failed: {GOOD}: HTTP 416"), err.value.message
    assert len(server.requests) == 1


async def test_a_refused_signature_keeps_the_blob_out_of_the_store(store: BlobStore) -> None:
    def refuse(_hashes: Mapping[str, bytes]) -> None:
        raise BlobError("signature does not verify")

    with pytest.raises(BlobError, match="signature"):
        await downloader(store, Server(mirror_b=serve())).fetch(info(GOOD), ("sha256",), refuse)
    assert store.stat(DIGEST) is None


async def test_cancelling_stops_at_once_and_keeps_the_partial_file(store: BlobStore) -> None:
    server = Server(mirror_b=lambda r: httpx.Response(200, stream=Slow(DATA)))
    d = downloader(store, server, chunk_bytes=16_384)
    task = asyncio.create_task(d.fetch(info(GOOD), ("sha256",), accept))
    while not d.active or d.active[DIGEST].present < 100_000:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.partial_size(DIGEST) >= 100_000
    assert d.active == {}


async def test_no_more_than_the_parallel_limit_run_at_once(store: BlobStore) -> None:
    blobs = [bytes([n]) * 200_000 for n in range(8)]
    by_path = {f"/{n}": data for n, data in enumerate(blobs)}
    running = peak = 0

    class Counted(httpx.AsyncByteStream):
        def __init__(self, data: bytes) -> None:
            self.data = data

        async def __aiter__(self) -> AsyncIterator[bytes]:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.02)
            yield self.data
            running -= 1

    server = Server(mirror_b=lambda r: httpx.Response(200, stream=Counted(by_path[r.url.path])))
    d = downloader(store, server, parallel=3)
    await asyncio.gather(
        *(
            d.fetch(info(f"http://mirror-b.test/{n}", data=data), ("sha256",), accept)
            for n, data in enumerate(blobs)
        )
    )
    assert peak == 3
    assert len(store.stored()) == 8


async def test_blobs_are_asked_for_as_stored_and_a_coded_body_is_refused(
    store: BlobStore,
) -> None:
    asked: list[str | None] = []

    def gzipped(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("accept-encoding"))
        return httpx.Response(
            200, content=gzip.compress(DATA), headers={"content-encoding": "gzip"}
        )

    server = Server(mirror_a=gzipped, mirror_b=serve())
    result = await downloader(store, server).fetch(info(OTHER, GOOD), ("sha256",), accept)
    assert asked == ["identity"]
    assert result.url == GOOD
    assert server.requests == [("mirror-a.test", None), ("mirror-b.test", None)]


@pytest.mark.parametrize("kib", [64, 512, 0])
async def test_the_blob_client_bounds_each_transfers_receive_buffer(kib: int) -> None:
    policy = DownloadPolicy(receive_buffer_bytes=kib << 10)
    with loopback.serve() as url:
        async with (
            blob_client(policy, 5.0, client_context()) as http,
            http.stream("GET", url) as response,
        ):
            sock = response.extensions["network_stream"].get_extra_info("socket")
            size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            assert await response.aread() == loopback.BODY
    if kib:
        assert size == 2 * (kib << 10)  # Linux doubles what is asked, for its bookkeeping
    else:
        default = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[1])
        assert size == default  # left to the kernel


async def test_a_tls_refusal_after_the_handshake_moves_on_to_the_next_url(
    store: BlobStore, url_failures: list[tuple[str, str]]
) -> None:
    def refused(_request: httpx.Request) -> httpx.Response:
        raise ssl.SSLError("tlsv13 alert certificate required")

    server = Server(mirror_a=refused, mirror_b=serve())
    result = await downloader(store, server).fetch(info(OTHER, GOOD), ("sha256",), accept)
    assert result.url == GOOD
    assert url_failures[0][0] == OTHER and url_failures[0][1].startswith("TLS: ")
    assert store.read(DIGEST) == DATA
