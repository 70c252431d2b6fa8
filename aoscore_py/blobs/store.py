"""Content-addressed blob files, and the partial files that downloads resume from.

    blobs/sha256/<hex>      a complete blob, verified before it was moved here
    partial/<hex>           the bytes of an unfinished download, kept across restarts

A blob reaches `blobs/` only by `commit`: its partial file is fsynced, renamed into place, and
the folder fsynced. What sits in `blobs/` is therefore whole; whether it is still the blob that
was verified is what the store's records (size and mtime) answer without hashing it again.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from ..errors import AosCode, BlobError
from ..fsutil import commit_file, fsync_dir, make_dirs

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_HEX = re.compile(r"^[0-9a-f]{64}$")
HASH_CHUNK = 1 << 20
# Errors that mean the file system is full, not that the file is wrong.


def digest_hex(digest: str) -> str:
    """The hex part of a `sha256:<hex>` digest.

    Raises:
        BlobError: notSupported for a sha384 or sha512 digest (the protocol allows them, this
            store keeps sha256 blobs only); invalidArgument for anything else that is not a
            sha256 digest of 64 lowercase hex characters.
    """
    match = _DIGEST.match(digest)
    if match is None:
        if digest.startswith(("sha384:", "sha512:")):
            raise BlobError(
                f"digest {digest!r}: this unit stores sha256 blobs only",
                code=AosCode.NOT_SUPPORTED,
            )
        raise BlobError(f"unsupported digest {digest!r}", code=AosCode.INVALID_ARGUMENT)
    return match.group(1)


def hash_file(path: Path) -> str:
    """The `sha256:<hex>` digest of a file's bytes."""
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


class BlobStore:
    """Blob and partial files under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.partials = root / "partial"
        make_dirs(self.blobs)
        make_dirs(self.partials)

    def path(self, digest: str) -> Path:
        return self.blobs / digest_hex(digest)

    def partial_path(self, digest: str) -> Path:
        return self.partials / digest_hex(digest)

    def stat(self, digest: str) -> os.stat_result | None:
        """The stored blob's file status, or None when it is not stored."""
        try:
            return self.path(digest).stat()
        except FileNotFoundError:
            return None

    def partial_size(self, digest: str) -> int:
        """Bytes of `digest` already downloaded and not yet committed."""
        try:
            return self.partial_path(digest).stat().st_size
        except FileNotFoundError:
            return 0

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def commit(self, digest: str) -> os.stat_result:
        """Move a complete, fsynced partial file into the store durably; returns its status."""
        final = self.path(digest)
        commit_file(self.partial_path(digest), final)
        return final.stat()

    def remove(self, digest: str) -> None:
        """Remove a stored blob (its record goes first, so a cut leaves nothing trusted)."""
        self.path(digest).unlink(missing_ok=True)

    def remove_partial(self, digest: str) -> None:
        self.partial_path(digest).unlink(missing_ok=True)

    def sync(self) -> None:
        """Make removals durable."""
        fsync_dir(self.blobs)
        fsync_dir(self.partials)

    def stored(self) -> list[str]:
        """The digests of every file in `blobs/` (recorded or not)."""
        return sorted(f"sha256:{p.name}" for p in self.blobs.iterdir() if _HEX.match(p.name))

    def partial_digests(self) -> dict[str, int]:
        """Digest -> bytes present, for every partial file."""
        out: dict[str, int] = {}
        for p in self.partials.iterdir():
            if _HEX.match(p.name):
                out[f"sha256:{p.name}"] = p.stat().st_size
        return out

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free
