"""Content-addressed blob files: `blobs/sha256/<hex>`, written whole or not at all.

A blob is written under `tmp/`, hashed as it streams, fsynced, checked against its digest,
renamed into place, and the folder fsynced. Only then is it recorded as verified.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from ...errors import AosCode, BlobError
from ...fsutil import commit_file

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


def digest_hex(digest: str) -> str:
    """The hex part of a `sha256:<hex>` digest.

    Raises:
        BlobError: not a sha256 digest of 64 lowercase hex characters.
    """
    match = _DIGEST.match(digest)
    if match is None:
        raise BlobError(f"unsupported digest {digest!r}", code=AosCode.INVALID_ARGUMENT)
    return match.group(1)


class BlobStore:
    """Blob files under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.tmp = root / "tmp"
        self.blobs.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.blobs / digest_hex(digest)

    def size(self, digest: str) -> int | None:
        """The stored blob's size, or None when it is not stored."""
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    async def write(
        self, digest: str, chunks: AsyncIterator[bytes], expected_size: int | None = None
    ) -> int:
        """Store the bytes of `chunks` as `digest` if, and only if, they hash to it.

        Returns:
            The number of bytes stored.

        Raises:
            BlobError: the bytes do not match the digest or the expected size (invalidChecksum).
        """
        want = digest_hex(digest)
        # unique per write: two writes of one blob must never share (or unlink) a temporary file
        tmp = self.tmp / f"{want}.{os.getpid()}.{uuid.uuid4().hex}.part"
        hasher = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as f:
                async for chunk in chunks:
                    hasher.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
                f.flush()
                os.fsync(f.fileno())
            if expected_size is not None and size != expected_size:
                raise BlobError(
                    f"blob {digest}: got {size} bytes, expected {expected_size}",
                    code=AosCode.INVALID_CHECKSUM,
                )
            if hasher.hexdigest() != want:
                raise BlobError(
                    f"blob {digest}: content hashes to sha256:{hasher.hexdigest()}",
                    code=AosCode.INVALID_CHECKSUM,
                )
            commit_file(tmp, self.path(digest))
        finally:
            tmp.unlink(missing_ok=True)
        return size
