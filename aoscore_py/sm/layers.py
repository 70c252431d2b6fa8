"""Image layers as `docker load` needs them: which ones pass as they are, which are decompressed.

Docker 20.10 reads plain and gzip layer tars (it sniffs the bytes), not zstd. A zstd layer is
recognised by its media type or by the zstd magic number, whatever the media type claims, and is
decompressed to a plain tar before it goes into the archive; its digest after decompression is the
config's diffID, which `docker load` checks. An encrypted layer, or a media type that is not a
layer tar at all, is refused with notSupported before anything is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import zstandard

from ..errors import AosCode, RemoteError

PLAIN = "tar"
GZIP = "gzip"
ZSTD = "zstd"

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20

# The media types of a layer tar (OCI and Docker spellings, distributable or not).
_LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar",
)


def compression(media_type: str | None, head: bytes = b"") -> str:
    """How a layer is compressed, from its media type and its first bytes.

    Args:
        media_type: the manifest's `mediaType` for the layer; None when it names none (then the
            bytes decide, and Docker sniffs plain and gzip itself).
        head: the blob's first bytes (4 are enough).

    Raises:
        RemoteError: notSupported for an encrypted layer or a media type that is no layer tar.
    """
    if head.startswith(ZSTD_MAGIC):
        return ZSTD
    if not media_type:
        return GZIP if head.startswith(b"\x1f\x8b") else PLAIN
    if media_type.endswith("+encrypted"):
        raise RemoteError(
            f"layer media type {media_type}: encrypted layers are not supported",
            code=AosCode.NOT_SUPPORTED,
        )
    base, _, suffix = media_type.partition("+")
    base = base.removesuffix(".gzip")  # Docker's `...diff.tar.gzip`
    if base not in _LAYER_TYPES:
        raise RemoteError(
            f"layer media type {media_type} is not a layer tar", code=AosCode.NOT_SUPPORTED
        )
    if suffix == "zstd":
        return ZSTD
    if suffix == "gzip" or media_type.endswith(".gzip"):
        return GZIP
    if suffix:
        raise RemoteError(
            f"layer media type {media_type}: compression {suffix} is not supported",
            code=AosCode.NOT_SUPPORTED,
        )
    return PLAIN


def read_head(path: Path) -> bytes:
    """The first bytes of a blob, enough for `compression`."""
    with open(path, "rb") as f:
        return f.read(4)


def decompress_zstd(source: Path, target: BinaryIO) -> int:
    """Write the zstd blob at `source` decompressed into `target`; return the bytes written.

    Streams in chunks, so a large layer never sits in memory; a frame without a content size
    (a streamed compressor's) is fine.

    Raises:
        RemoteError: invalidChecksum when the blob is not valid zstd.
        OSError: the blob cannot be read or the target written.
    """
    decompressor = zstandard.ZstdDecompressor()
    with open(source, "rb") as f:
        try:
            _, written = decompressor.copy_stream(f, target, read_size=_CHUNK, write_size=_CHUNK)
        except zstandard.ZstdError as exc:
            raise RemoteError(
                f"layer {source.name} is not valid zstd: {exc}", code=AosCode.INVALID_CHECKSUM
            ) from exc
    return int(written)
