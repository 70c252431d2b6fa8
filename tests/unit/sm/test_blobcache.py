"""The SM's blob cache against a real blob server on loopback, serving test images from a
CM-side store: the layout it returns, nothing fetched twice, a shared blob fetched once per
node, tampered bytes refused and not kept, and collection."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import httpx
import pytest

from aoscore_py.blobs.download import DownloadPolicy, blob_client
from aoscore_py.blobs.store import BlobStore
from aoscore_py.cloud.oci import OciImage, build_test_image
from aoscore_py.cm.imagemanager.blobserver import BlobServer
from aoscore_py.errors import AosCode, BlobError, ProtocolError
from aoscore_py.iam.tls import unit_client_context
from aoscore_py.iam.unitpki import init_unit_pki
from aoscore_py.nodes.contract import ImageLayout
from aoscore_py.sm.blobcache import BlobCache

IMAGE_A = build_test_image("cache-a", extra_layer_bytes=200_000, extra_layers=2)
IMAGE_B = build_test_image("cache-b", extra_layer_bytes=100_000)
# AosCore's images may name an item config (quotas, runParameters) in their manifest.
IMAGE_C = build_test_image("cache-c", item_config={"quotas": {"ramLimit": 64 << 20}})
IMAGE_BAD = build_test_image("cache-bad", item_config={"quotas": {"ramLimit": -1}})


def put(store: BlobStore, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store.partial_path(digest).write_bytes(data)
    store.commit(digest)
    return digest


def expected(image: OciImage) -> ImageLayout:
    return ImageLayout(
        image.manifest_digest,
        image.manifest_digest,
        image.manifest,
        image.config_digest,
        tuple(image.layer_digests),
    )


class Cm:
    """The CM's side: its store, its blob server, and `GetBlobsInfos` as the SM's link offers
    it. Records each call and each blob the server is asked for."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self.calls: list[list[str]] = []
        self.served: Counter[str] = Counter()
        self.server = BlobServer(store, "127.0.0.1", insecure=True, known=self._known)

    def _known(self, digest: str) -> bool:
        self.served[digest] += 1
        return True

    async def get_blobs_infos(self, digests: Sequence[str]) -> list[str]:
        self.calls.append(list(digests))
        for digest in digests:
            if self.store.stat(digest) is None:
                raise BlobError(f"blob {digest} is not held by the CM", code=AosCode.NOT_FOUND)
        return [self.server.url_for(d) for d in digests]


@pytest.fixture
async def cm(tmp_path: Path) -> AsyncIterator[Cm]:
    store = BlobStore(tmp_path / "cm")
    for image in (IMAGE_A, IMAGE_B, IMAGE_C, IMAGE_BAD):
        for data in image.blobs.values():
            put(store, data)
    cm = Cm(store)
    async with cm.server:
        yield cm


@pytest.fixture
async def new_cache(tmp_path: Path, cm: Cm) -> AsyncIterator[Callable[..., BlobCache]]:
    clients: list[httpx.AsyncClient] = []

    async def no_sleep(_delay: float) -> None:
        await asyncio.sleep(0)

    def make(**policy: object) -> BlobCache:
        http = httpx.AsyncClient(trust_env=False)
        clients.append(http)
        store = BlobStore(tmp_path / "sm")
        return BlobCache(store, cm, http, DownloadPolicy(**policy), sleep=no_sleep)  # type: ignore[arg-type]

    yield make
    for http in clients:
        await http.aclose()


@pytest.fixture
def cache(new_cache: Callable[..., BlobCache]) -> BlobCache:
    return new_cache()


