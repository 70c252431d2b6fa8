"""A working fake of the cloud's blob side for image manager tests: answers requestBlobUrls with
signed (or not) URLs and serves the bytes, Range included, remembering what it was asked."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from aoscore_py.cloud.oci import OciImage
from aoscore_py.crypto.pki import Pki
from aoscore_py.protocol import BlobUrlInfo


@dataclass
class BlobCloud:
    """The blobs of `images`, each signed by `pki` unless listed in `unsigned`.

    `tampered` serves other bytes for a digest (the URL answer still names the right digest);
    `asked` lists the digests requestBlobUrls named, `served` the digests fetched, `ranges` the
    Range header of each fetch (None for a whole body).
    """

    pki: Pki
    images: Sequence[OciImage]
    unsigned: set[str] = field(default_factory=set)
    tampered: dict[str, bytes] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    served: list[str] = field(default_factory=list)
    ranges: list[str | None] = field(default_factory=list)

    @property
    def blobs(self) -> dict[str, bytes]:
        return {d: b for image in self.images for d, b in image.blobs.items()}

    async def request_blob_urls(self, digests: Sequence[str]) -> list[BlobUrlInfo]:
        self.asked += digests
        blobs = self.blobs
        out = []
        for d in digests:
            sha = bytes.fromhex(d.split(":")[1])
            sign = None if d in self.unsigned else self.pki.sign({"sha256": sha})
            out.append(BlobUrlInfo(d, (f"http://blobs.test/{d}",), sha, len(blobs[d]), None, sign))
        return out

    def handle(self, request: httpx.Request) -> httpx.Response:
        digest = request.url.path.lstrip("/")
        self.served.append(digest)
        data = self.tampered.get(digest, self.blobs[digest])
        asked = request.headers.get("Range")
        self.ranges.append(asked)
        if asked is None:
            return httpx.Response(200, content=data)
        start = int(asked.removeprefix("bytes=").rstrip("-"))
        headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        return httpx.Response(206, content=data[start:], headers=headers)
