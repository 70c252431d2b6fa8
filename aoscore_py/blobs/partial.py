"""A blob's partial file: the bytes received so far, with running hashes of all of them.

Bytes are appended as they arrive (on an I/O pool, so hashing and writing run on another core
while the event loop reads), the file is hashed again when a transfer resumes it, and it is
fsynced before the blob store commits it. What a cancel or a kill leaves is kept for the next
attempt to resume with HTTP Range.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
from collections.abc import Sequence
from typing import IO, Any

from .store import HASH_CHUNK, BlobStore

# Hashing, writing and fsyncing blob bytes happen here, off the event loop.
IO_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="blob-io")


class PartialFile:
    """The partial file of one blob, open for appending, with hashes of every byte in it."""

    def __init__(self, store: BlobStore, digest: str, hash_names: Sequence[str]) -> None:
        self.path = store.partial_path(digest)
        self.hash_names = tuple(dict.fromkeys(("sha256", *hash_names)))
        self.file: IO[bytes] | None = None
        self.size = 0
        self._hashers: dict[str, Any] = {}
        self._job: concurrent.futures.Future[None] | None = None

    async def open(self, limit: int | None) -> int:
        """Open the file and hash what is already in it (yielding between chunks, so a cancel
        is not held up); a file longer than `limit` is started again. Returns the bytes kept."""
        self.file = open(self.path, "a+b")  # noqa: SIM115 - closed by close()
        self._hashers = {name: hashlib.new(name) for name in self.hash_names}
        self.file.seek(0)
        size = 0
        while chunk := self.file.read(HASH_CHUNK):
            for h in self._hashers.values():
                h.update(chunk)
            size += len(chunk)
            await asyncio.sleep(0)
        self.size = size
        if limit is not None and size > limit:
            self.reset()
        return self.size

    def reset(self) -> None:
        assert self.file is not None
        self.file.truncate(0)
        self.file.seek(0)
        self.size = 0
        self._hashers = {name: hashlib.new(name) for name in self.hash_names}

    def write(self, chunks: Sequence[bytes]) -> None:
        """Append and hash `chunks` as received: each is written as it is, with no copy made
        to join them (at a blob's rates every pass over the bytes shows)."""
        assert self.file is not None
        for chunk in chunks:
            self.file.write(chunk)
            for h in self._hashers.values():
                h.update(chunk)
            self.size += len(chunk)

    async def write_async(self, chunks: Sequence[bytes]) -> None:
        """`write` on the I/O pool: hashing and writing release the GIL there, so they run on
        another core while the loop reads the next bytes of every transfer."""
        self._job = IO_POOL.submit(self.write, chunks)
        await asyncio.wrap_future(self._job)

    def settle(self) -> None:
        """Wait for a write still running on the pool (a cancel does not stop it)."""
        job, self._job = self._job, None
        if job is not None:
            concurrent.futures.wait([job])

    async def finish(self) -> dict[str, bytes]:
        """Flush and fsync (on the pool, so other transfers go on); the hashes of the file."""
        assert self.file is not None
        self.file.flush()
        fd = os.dup(self.file.fileno())  # closing the file on a cancel cannot pull it away
        await asyncio.wrap_future(IO_POOL.submit(_fsync_and_close, fd))
        return {name: h.digest() for name, h in self._hashers.items()}

    def close(self) -> None:
        self.settle()
        if self.file is not None:
            self.file.close()
            self.file = None


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
