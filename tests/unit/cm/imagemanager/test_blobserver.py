"""The CM's blob server: a real aiohttp server on loopback, fetched with httpx. Whole blobs,
ranges, HEAD, the answers for bad and unknown digests, no way out of the store, mutual TLS, and
the plaintext rule."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from aoscore_py.blobs.download import Downloader, DownloadPolicy, blob_client
from aoscore_py.blobs.store import BlobStore
from aoscore_py.cm.imagemanager.blobserver import BlobServer
from aoscore_py.errors import BlobError, ConfigError
from aoscore_py.iam.tls import TlsFiles, unit_client_context
from aoscore_py.iam.unitpki import UnitPki, init_unit_pki
from aoscore_py.protocol import BlobUrlInfo

DATA = bytes(range(256)) * 1024 + b"tail"  # 256 KiB and a bit
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
SECRET = b"a partial file, never served"
SECRET_DIGEST = "sha256:" + hashlib.sha256(SECRET).hexdigest()
UNKNOWN = "sha256:" + "0" * 64
REFUSED = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ssl.SSLError)


def put(store: BlobStore, data: bytes) -> str:
    """Commit `data` to the store as the image manager does, after verifying it."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store.partial_path(digest).write_bytes(data)
    store.commit(digest)
    return digest


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    store = BlobStore(tmp_path / "cm")
    put(store, DATA)
    store.partial_path(SECRET_DIGEST).write_bytes(SECRET)
    return store


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> UnitPki:
    return init_unit_pki(tmp_path_factory.mktemp("unit"), nodes=("node-1",))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> UnitPki:
    return init_unit_pki(tmp_path_factory.mktemp("other"), nodes=("node-1",))


@pytest.fixture
async def plain(store: BlobStore) -> AsyncIterator[BlobServer]:
    async with BlobServer(store, "127.0.0.1", insecure=True) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[int, str, dict]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.levelno, record.getMessage(), getattr(record, "fields", {})))


@pytest.fixture
def records() -> Iterator[list[tuple[int, str, dict]]]:
    logger = logging.getLogger("aoscore.imagemanager.blobserver")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class TestServing:
    async def test_urls_name_the_advertised_address(self, store: BlobStore) -> None:
        """Behind a proxy or a NAT, the SMs get the address they reach it at."""
        server = BlobServer(store, "127.0.0.1", 0, insecure=True, public_port=61234)
        async with server:
            assert server.url_for(DIGEST) == f"http://127.0.0.1:61234/blobs/{DIGEST}"
            assert server.port != 61234

    async def test_a_whole_blob(self, plain: BlobServer, http: httpx.AsyncClient) -> None:
        response = await http.get(plain.url_for(DIGEST))
        assert response.status_code == 200
        assert response.content == DATA
        assert response.headers["content-length"] == str(len(DATA))
        assert response.headers["docker-content-digest"] == DIGEST
        assert response.headers["content-type"] == "application/octet-stream"
        assert "content-encoding" not in response.headers
        assert response.headers["accept-ranges"] == "bytes"

    @pytest.mark.parametrize(
        ("wanted", "start", "end"),
        [("bytes=1000-", 1000, len(DATA) - 1), ("bytes=10-19", 10, 19), ("bytes=-4", None, None)],
    )
    async def test_a_range(
        self, plain: BlobServer, http: httpx.AsyncClient, wanted: str, start: int, end: int
    ) -> None:
        response = await http.get(plain.url_for(DIGEST), headers={"Range": wanted})
        if start is None:
            start, end = len(DATA) - 4, len(DATA) - 1
        assert response.status_code == 206
        assert response.headers["content-range"] == f"bytes {start}-{end}/{len(DATA)}"
        assert response.content == DATA[start : end + 1]

    async def test_a_range_past_the_end(self, plain: BlobServer, http: httpx.AsyncClient) -> None:
        response = await http.get(plain.url_for(DIGEST), headers={"Range": "bytes=999999999-"})
        assert response.status_code == 416

    async def test_head(self, plain: BlobServer, http: httpx.AsyncClient) -> None:
        response = await http.head(plain.url_for(DIGEST))
        assert response.status_code == 200
        assert response.headers["content-length"] == str(len(DATA))
        assert response.content == b""

    async def test_the_downloader_resumes_from_it(self, plain: BlobServer, tmp_path: Path) -> None:
        """What the SMs do: the shared downloader, half a blob already there."""
        mine = BlobStore(tmp_path / "sm")
        mine.partial_path(DIGEST).write_bytes(DATA[:100_000])
        info = BlobUrlInfo(DIGEST, (plain.url_for(DIGEST),), hashlib.sha256(DATA).digest(), 0)
        async with blob_client(DownloadPolicy(), 10, ssl.create_default_context()) as client:
            fetched = await Downloader(client, mine).fetch(info, ("sha256",), lambda _h: None)
        assert (fetched.resumed_from, fetched.fetched) == (100_000, len(DATA) - 100_000)
        assert mine.read(DIGEST) == DATA


