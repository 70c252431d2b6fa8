"""FactsCache: the manifest an index chooses and the facts of a manifest, read once each from a
store of bytes (a dict here), and refusals that name the JSON path and the blob."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from aoscore_py.blobs.oci import ITEM_CONFIG_MEDIA_TYPE
from aoscore_py.cloud.oci import INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, sha256_digest
from aoscore_py.cm.imagemanager.facts import FactsCache, read_item_config
from aoscore_py.errors import AosCode, BlobError, ProtocolError
from aoscore_py.nodes.itemconfig import ItemConfig, ItemFacts, Quotas

LAYER = "sha256:" + "1" * 64


class Blobs:
    """Content-addressed bytes that count reads; a missing digest is a missing file."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.reads: list[str] = []

    def put(self, doc: Any) -> str:
        raw = doc if isinstance(doc, bytes) else orjson.dumps(doc)
        digest = sha256_digest(raw)
        self.data[digest] = raw
        return digest

    def read(self, digest: str) -> bytes:
        self.reads.append(digest)
        try:
            return self.data[digest]
        except KeyError:
            raise FileNotFoundError(digest) from None


def image(blobs: Blobs, arch: str, item_config: Any = None) -> tuple[str, str]:
    """Store a one-platform image; returns (index digest, manifest digest)."""
    config = blobs.put({"os": "linux", "architecture": arch, "variant": "v8", "rootfs": {}})
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"digest": config},
        "layers": [{"digest": LAYER}],
    }
    if item_config is not None:
        digest = blobs.put(item_config)
        manifest["aosItemConfig"] = {"mediaType": ITEM_CONFIG_MEDIA_TYPE, "digest": digest}
    manifest_digest = blobs.put(manifest)
    platform = {"os": "linux", "architecture": arch}
    index = blobs.put(
        {
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [{"digest": manifest_digest, "platform": platform}],
        }
    )
    return index, manifest_digest


class TestManifestDigest:
    def test_the_entry_for_this_platform_read_once(self) -> None:
        blobs = Blobs()
        index, manifest = image(blobs, "arm64")
        cache = FactsCache(blobs.read, ("linux", "arm64"))
        assert cache.manifest_digest(index) == manifest
        assert cache.manifest_digest(index) == manifest
        assert blobs.reads == [index]

    def test_an_item_pointing_at_a_manifest_is_its_own(self) -> None:
        blobs = Blobs()
        _, manifest = image(blobs, "amd64")
        assert FactsCache(blobs.read, ("linux", "amd64")).manifest_digest(manifest) == manifest

    def test_another_platform_is_refused_and_not_cached(self) -> None:
        blobs = Blobs()
        index, _ = image(blobs, "arm64")
        cache = FactsCache(blobs.read, ("linux", "amd64"))
        for _ in range(2):
            with pytest.raises(BlobError) as info:
                cache.manifest_digest(index)
            assert info.value.code == AosCode.NOT_SUPPORTED
        assert blobs.reads == [index, index]


class TestFacts:
    def test_the_item_config_and_platform_read_once_per_manifest(self) -> None:
        blobs = Blobs()
        _, manifest = image(blobs, "arm64", {"quotas": {"ramLimit": 1024}, "runtimes": ["runc"]})
        cache = FactsCache(blobs.read, ("linux", "arm64"))
        facts = cache.facts(manifest)
        assert facts == ItemFacts(
            ItemConfig(runtimes=("runc",), quotas=Quotas(ram_limit=1024)), "linux", "arm64", "v8"
        )
        reads = len(blobs.reads)
        assert cache.facts(manifest) is facts
        assert len(blobs.reads) == reads == 3, "manifest, item config, image config"

    def test_no_item_config_is_none(self) -> None:
        blobs = Blobs()
        _, manifest = image(blobs, "amd64")
        facts = FactsCache(blobs.read, ("linux", "amd64")).facts(manifest)
        assert facts == ItemFacts(None, "linux", "amd64", "v8")

    def test_an_unparseable_item_config_names_the_path_and_the_blob_and_is_not_cached(
        self,
    ) -> None:
        blobs = Blobs()
        _, manifest = image(blobs, "amd64", {"quotas": {"cpuDMIPSLimit": "fast"}})
        cache = FactsCache(blobs.read, ("linux", "amd64"))
        for _ in range(2):
            with pytest.raises(ProtocolError) as info:
                cache.facts(manifest)
            assert info.value.code == AosCode.INVALID_ARGUMENT
            assert info.value.path.lower() == "$.quotas.cpudmipslimit"
            assert "aosItemConfig sha256:" in info.value.message

    def test_a_missing_blob_is_an_os_error(self) -> None:
        blobs = Blobs()
        _, manifest = image(blobs, "amd64", {"runtimes": ["crun"]})
        item_config = orjson.loads(blobs.data[manifest])["aosItemConfig"]["digest"]
        del blobs.data[item_config]
        with pytest.raises(FileNotFoundError):
            FactsCache(blobs.read, ("linux", "amd64")).facts(manifest)

    def test_prune_keeps_only_live_digests(self) -> None:
        blobs = Blobs()
        one_index, one = image(blobs, "amd64", {"runtimes": ["crun"]})
        two_index, two = image(blobs, "amd64", {"runtimes": ["runc"]})
        cache = FactsCache(blobs.read, ("linux", "amd64"))
        for index in (one_index, two_index):
            cache.facts(cache.manifest_digest(index))
        cache.prune({two_index, two})
        blobs.reads.clear()
        cache.facts(cache.manifest_digest(two_index))
        assert blobs.reads == []
        cache.facts(cache.manifest_digest(one_index))
        assert blobs.reads[0] == one_index and one in blobs.reads


def test_read_item_config_reads_aoscore_spellings() -> None:
    raw = b'{"author": "x", "QUOTAS": {"cpuDMIPSLimit": 7}, "runtimes": [{"codename": "crun"}]}'
    assert read_item_config(raw, "sha256:" + "0" * 64) == ItemConfig(
        runtimes=("crun",), quotas=Quotas(cpu_dmips_limit=7), author="x"
    )