class TestFetching:
    async def test_the_layout_is_the_images(self, cache: BlobCache) -> None:
        layout = await cache.ensure(IMAGE_A.manifest_digest)
        assert layout == expected(IMAGE_A)
        for digest in (IMAGE_A.manifest_digest, IMAGE_A.config_digest, *IMAGE_A.layer_digests):
            assert cache.path(digest).read_bytes() == IMAGE_A.blobs[digest]
        assert cache.store.partial_digests() == {}

    async def test_the_index_is_never_fetched(self, cache: BlobCache, cm: Cm) -> None:
        await cache.ensure(IMAGE_A.manifest_digest)
        assert IMAGE_A.index_digest not in cm.served
        assert cm.calls == [
            [IMAGE_A.manifest_digest],
            [IMAGE_A.config_digest, *IMAGE_A.layer_digests],
        ]

    async def test_a_second_fetch_downloads_nothing(self, cache: BlobCache, cm: Cm) -> None:
        await cache.ensure(IMAGE_A.manifest_digest)
        calls, served, fetched = len(cm.calls), sum(cm.served.values()), cache.fetched
        assert await cache.ensure(IMAGE_A.manifest_digest) == expected(IMAGE_A)
        assert (len(cm.calls), sum(cm.served.values()), cache.fetched) == (calls, served, fetched)

    async def test_a_new_cache_on_the_same_store_downloads_nothing(
        self, new_cache: Callable[..., BlobCache], cm: Cm
    ) -> None:
        """After an SM restart: what is stored is the cache."""
        await new_cache().ensure(IMAGE_A.manifest_digest)
        served = sum(cm.served.values())
        again = new_cache()
        assert await again.ensure(IMAGE_A.manifest_digest) == expected(IMAGE_A)
        assert (sum(cm.served.values()), again.fetched) == (served, 0)

    async def test_a_blob_two_images_share_is_fetched_once(self, cache: BlobCache, cm: Cm) -> None:
        shared = set(IMAGE_A.layer_digests) & set(IMAGE_B.layer_digests)
        assert shared  # the busybox root file system layer
        a, b = await asyncio.gather(
            cache.ensure(IMAGE_A.manifest_digest), cache.ensure(IMAGE_B.manifest_digest)
        )
        assert (a, b) == (expected(IMAGE_A), expected(IMAGE_B))
        assert all(count == 1 for count in cm.served.values()), cm.served
        assert cache.fetched == len(set(IMAGE_A.blobs) | set(IMAGE_B.blobs)) - 2  # no index

    async def test_two_instances_of_one_image_at_once_fetch_each_blob_once(
        self, cache: BlobCache, cm: Cm
    ) -> None:
        results = await asyncio.gather(*(cache.ensure(IMAGE_A.manifest_digest) for _ in range(3)))
        assert results == [expected(IMAGE_A)] * 3
        assert all(count == 1 for count in cm.served.values()), cm.served

    async def test_at_most_the_policys_transfers_at_once(
        self, new_cache: Callable[..., BlobCache], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        cache = new_cache(parallel=2)
        downloader = cache._downloader
        fetch, running, peak = downloader._fetch, 0, 0

        async def counting(*args: object) -> object:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            try:
                await asyncio.sleep(0.01)
                return await fetch(*args)  # type: ignore[arg-type]
            finally:
                running -= 1

        monkeypatch.setattr(downloader, "_fetch", counting)
        await cache.ensure(IMAGE_A.manifest_digest)
        assert peak == 2, peak

    async def test_over_mutual_tls(self, tmp_path: Path, cm: Cm) -> None:
        pki = init_unit_pki(tmp_path / "pki", nodes=("node-1",))
        tls_server = BlobServer(cm.store, "localhost", tls=pki.cm)
        cm.server = tls_server
        policy = DownloadPolicy()
        tls = unit_client_context(pki.node("node-1"))
        async with tls_server, blob_client(policy, 10, tls) as http:
            cache = BlobCache(BlobStore(tmp_path / "sm-tls"), cm, http, policy)
            assert await cache.ensure(IMAGE_B.manifest_digest) == expected(IMAGE_B)


class TestRefusals:
    async def test_a_tampered_blob_is_refused_by_digest_and_not_kept(
        self, cache: BlobCache, cm: Cm
    ) -> None:
        layer = IMAGE_A.layer_digests[-1]
        path = cm.store.path(layer)
        path.write_bytes(b"X" + path.read_bytes()[1:])  # same size, other bytes
        with pytest.raises(BlobError) as caught:
            await cache.ensure(IMAGE_A.manifest_digest)
        assert caught.value.code == AosCode.INVALID_CHECKSUM
        assert layer in caught.value.message
        assert cache.store.stat(layer) is None
        assert layer not in cache.store.partial_digests()
        # The untampered blobs of the image stay, for the next attempt.
        assert cache.has(IMAGE_A.config_digest)

    async def test_a_tampered_manifest_is_refused(self, cache: BlobCache, cm: Cm) -> None:
        path = cm.store.path(IMAGE_B.manifest_digest)
        path.write_bytes(path.read_bytes().replace(b"layers", b"Layers"))
        with pytest.raises(BlobError) as caught:
            await cache.ensure(IMAGE_B.manifest_digest)
        assert caught.value.code == AosCode.INVALID_CHECKSUM
        assert cache.store.stored() == []
        assert cache.store.partial_digests() == {}

    async def test_a_blob_the_cm_does_not_hold(self, cache: BlobCache) -> None:
        with pytest.raises(BlobError) as caught:
            await cache.ensure("sha256:" + "0" * 64)
        assert caught.value.code == AosCode.NOT_FOUND

    async def test_a_malformed_digest(self, cache: BlobCache, cm: Cm) -> None:
        with pytest.raises(BlobError) as caught:
            await cache.ensure("sha256:../../etc/passwd")
        assert caught.value.code == AosCode.INVALID_ARGUMENT
        assert cm.calls == []

    async def test_an_index_is_not_a_manifest(self, cache: BlobCache) -> None:
        with pytest.raises(BlobError) as caught:
            await cache.ensure(IMAGE_A.index_digest)
        assert caught.value.code == AosCode.INVALID_ARGUMENT

    async def test_a_wrong_number_of_urls(self, cache: BlobCache, cm: Cm) -> None:
        async def one_too_many(digests: Sequence[str]) -> list[str]:
            return [cm.server.url_for(d) for d in digests] * 2

        cm.get_blobs_infos = one_too_many  # type: ignore[method-assign]
        with pytest.raises(ProtocolError, match=r"BlobsInfos\.urls: 2 URLs for 1 digests"):
            await cache.ensure(IMAGE_A.manifest_digest)


class TestItemConfig:
    async def test_it_is_fetched_and_kept_with_the_image(self, cache: BlobCache, cm: Cm) -> None:
        item_config = IMAGE_C.item_config_digest
        assert item_config is not None
        assert await cache.ensure(IMAGE_C.manifest_digest) == expected(IMAGE_C)
        assert cache.path(item_config).read_bytes() == IMAGE_C.blobs[item_config]
        assert item_config in cm.calls[1]
        assert cache.references(IMAGE_C.manifest_digest) >= {item_config}
        cache.collect([IMAGE_C.manifest_digest])
        assert cache.has(item_config)
        assert set(cache.collect([])) >= {item_config}

    async def test_one_that_does_not_read_refuses_the_image_naming_the_path(
        self, cache: BlobCache
    ) -> None:
        with pytest.raises(ProtocolError) as caught:
            await cache.ensure(IMAGE_BAD.manifest_digest)
        assert caught.value.code == AosCode.INVALID_ARGUMENT
        message = caught.value.message
        assert message.startswith(f"aosItemConfig {IMAGE_BAD.item_config_digest}: ")
        assert "$.quotas.ramLimit" in message

    async def test_a_tampered_one_is_refused_by_digest(self, cache: BlobCache, cm: Cm) -> None:
        item_config = IMAGE_C.item_config_digest
        assert item_config is not None
        path = cm.store.path(item_config)
        path.write_bytes(path.read_bytes().replace(b"ramLimit", b"ramLimiT"))
        with pytest.raises(BlobError) as caught:
            await cache.ensure(IMAGE_C.manifest_digest)
        assert caught.value.code == AosCode.INVALID_CHECKSUM and item_config in caught.value.message
        assert not cache.has(item_config)


class TestCollection:
    async def test_blobs_no_wanted_instance_uses_are_removed(self, cache: BlobCache) -> None:
        await cache.ensure(IMAGE_A.manifest_digest)
        await cache.ensure(IMAGE_B.manifest_digest)
        stray = "sha256:" + "1" * 64
        cache.store.partial_path(stray).write_bytes(b"half")
        removed = cache.collect([IMAGE_A.manifest_digest])
        a_blobs = {IMAGE_A.manifest_digest, IMAGE_A.config_digest, *IMAGE_A.layer_digests}
        b_only = {IMAGE_B.manifest_digest, IMAGE_B.config_digest, *IMAGE_B.layer_digests}
        assert set(removed) == (b_only - a_blobs) | {stray}
        assert set(cache.store.stored()) == a_blobs
        assert cache.store.partial_digests() == {}
        assert await cache.ensure(IMAGE_A.manifest_digest) == expected(IMAGE_A)

    async def test_nothing_wanted_removes_everything(self, cache: BlobCache) -> None:
        await cache.ensure(IMAGE_B.manifest_digest)
        assert set(cache.collect([])) == {
            IMAGE_B.manifest_digest,
            IMAGE_B.config_digest,
            *IMAGE_B.layer_digests,
        }
        assert cache.store.stored() == []
        assert cache.collect([]) == []

    async def test_a_fetch_in_progress_is_not_collected(self, cache: BlobCache, cm: Cm) -> None:
        started = asyncio.Event()
        release = asyncio.Event()
        real = cm.get_blobs_infos

        async def slow(digests: Sequence[str]) -> list[str]:
            if IMAGE_A.config_digest in digests:
                started.set()
                await release.wait()
            return await real(digests)

        cm.get_blobs_infos = slow  # type: ignore[method-assign]
        task = asyncio.create_task(cache.ensure(IMAGE_A.manifest_digest))
        await started.wait()
        assert cache.collect([]) == []  # the manifest is pinned by the fetch under way
        release.set()
        assert await task == expected(IMAGE_A)
        assert len(cache.collect([])) == 1 + 1 + len(IMAGE_A.layer_digests)
