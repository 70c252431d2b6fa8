"""BlobStore: complete blobs are committed whole; partial files survive for resuming."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from aoscore_py.blobs.store import BlobStore, digest_hex, hash_file
from aoscore_py.errors import AosCode, BlobError

DATA = b"blob bytes " * 1000


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "images")


def test_a_committed_partial_becomes_the_blob(store: BlobStore) -> None:
    digest = digest_of(DATA)
    store.partial_path(digest).write_bytes(DATA)
    assert store.partial_digests() == {digest: len(DATA)}
    stat = store.commit(digest)
    assert stat.st_size == len(DATA)
    assert store.read(digest) == DATA
    assert store.partial_size(digest) == 0
    assert store.stored() == [digest]
    assert hash_file(store.path(digest)) == digest


def test_partials_survive_a_new_store_on_the_same_folder(tmp_path: Path) -> None:
    digest = digest_of(DATA)
    BlobStore(tmp_path).partial_path(digest).write_bytes(DATA[:100])
    assert BlobStore(tmp_path).partial_size(digest) == 100


def test_removing(store: BlobStore) -> None:
    digest = digest_of(DATA)
    store.partial_path(digest).write_bytes(DATA)
    store.commit(digest)
    store.remove(digest)
    store.remove(digest)
    store.remove_partial(digest)
    store.sync()
    assert store.stat(digest) is None
    assert store.stored() == []


def test_files_that_are_not_digests_are_ignored(store: BlobStore) -> None:
    (store.blobs / "notes.txt").write_text("x")
    (store.partials / "x.tmp").write_text("x")
    assert store.stored() == []
    assert store.partial_digests() == {}


@pytest.mark.parametrize("digest", ["sha256:" + "A" * 64, "sha256:abc", "sha256:../" + "a" * 61])
def test_malformed_digests_are_refused(store: BlobStore, digest: str) -> None:
    with pytest.raises(BlobError) as err:
        store.path(digest)
    assert err.value.code == AosCode.INVALID_ARGUMENT
    with pytest.raises(BlobError):
        digest_hex(digest)


@pytest.mark.parametrize("digest", ["sha384:" + "a" * 96, "sha512:" + "a" * 128])
def test_digests_the_protocol_allows_but_the_store_does_not_keep_are_not_supported(
    store: BlobStore, digest: str
) -> None:
    with pytest.raises(BlobError, match="sha256 blobs only") as err:
        store.path(digest)
    assert err.value.code == AosCode.NOT_SUPPORTED


def test_free_bytes_is_the_file_systems(store: BlobStore) -> None:
    assert store.free_bytes() > 0
