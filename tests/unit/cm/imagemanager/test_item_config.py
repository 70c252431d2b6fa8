"""ImageManager and AosCore's item config (`aosItemConfig`): fetched, verified, resumed, adopted
and collected as one of the item's blobs; an unparseable one fails its item for good; and
`item_facts`, the launcher's query, reads it (and the image platform) once per manifest.
A real Storage (SQLite in tmp_path) and a real test PKI; HTTP is a MockTransport."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from aoscore_py.blobs.download import DownloadPolicy
from aoscore_py.blobs.store import BlobStore
from aoscore_py.cloud.oci import OciImage, build_test_image, host_architecture, sha256_digest
from aoscore_py.cm.imagemanager.manager import ImageManager, ImagePolicy
from aoscore_py.crypto.pki import Pki, init_pki
from aoscore_py.errors import AosCode, AosError, Retry, classify_code
from aoscore_py.nodes.itemconfig import (
    ItemConfig,
    ItemFacts,
    Quotas,
    RequestedResources,
    item_config_json,
)
from aoscore_py.protocol import DesiredItem, DesiredStatus, Identity, ItemState
from aoscore_py.storage import Storage

from .stubs import BlobCloud

CONFIG = ItemConfig(
    runtimes=("docker",),
    quotas=Quotas(cpu_dmips_limit=5000, ram_limit=512 << 20, pids_limit=64),
    requested_resources=RequestedResources(cpu=1000, ram=128 << 20),
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return init_pki(tmp_path_factory.mktemp("pki"), "ec")


@pytest.fixture(scope="module")
def limited() -> OciImage:
    """An item whose manifest names an item config."""
    return build_test_image("ic-limited", item_config=item_config_json(CONFIG))


@pytest.fixture(scope="module")
def plain() -> OciImage:
    return build_test_image("ic-plain")


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    store = Storage(tmp_path / "data")
    yield store
    store.close()


def make(storage: Storage, tmp_path: Path, cloud: BlobCloud, **policy: Any) -> ImageManager:
    http = httpx.AsyncClient(transport=httpx.MockTransport(cloud.handle))
    return ImageManager(
        storage,
        BlobStore(tmp_path / "data"),
        cloud,
        http,
        ImagePolicy(trusted_roots=(cloud.pki.root,), download=DownloadPolicy(rounds=1), **policy),
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


def config_digest(image: OciImage) -> str:
    digest = image.item_config_digest
    assert digest is not None
    return digest


class TestDownload:
    async def test_the_item_config_is_fetched_verified_and_recorded_with_the_other_blobs(
        self, storage: Storage, tmp_path: Path, pki: Pki, limited: OciImage
    ) -> None:
        cloud = BlobCloud(pki, [limited])
        (record,) = await make(storage, tmp_path, cloud).download(desired(pki, ("a", "1", limited)))
        assert record.state == ItemState.PENDING
        item_config = config_digest(limited)
        assert item_config in cloud.asked and item_config in cloud.served
        assert sorted(cloud.served) == sorted(limited.blobs)
        assert {b.digest for b in storage.blobs()} == set(limited.blobs)

    async def test_an_unsigned_item_config_is_refused_before_any_byte_of_it(
        self, storage: Storage, tmp_path: Path, pki: Pki, limited: OciImage
    ) -> None:
        item_config = config_digest(limited)
        cloud = BlobCloud(pki, [limited], unsigned={item_config})
        (record,) = await make(storage, tmp_path, cloud).download(desired(pki, ("a", "1", limited)))
        assert record.state == ItemState.FAILED
        assert record.error is not None and "no signature" in record.error.message
        assert item_config in record.error.message
        assert item_config not in cloud.served

    async def test_altered_item_config_bytes_fail_the_item_and_never_enter_the_store(
        self, storage: Storage, tmp_path: Path, pki: Pki, limited: OciImage
    ) -> None:
        item_config = config_digest(limited)
        forged = limited.blobs[item_config].replace(b"5000", b"9000")
        cloud = BlobCloud(pki, [limited], tampered={item_config: forged})
        (record,) = await make(storage, tmp_path, cloud).download(desired(pki, ("a", "1", limited)))
        assert record.state == ItemState.FAILED
        assert record.error is not None
        assert classify_code(record.error.aos_code) == Retry.PERMANENT
        assert item_config not in {b.digest for b in storage.blobs()}
        assert BlobStore(tmp_path / "data").stat(item_config) is None

    @pytest.mark.parametrize(
        ("document", "path"),
        [
            ({"quotas": {"ramLimit": -1}}, "$.quotas.ramLimit"),
            ({"runtimes": [{"codename": ""}]}, "$.runtimes[0]"),
            ({"balancingPolicy": "sometimes"}, "$.balancingPolicy"),
            ([], "$"),
        ],
    )
    async def test_an_unparseable_item_config_fails_the_item_for_good_naming_the_path(
        self, storage: Storage, tmp_path: Path, pki: Pki, document: Any, path: str
    ) -> None:
        bad = with_item_config_bytes(build_test_image("ic-bad"), orjson.dumps(document))
        cloud = BlobCloud(pki, [bad])
        images = make(storage, tmp_path, cloud)
        (record,) = await images.download(desired(pki, ("a", "1", bad)))
        assert record.state == ItemState.FAILED
        assert record.error is not None
        assert record.error.aos_code == AosCode.INVALID_ARGUMENT
        assert classify_code(record.error.aos_code) == Retry.PERMANENT
        assert record.error.message.startswith(path), record.error.message
        assert config_digest(bad) in record.error.message
        with pytest.raises(AosError) as info:
            images.item_facts("a", "1")
        assert info.value.code == AosCode.NOT_FOUND

    async def test_a_stored_item_config_that_lost_its_record_is_adopted_not_fetched(
        self, storage: Storage, tmp_path: Path, pki: Pki, limited: OciImage
    ) -> None:
        cloud = BlobCloud(pki, [limited])
        images = make(storage, tmp_path, cloud)
        await images.download(desired(pki, ("a", "1", limited)))
        storage.delete_blob(config_digest(limited))
        cloud.served.clear()
        (record,) = await images.download(desired(pki, ("a", "1", limited)))
        assert record.state == ItemState.PENDING
        assert cloud.served == []
        assert config_digest(limited) in {b.digest for b in storage.blobs()}

    async def test_a_partial_item_config_is_resumed_with_range(
        self, storage: Storage, tmp_path: Path, pki: Pki, limited: OciImage
    ) -> None:
        item_config = config_digest(limited)
        data = limited.blobs[item_config]
        store = BlobStore(tmp_path / "data")
        store.partial_path(item_config).write_bytes(data[: len(data) // 2])
        cloud = BlobCloud(pki, [limited])
        (record,) = await make(storage, tmp_path, cloud).download(desired(pki, ("a", "1", limited)))
        assert record.state == ItemState.PENDING
        fetches = [r for d, r in zip(cloud.served, cloud.ranges, strict=True) if d == item_config]
        assert fetches == [f"bytes={len(data) // 2}-"]
        assert store.read(item_config) == data

    async def test_the_item_config_is_the_items_blob_for_collection(
        self, storage: Storage, tmp_path: Path, pki: Pki, limited: OciImage, plain: OciImage
    ) -> None:
        images = make(storage, tmp_path, BlobCloud(pki, [limited, plain]), removed_ttl_s=3600)
        item_config = config_digest(limited)
        first = desired(pki, ("a", "1", limited))
        await images.download(first)
        assert images.references(limited.index_digest) == set(limited.blobs)
        images.finalize(first.items, running=set())
        second = desired(pki, ("a", "2", plain))
        await images.download(second)
        images.finalize(second.items, running=set())
        assert item_config in {b.digest for b in storage.blobs()}, "kept within the TTL"
        assert images.item_facts("a", "1").config == CONFIG, "a removed version still answers"
        now = storage.item_updated_at("a", "1") + 3600  # type: ignore[operator]
        images.collect(now=now)
        assert item_config not in {b.digest for b in storage.blobs()}
        assert BlobStore(tmp_path / "data").stat(item_config) is None
        with pytest.raises(AosError) as info:
            images.item_facts("a", "1")
        assert info.value.code == AosCode.NOT_FOUND
        assert "not known" in info.value.message, "by its record, not by a missing file"


class TestItemFacts:
    async def test_the_item_config_and_the_image_platform(
        self, storage: Storage, tmp_path: Path, pki: Pki, limited: OciImage, plain: OciImage
    ) -> None:
        images = make(storage, tmp_path, BlobCloud(pki, [limited, plain]))
        await images.download(desired(pki, ("a", "1", limited), ("b", "1", plain)))
        assert images.item_facts("a", "1") == ItemFacts(CONFIG, "linux", host_architecture(), None)
        assert images.item_facts("b", "1") == ItemFacts(None, "linux", host_architecture(), None)

    async def test_parsed_once_per_manifest(
        self,
        storage: Storage,
        tmp_path: Path,
        pki: Pki,
        limited: OciImage,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        reads: list[str] = []
        original = BlobStore.read

        def counting(self: BlobStore, digest: str) -> bytes:
            reads.append(digest)
            return original(self, digest)

        monkeypatch.setattr(BlobStore, "read", counting)
        images = make(storage, tmp_path, BlobCloud(pki, [limited]))
        await images.download(desired(pki, ("a", "1", limited), ("twin", "7", limited)))
        reads.clear()
        first = images.item_facts("a", "1")
        assert set(reads) == {
            limited.manifest_digest,
            limited.config_digest,
            config_digest(limited),
        }, "the index was read while downloading; its manifest is known"
        reads.clear()
        for _ in range(1000):
            assert images.item_facts("a", "1") is first
        assert images.item_facts("twin", "7") is first, "same manifest, same facts"
        assert reads == []

    async def test_a_record_written_after_an_answer_is_honoured(
        self, storage: Storage, tmp_path: Path, pki: Pki, limited: OciImage, plain: OciImage
    ) -> None:
        """The same version republished with another index: the cached answer goes with the
        record, while it downloads, once it is stored, and once it failed."""
        bad = with_item_config_bytes(build_test_image("ic-bad"), b'{"quotas": {"pidsLimit": -1}}')
        images = make(storage, tmp_path, BlobCloud(pki, [limited, plain, bad]))
        await images.download(desired(pki, ("a", "1", limited)))
        assert images.item_facts("a", "1").config == CONFIG
        await images.download(desired(pki, ("a", "1", plain)))
        assert images.item_facts("a", "1").config is None
        (record,) = await images.download(desired(pki, ("a", "1", bad)))
        assert record.state == ItemState.FAILED
        with pytest.raises(AosError) as info:
            images.item_facts("a", "1")
        assert info.value.code == AosCode.NOT_FOUND

    async def test_a_restarted_manager_answers_for_stored_items(
        self, storage: Storage, tmp_path: Path, pki: Pki, limited: OciImage
    ) -> None:
        await make(storage, tmp_path, BlobCloud(pki, [limited])).download(
            desired(pki, ("a", "1", limited))
        )
        cloud = BlobCloud(pki, [limited])
        assert make(storage, tmp_path, cloud).item_facts("a", "1").config == CONFIG
        assert cloud.asked == [] and cloud.served == []

    async def test_an_unknown_or_unfinished_version_is_not_found(
        self, storage: Storage, tmp_path: Path, pki: Pki, limited: OciImage
    ) -> None:
        images = make(storage, tmp_path, BlobCloud(pki, [limited]))
        with pytest.raises(AosError) as info:
            images.item_facts("a", "1")
        assert info.value.code == AosCode.NOT_FOUND
        assert "not known" in info.value.message
        unsigned = BlobCloud(pki, [limited], unsigned=set(limited.blobs))
        await make(storage, tmp_path, unsigned).download(desired(pki, ("a", "1", limited)))
        with pytest.raises(AosError) as info:
            images.item_facts("a", "1")
        assert info.value.code == AosCode.NOT_FOUND
        assert "failed" in info.value.message

    async def test_a_blob_gone_from_the_store_is_not_found(
        self, storage: Storage, tmp_path: Path, pki: Pki, limited: OciImage
    ) -> None:
        images = make(storage, tmp_path, BlobCloud(pki, [limited]))
        await images.download(desired(pki, ("a", "1", limited)))
        BlobStore(tmp_path / "data").remove(limited.config_digest)
        with pytest.raises(AosError) as info:
            images.item_facts("a", "1")
        assert info.value.code == AosCode.NOT_FOUND
        assert "missing" in info.value.message


def with_item_config_bytes(image: OciImage, data: bytes) -> OciImage:
    """`image` whose manifest names `data` as its item config (any bytes, even a JSON array,
    which `build_test_image` would not write)."""
    manifest = image.manifest
    manifest["aosItemConfig"] = {"digest": sha256_digest(data), "size": len(data)}
    manifest_raw = orjson.dumps(manifest)
    index = orjson.loads(image.blobs[image.index_digest])
    index["manifests"][0].update(digest=sha256_digest(manifest_raw), size=len(manifest_raw))
    index_raw = orjson.dumps(index)
    blobs = {
        d: b for d, b in image.blobs.items() if d not in (image.index_digest, image.manifest_digest)
    }
    blobs.update({sha256_digest(b): b for b in (index_raw, manifest_raw, data)})
    return OciImage(image.name, sha256_digest(index_raw), blobs)
