"""BlobStore: a blob is stored whole and verified, or not at all."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aoscore_py.cm.imagemanager.blobstore import BlobStore, digest_hex
from aoscore_py.errors import AosCode, BlobError

DATA = b"layer bytes " * 1000


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        await asyncio.sleep(0)
        yield data[i : i + size]


def leftovers(store: BlobStore) -> list[Path]:
    """Every file under the store's folders."""
    return sorted(p for p in store.root.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "images")


class TestWrite:
    async def test_matching_bytes_are_stored_under_their_digest(self, store: BlobStore) -> None:
        digest = digest_of(DATA)
        assert await store.write(digest, chunks(DATA), len(DATA)) == len(DATA)
        path = store.root / "blobs" / "sha256" / hashlib.sha256(DATA).hexdigest()
        assert path.read_bytes() == DATA
        assert store.path(digest) == path
        assert store.read(digest) == DATA
        assert store.size(digest) == len(DATA)
        assert leftovers(store) == [path], "no temporary file left behind"

    async def test_size_may_be_unknown(self, store: BlobStore) -> None:
        assert await store.write(digest_of(DATA), chunks(DATA)) == len(DATA)

    async def test_an_empty_blob(self, store: BlobStore) -> None:
        assert await store.write(digest_of(b""), chunks(b""), 0) == 0
        assert store.read(digest_of(b"")) == b""

    async def test_writing_again_keeps_one_good_copy(self, store: BlobStore) -> None:
        digest = digest_of(DATA)
        await store.write(digest, chunks(DATA))
        await store.write(digest, chunks(DATA, 7))
        assert leftovers(store) == [store.path(digest)]
        assert store.read(digest) == DATA

    def test_an_unknown_blob_has_no_size(self, store: BlobStore) -> None:
        assert store.size(digest_of(b"absent")) is None


class TestRefusals:
    async def test_wrong_bytes_are_refused_and_nothing_is_left(self, store: BlobStore) -> None:
        digest = digest_of(DATA)
        with pytest.raises(BlobError) as info:
            await store.write(digest, chunks(DATA[:-1] + b"X"), len(DATA))
        assert info.value.code == AosCode.INVALID_CHECKSUM
        assert digest in info.value.message
        assert leftovers(store) == []
        assert store.size(digest) is None

    async def test_a_bad_blob_does_not_replace_a_good_one(self, store: BlobStore) -> None:
        digest = digest_of(DATA)
        await store.write(digest, chunks(DATA))
        with pytest.raises(BlobError):
            await store.write(digest, chunks(b"evil"))
        assert store.read(digest) == DATA

    @pytest.mark.parametrize("delta", [-1, 1])
    async def test_a_size_mismatch_is_refused(self, store: BlobStore, delta: int) -> None:
        digest = digest_of(DATA)
        with pytest.raises(BlobError) as info:
            await store.write(digest, chunks(DATA), len(DATA) + delta)
        assert info.value.code == AosCode.INVALID_CHECKSUM
        assert str(len(DATA) + delta) in info.value.message
        assert leftovers(store) == []

    @pytest.mark.parametrize(
        "digest",
        [
            "sha256:" + "A" * 64,  # upper case
            "sha256:" + "a" * 63,
            "sha256:" + "a" * 65,
            "sha512:" + "a" * 64,
            "a" * 64,
            "sha256:" + "g" * 64,
            "sha256:../../" + "a" * 58,
            "",
        ],
    )
    async def test_a_malformed_digest_is_refused_before_any_write(
        self, store: BlobStore, digest: str
    ) -> None:
        consumed = False

        async def source() -> AsyncIterator[bytes]:
            nonlocal consumed
            consumed = True
            yield b"x"

        with pytest.raises(BlobError) as info:
            await store.write(digest, source())
        assert info.value.code == AosCode.INVALID_ARGUMENT
        assert not consumed
        assert leftovers(store) == []
        with pytest.raises(BlobError):
            store.path(digest)

    def test_digest_hex(self) -> None:
        assert digest_hex("sha256:" + "0f" * 32) == "0f" * 32


class TestInterruption:
    async def test_a_stream_that_fails_midway_leaves_no_file(self, store: BlobStore) -> None:
        async def broken() -> AsyncIterator[bytes]:
            yield DATA[:100]
            raise ConnectionResetError("peer went away")

        with pytest.raises(ConnectionResetError):
            await store.write(digest_of(DATA), broken())
        assert leftovers(store) == []

    async def test_cancellation_raised_by_the_stream_leaves_no_file(self, store: BlobStore) -> None:
        async def cancelled() -> AsyncIterator[bytes]:
            yield DATA[:100]
            raise asyncio.CancelledError

        with pytest.raises(asyncio.CancelledError):
            await store.write(digest_of(DATA), cancelled())
        assert leftovers(store) == []

    async def test_cancelling_the_task_midway_leaves_no_file(self, store: BlobStore) -> None:
        started = asyncio.Event()

        async def slow() -> AsyncIterator[bytes]:
            yield DATA[:100]
            started.set()
            await asyncio.Event().wait()  # never more data
            yield DATA[100:]

        task = asyncio.create_task(store.write(digest_of(DATA), slow()))
        await started.wait()
        assert len(leftovers(store)) == 1, "the partial blob exists while it streams"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert leftovers(store) == []
        assert store.size(digest_of(DATA)) is None

    def test_a_new_store_clears_temporary_files_of_a_previous_run(self, tmp_path: Path) -> None:
        root = tmp_path / "images"
        BlobStore(root)
        stale = root / "tmp" / "abc.123.part"
        stale.write_bytes(b"half a blob from before a power cut")
        store = BlobStore(root)
        assert not stale.exists()
        assert (root / "tmp").is_dir()
        assert leftovers(store) == []


class TestConcurrentWrites:
    async def test_two_writes_of_one_blob_do_not_trip_over_each_other(
        self, store: BlobStore
    ) -> None:
        digest = digest_of(DATA)
        sizes = await asyncio.gather(
            store.write(digest, chunks(DATA, 500)), store.write(digest, chunks(DATA, 700))
        )
        assert sizes == [len(DATA), len(DATA)]
        assert store.read(digest) == DATA
        assert leftovers(store) == [store.path(digest)]

    async def test_a_bad_concurrent_copy_cannot_spoil_the_good_one(self, store: BlobStore) -> None:
        digest = digest_of(DATA)
        bad = DATA[:5000] + b"!" * (len(DATA) - 5000)
        good, evil = await asyncio.gather(
            store.write(digest, chunks(DATA, 500)),
            store.write(digest, chunks(bad, 100)),
            return_exceptions=True,
        )
        assert good == len(DATA)
        assert isinstance(evil, BlobError) and evil.code == AosCode.INVALID_CHECKSUM
        assert store.read(digest) == DATA
        assert leftovers(store) == [store.path(digest)]