class TestRefusals:
    async def test_an_unknown_digest_is_404(
        self, plain: BlobServer, http: httpx.AsyncClient
    ) -> None:
        assert (await http.get(plain.url_for(UNKNOWN))).status_code == 404
        assert (await http.head(plain.url_for(UNKNOWN))).status_code == 404

    async def test_a_partial_file_is_never_served(
        self, plain: BlobServer, http: httpx.AsyncClient
    ) -> None:
        response = await http.get(plain.url_for(SECRET_DIGEST))
        assert response.status_code == 404
        assert SECRET not in response.content

    @pytest.mark.parametrize(
        "digest",
        [
            "sha256:xyz",
            "sha256:" + "A" * 64,
            "md5:" + "0" * 32,
            "sha512:" + "0" * 128,
            DIGEST.removeprefix("sha256:"),
            DIGEST + "0",
        ],
    )
    async def test_a_malformed_digest_is_400(
        self, plain: BlobServer, http: httpx.AsyncClient, digest: str
    ) -> None:
        response = await http.get(f"{plain.base_url}/blobs/{digest}")
        assert response.status_code == 400

    async def test_a_digest_the_image_manager_does_not_vouch_for_is_404(
        self, store: BlobStore, http: httpx.AsyncClient
    ) -> None:
        async with BlobServer(store, "127.0.0.1", insecure=True, known=lambda d: False) as s:
            assert (await http.get(s.url_for(DIGEST))).status_code == 404

    @pytest.mark.parametrize(
        "path",
        [
            "/blobs/../partial/{hex}",
            "/blobs/..%2Fpartial%2F{hex}",
            "/blobs/sha256:..%2F..%2Fpartial%2F{hex}",
            "/blobs/sha256%3A..%2F..%2Fpartial%2F{hex}",
            "/blobs/%2e%2e/partial/{hex}",
            "/blobs/{hex}/../../partial/{hex}",
            "/partial/{hex}",
            "/blobs/sha256/{hex}",
        ],
    )
    async def test_no_path_leads_out_of_the_verified_blobs(
        self, plain: BlobServer, path: str
    ) -> None:
        """Raw requests, so no client tidies the path before the server sees it."""
        raw = path.format(hex=SECRET_DIGEST.removeprefix("sha256:"))
        reader, writer = await asyncio.open_connection("127.0.0.1", plain.port)
        writer.write(f"GET {raw} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        answer = await reader.read()
        writer.close()
        status = int(answer.split(b" ", 2)[1])
        assert status in (400, 404)
        assert SECRET not in answer

    async def test_refusals_are_logged_at_warning_requests_at_debug(
        self, plain: BlobServer, http: httpx.AsyncClient, records: list
    ) -> None:
        await http.get(plain.url_for(DIGEST), headers={"Range": "bytes=0-9"})
        await http.get(plain.url_for(UNKNOWN))
        await http.get(f"{plain.base_url}/blobs/bad")
        seen = [(level, event, fields.get("status")) for level, event, fields in records]
        assert seen == [
            (logging.DEBUG, "blobserver.request", 206),
            (logging.WARNING, "blobserver.refused", 404),
            (logging.WARNING, "blobserver.refused", 400),
        ]


class TestTls:
    @pytest.fixture
    async def mutual(self, store: BlobStore, pki: UnitPki) -> AsyncIterator[BlobServer]:
        async with BlobServer(store, "localhost", tls=pki.cm) as server:
            yield server

    async def get(self, url: str, tls: ssl.SSLContext) -> httpx.Response:
        async with httpx.AsyncClient(verify=tls, trust_env=False) as client:
            return await client.get(url)

    async def test_a_node_of_the_unit_gets_blobs(self, mutual: BlobServer, pki: UnitPki) -> None:
        url = mutual.url_for(DIGEST)
        assert url.startswith(f"https://localhost:{mutual.port}/blobs/")
        response = await self.get(url, unit_client_context(pki.node("node-1")))
        assert response.content == DATA

    async def test_a_client_without_a_certificate_is_refused(
        self, mutual: BlobServer, pki: UnitPki
    ) -> None:
        with pytest.raises(REFUSED):
            await self.get(mutual.url_for(DIGEST), ssl.create_default_context(cafile=pki.ca))

    async def test_a_certificate_of_another_unit_is_refused(
        self, mutual: BlobServer, pki: UnitPki, stranger: UnitPki
    ) -> None:
        node = stranger.node("node-1")
        with pytest.raises(REFUSED):
            await self.get(mutual.url_for(DIGEST), unit_client_context(node._replace(ca=pki.ca)))

    async def test_without_client_auth_anyone_trusting_the_ca_gets_blobs(
        self, store: BlobStore, pki: UnitPki
    ) -> None:
        async with BlobServer(store, "127.0.0.1", tls=pki.cm, client_auth=False) as server:
            tls = ssl.create_default_context(cafile=pki.ca)
            assert (await self.get(server.url_for(DIGEST), tls)).content == DATA

    async def test_public_host_names_the_url(self, store: BlobStore, pki: UnitPki) -> None:
        """Bound to every address, the URL carries the name in the CM's certificate."""
        server = BlobServer(store, "0.0.0.0", tls=pki.cm, public_host="localhost")
        async with server:
            assert server.url_for(DIGEST).startswith(f"https://localhost:{server.port}/")
            response = await self.get(server.url_for(DIGEST), unit_client_context(pki.cm))
            assert response.status_code == 200


class TestConfiguration:
    @pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "cm.local", "::"])
    def test_plaintext_off_loopback_is_refused_naming_the_address(
        self, store: BlobStore, host: str
    ) -> None:
        with pytest.raises(ConfigError, match=re.escape(repr(host))):
            BlobServer(store, host, insecure=True)

    def test_tls_files_are_needed_without_insecure(self, store: BlobStore) -> None:
        with pytest.raises(ConfigError, match="TLS files"):
            BlobServer(store, "127.0.0.1")

    def test_not_both(self, store: BlobStore, pki: UnitPki) -> None:
        with pytest.raises(ConfigError, match="not both"):
            BlobServer(store, "127.0.0.1", tls=pki.cm, insecure=True)

    def test_a_missing_tls_file_is_named(self, store: BlobStore, tmp_path: Path) -> None:
        files = TlsFiles(tmp_path / "ca.pem", tmp_path / "cm.pem", tmp_path / "cm.key")
        with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "cm.pem"))):
            BlobServer(store, "127.0.0.1", tls=files)

    def test_an_unspecified_address_needs_a_public_host(
        self, store: BlobStore, pki: UnitPki
    ) -> None:
        with pytest.raises(ConfigError, match="public_host"):
            BlobServer(store, "0.0.0.0", tls=pki.cm)

    async def test_url_for_checks_the_digest(self, plain: BlobServer) -> None:
        with pytest.raises(BlobError, match="unsupported digest"):
            plain.url_for("sha256:../../etc/passwd")
        assert plain.url_for(DIGEST) == f"http://127.0.0.1:{plain.port}/blobs/{DIGEST}"

    async def test_start_stop_and_a_fixed_port(self, store: BlobStore) -> None:
        first = BlobServer(store, "127.0.0.1", insecure=True)
        await first.start()
        port = first.port
        assert port > 0
        await first.stop()
        await first.stop()  # idempotent
        again = BlobServer(store, "127.0.0.1", port, insecure=True)
        async with again, httpx.AsyncClient(trust_env=False) as client:
            assert again.port == port
            assert (await client.get(again.url_for(DIGEST))).status_code == 200

    async def test_ipv6_loopback(self, store: BlobStore) -> None:
        async with (
            BlobServer(store, "::1", insecure=True) as server,
            httpx.AsyncClient(trust_env=False) as client,
        ):
            assert server.url_for(DIGEST).startswith(f"http://[::1]:{server.port}/")
            assert (await client.get(server.url_for(DIGEST))).content == DATA
