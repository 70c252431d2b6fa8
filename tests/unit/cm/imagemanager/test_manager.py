"""ImageManager: records over re-hashing, shared blobs once, refusals before any byte, space,
collection. A real Storage (SQLite in tmp_path) and a real test PKI; HTTP is a MockTransport."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from aoscore_py.blobs.download import DownloadPolicy
from aoscore_py.blobs.store import BlobStore
from aoscore_py.cloud.oci import OciImage, build_test_image
from aoscore_py.cm.imagemanager import manager as manager_module
from aoscore_py.cm.imagemanager.manager import ImageManager, ImagePolicy
from aoscore_py.crypto.pki import Pki, init_pki
from aoscore_py.protocol import (
    BlobUrlInfo,
    DesiredItem,
    DesiredStatus,
    Identity,
    ItemState,
)
from aoscore_py.storage import Storage


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return init_pki(tmp_path_factory.mktemp("pki"), "ec")


@pytest.fixture(scope="module")
def alpha() -> OciImage:
    return build_test_image("unit-alpha", extra_layer_bytes=300_000)


@pytest.fixture(scope="module")
def beta() -> OciImage:
    return build_test_image("unit-beta")


class Cloud:
    """Answers requestBlobUrls and serves blob bytes; counts what it was asked for."""

    def __init__(self, pki: Pki, *images: OciImage, signed: bool = True) -> None:
        self.pki = pki
        self.blobs = {d: b for image in images for d, b in image.blobs.items()}
        self.signed = signed
        self.asked: list[str] = []
        self.served: list[str] = []

    async def request_blob_urls(self, digests: Sequence[str]) -> list[BlobUrlInfo]:
        self.asked += digests
        out = []
        for d in digests:
            sha = bytes.fromhex(d.split(":")[1])
            sign = self.pki.sign({"sha256": sha}) if self.signed else None
            out.append(
                BlobUrlInfo(d, (f"http://blobs.test/{d}",), sha, len(self.blobs[d]), None, sign)
            )
        return out

    def handle(self, request: httpx.Request) -> httpx.Response:
        digest = request.url.path.lstrip("/")
        self.served.append(digest)
        return httpx.Response(200, content=self.blobs[digest])


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    store = Storage(tmp_path / "data")
    yield store
    store.close()


def make(
    storage: Storage, tmp_path: Path, cloud: Cloud, pki: Pki, **policy: object
) -> ImageManager:
    http = httpx.AsyncClient(transport=httpx.MockTransport(cloud.handle))
    return ImageManager(
        storage,
        BlobStore(tmp_path / "data"),
        cloud,
        http,
        ImagePolicy(trusted_roots=(pki.root,), download=DownloadPolicy(rounds=1), **policy),  # type: ignore[arg-type]
    )


def desired(pki: Pki, *items: tuple[str, str, OciImage]) -> DesiredStatus:
    return DesiredStatus(
        items=tuple(
            DesiredItem(Identity(id=i, type="service"), v, image.index_digest, Identity(id="o"))
            for i, v, image in items
        ),
        certificates=pki.certificates(),
        certificate_chains=(pki.chain(),),
    )


async def test_items_become_pending_and_a_shared_layer_is_fetched_once(
    storage: Storage, tmp_path: Path, pki: Pki, alpha: OciImage, beta: OciImage
) -> None:
    cloud = Cloud(pki, alpha, beta)
    images = make(storage, tmp_path, cloud, pki)
    records = await images.download(desired(pki, ("a", "1", alpha), ("b", "1", beta)))
    assert [r.state for r in records] == [ItemState.PENDING, ItemState.PENDING]
    shared = set(alpha.layer_digests) & set(beta.layer_digests)
    assert shared, "the busybox layer is common to both"
    assert sorted(cloud.served) == sorted(set(alpha.blobs) | set(beta.blobs))
    assert {b.digest for b in storage.blobs()} == set(alpha.blobs) | set(beta.blobs)


async def test_stored_blobs_are_trusted_by_their_records_not_hashed_again(
    storage: Storage,
    tmp_path: Path,
    pki: Pki,
    alpha: OciImage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cloud = Cloud(pki, alpha)
    images = make(storage, tmp_path, cloud, pki)
    await images.download(desired(pki, ("a", "1", alpha)))
    cloud.asked.clear()
    cloud.served.clear()

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(manager_module, "hash_file", no_hashing)
    records = await images.download(desired(pki, ("a", "1", alpha)))
    assert records[0].state == ItemState.PENDING
    assert cloud.asked == [] and cloud.served == []


async def test_a_truncated_blob_is_caught_and_fetched_again(
    storage: Storage, tmp_path: Path, pki: Pki, alpha: OciImage
) -> None:
    cloud = Cloud(pki, alpha)
    images = make(storage, tmp_path, cloud, pki)
    await images.download(desired(pki, ("a", "1", alpha)))
    layer = alpha.layer_digests[-1]
    path = tmp_path / "data" / "blobs" / "sha256" / layer.split(":")[1]
    path.write_bytes(path.read_bytes()[:1000])
    cloud.served.clear()
    records = await images.download(desired(pki, ("a", "1", alpha)))
    assert records[0].state == ItemState.PENDING
    assert cloud.served == [layer]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == layer.split(":")[1]


async def test_unsigned_blobs_are_refused_before_any_byte_is_fetched(
    storage: Storage, tmp_path: Path, pki: Pki, alpha: OciImage
) -> None:
    cloud = Cloud(pki, alpha, signed=False)
    (record,) = await make(storage, tmp_path, cloud, pki).download(desired(pki, ("a", "1", alpha)))
    assert record.state == ItemState.FAILED
    assert record.error is not None and "no signature" in record.error.message
    assert cloud.served == []


async def test_unsigned_blobs_pass_when_the_unit_allows_them(
    storage: Storage, tmp_path: Path, pki: Pki, alpha: OciImage
) -> None:
    cloud = Cloud(pki, alpha, signed=False)
    images = make(storage, tmp_path, cloud, pki, allow_unsigned=True)
    (record,) = await images.download(desired(pki, ("a", "1", alpha)))
    assert record.state == ItemState.PENDING


async def test_a_unit_that_trusts_another_ca_refuses_the_item(
    storage: Storage, tmp_path: Path, pki: Pki, alpha: OciImage
) -> None:
    other = init_pki(tmp_path / "other-pki", "ec")
    cloud = Cloud(pki, alpha)
    (record,) = await make(storage, tmp_path, cloud, other).download(
        desired(pki, ("a", "1", alpha))
    )
    assert record.state == ItemState.FAILED
    assert record.error is not None and "aoscore-test" in record.error.message
    assert storage.blobs() == [], "nothing unverified enters the store"


async def test_too_little_space_fails_the_item_with_no_memory_before_fetching(
    storage: Storage, tmp_path: Path, pki: Pki, alpha: OciImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    newer = beta_like(alpha)
    cloud = Cloud(pki, alpha, newer)
    images = make(storage, tmp_path, cloud, pki, space_reserve_bytes=0)
    await images.download(desired(pki, ("a", "1", alpha)))
    monkeypatch.setattr(BlobStore, "free_bytes", lambda self: 100)
    cloud.served.clear()
    (record,) = await images.download(desired(pki, ("a", "2", newer)))
    assert record.state == ItemState.FAILED
    assert record.error is not None and record.error.aos_code == 3
    assert "not enough space" in record.error.message
    assert cloud.served == [], "the index alone fits nowhere either: nothing fetched"


def beta_like(image: OciImage) -> OciImage:
    """Another version of an item (a new index and filler layer)."""
    return build_test_image(image.name + "-v2", extra_layer_bytes=400_000)


async def test_collection_after_the_ttl_keeps_shared_blobs(
    storage: Storage, tmp_path: Path, pki: Pki, alpha: OciImage, beta: OciImage
) -> None:
    cloud = Cloud(pki, alpha, beta)
    images = make(storage, tmp_path, cloud, pki, removed_ttl_s=3600)
    first = desired(pki, ("a", "1", alpha))
    await images.download(first)
    images.finalize(first.items, running=set())
    second = desired(pki, ("b", "1", beta))
    await images.download(second)
    images.finalize(second.items, running=set())
    states = {(r.item_id, r.version): r.state for r in storage.items()}
    assert states == {("a", "1"): ItemState.REMOVED, ("b", "1"): ItemState.INSTALLED}
    assert set(alpha.blobs) <= {b.digest for b in storage.blobs()}, "kept within the TTL"
    now = storage.item_updated_at("a", "1") + 3600  # type: ignore[operator]
    collected = images.collect(now=now)
    assert collected["items"] == 1
    assert [(r.item_id, r.state) for r in storage.items()] == [("b", ItemState.INSTALLED)]
    kept = {b.digest for b in storage.blobs()}
    assert kept == set(beta.blobs), "alpha's own blobs are gone, the shared layer stays"
    assert set(BlobStore(tmp_path / "data").stored()) == kept


async def test_a_version_still_running_is_not_retired(
    storage: Storage, tmp_path: Path, pki: Pki, alpha: OciImage, beta: OciImage
) -> None:
    images = make(storage, tmp_path, Cloud(pki, alpha, beta), pki, removed_ttl_s=0)
    first = desired(pki, ("a", "1", alpha))
    await images.download(first)
    images.finalize(first.items, running=set())
    second = desired(pki, ("a", "2", beta))
    await images.download(second)
    images.finalize(second.items, running={("a", "1")})
    states = {(r.item_id, r.version): r.state for r in storage.items()}
    assert states == {("a", "1"): ItemState.INSTALLED, ("a", "2"): ItemState.INSTALLED}


async def test_cancelling_a_download_leaves_records_consistent(
    storage: Storage, tmp_path: Path, pki: Pki, alpha: OciImage
) -> None:
    cloud = Cloud(pki, alpha)
    images = make(storage, tmp_path, cloud, pki)
    task = asyncio.create_task(images.download(desired(pki, ("a", "1", alpha))))
    while not cloud.served:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (record,) = storage.items()
    assert record.state == ItemState.DOWNLOADING
    for blob in storage.blobs():
        assert BlobStore(tmp_path / "data").stat(blob.digest) is not None
