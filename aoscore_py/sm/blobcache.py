"""The SM's blob cache: an instance's image, fetched from the CM's blob server into the node's
own content-addressed store.

The CM names an instance's image by its manifest digest (`InstanceInfo.manifest_digest`). The
cache asks the CM where the blobs are (`GetBlobsInfos`: one URL per digest, into the CM's blob
server), fetches the manifest, reads its config, layers and item config (`aosItemConfig`, when
AosCore's manifest names one: `blobs/oci.py`) and fetches those it does not hold yet, at most
`policy.parallel` at a time, with the shared `Downloader`: every digest is checked before a
blob is committed, and an interrupted transfer resumes with Range. No signature is checked
here: the CM verified each blob against the cloud's chain before it served it, and the digest
ties these bytes to those. An item config that does not read refuses the image, as a manifest
that is not one does: its instance fails with invalidArgument naming the JSON path.

A blob already in the store is not fetched again, and a blob that two instances share is fetched
once per node even when both ask at the same moment (one transfer per digest; the others wait for
it). `collect` removes what no wanted instance uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx

from statemachine import crashpoint

from ..blobs import oci
from ..blobs.download import Downloader, DownloadPolicy
from ..blobs.store import BlobStore, digest_hex
from ..errors import AosCode, AosError, BlobError, ProtocolError
from ..logs import get_logger
from ..nodes.contract import ImageLayout
from ..protocol import BlobUrlInfo
from .crashpoints import BLOB_CACHED
from .quotas import read_item_config

log = get_logger("sm.blobcache")


class BlobInfoSource(Protocol):
    """Where the blobs are: the CM's `GetBlobsInfos`, as the SM's link client offers it."""

    async def get_blobs_infos(self, digests: Sequence[str]) -> Sequence[str]:
        """One URL per digest, in the order asked (the CM's blob server).

        Raises:
            BlobError: the CM does not hold a digest (gRPC NOT_FOUND: code notFound), or
                the link failed (failed, retried by the caller).
        """
        ...


def _accept(_hashes: Mapping[str, bytes]) -> None:
    """The verifier for the SM's blobs: the digest check is the whole check (see the module)."""


class BlobCache:
    """Images on this node's own `BlobStore`, fetched through the CM.

    Args:
        store: the node's store (under the SM's data dir, never the CM's).
        source: asks the CM for blob URLs.
        http: the client for the CM's blob server (`blob_client` with the node's TLS context).
        policy: parallelism, retries, chunking of transfers.
        sleep: how to wait between retry rounds (tests pass a fast one).
    """

    def __init__(
        self,
        store: BlobStore,
        source: BlobInfoSource,
        http: httpx.AsyncClient,
        policy: DownloadPolicy | None = None,
        *,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.store = store
        self._source = source
        self._downloader = Downloader(http, store, policy, sleep=sleep)
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiting: Counter[str] = Counter()
        # Digests an ensure() in progress needs: collect() keeps them whatever it is told.
        self._pinned: Counter[str] = Counter()
        self.fetched = 0  # blobs downloaded by this cache (not found already stored)

    def path(self, digest: str) -> Path:
        """Where a stored blob lies (what image loading reads)."""
        return self.store.path(digest)

    def has(self, digest: str) -> bool:
        return self.store.stat(digest) is not None

    async def ensure(self, manifest_digest: str) -> ImageLayout:
        """Make the node hold the image named by `manifest_digest`; its layout.

        The layout's `index_digest` is the manifest digest: the node is told the manifest, not
        the item's index (the CM chose the platform).

        Raises:
            BlobError: the CM holds no such blob (notFound), a blob cannot be fetched (failed),
                its bytes do not match its digest (invalidChecksum), the manifest is not one
                (invalidArgument), or the disk is full (noMemory). A blob refused is not kept.
            ProtocolError: the item config does not read (invalidArgument, naming the blob and
                the JSON path of the bad value).
        """
        digest_hex(manifest_digest)
        pinned = [manifest_digest]
        self._pinned[manifest_digest] += 1
        try:
            if not self.has(manifest_digest):
                [url] = await self._urls([manifest_digest])
                await self._fetch(manifest_digest, url, 0)
            doc, config, layers = oci.parse_manifest(self.store.read(manifest_digest))
            item_config = oci.item_config_digest(doc)
            sizes = _sizes(doc)
            wanted = list(dict.fromkeys((config, *layers, *([item_config] if item_config else []))))
            for digest in wanted:
                digest_hex(digest)
            self._pinned.update(wanted)
            pinned += wanted
            missing = [d for d in wanted if not self.has(d)]
            if missing:
                urls = await self._urls(missing)
                # Every transfer runs to its end even when another fails: what it brings is
                # kept for the next attempt. Cancelling `ensure` cancels them all.
                results = await asyncio.gather(
                    *(
                        self._fetch(digest, url, sizes.get(digest, 0))
                        for digest, url in zip(missing, urls, strict=True)
                    ),
                    return_exceptions=True,
                )
                failures = [r for r in results if isinstance(r, BaseException)]
                if failures:
                    raise _first(failures)
            if item_config is not None:
                read_item_config(self.store.read(item_config), item_config)
        finally:
            self._pinned.subtract(pinned)
            self._pinned = +self._pinned
        return ImageLayout(manifest_digest, manifest_digest, doc, config, tuple(layers))

    async def _urls(self, digests: list[str]) -> list[str]:
        urls = list(await self._source.get_blobs_infos(digests))
        if len(urls) != len(digests):
            raise ProtocolError(
                "BlobsInfos.urls", f"{len(urls)} URLs for {len(digests)} digests asked"
            )
        return urls

    async def _fetch(self, digest: str, url: str, size: int) -> None:
        """Fetch one blob unless it is stored by then; one transfer per digest at a time."""
        lock = self._locks.setdefault(digest, asyncio.Lock())
        self._waiting[digest] += 1
        try:
            async with lock:
                if self.has(digest):
                    return  # another instance's fetch brought it while this one waited
                info = BlobUrlInfo(digest, (url,), bytes.fromhex(digest_hex(digest)), size)
                try:
                    try:
                        fetched = await self._downloader.fetch(info, ("sha256",), _accept)
                    except ssl.SSLError as exc:
                        # An alert after the handshake (the CM refused this node's certificate)
                        # reaches us from httpcore as the ssl module raised it.
                        raise BlobError(
                            f"blob {digest}: TLS with the CM's blob server failed: {exc}"
                        ) from exc
                except BlobError as exc:
                    if exc.code == AosCode.INVALID_CHECKSUM:
                        # Wrong bytes are not worth resuming from: nothing of them is kept.
                        self.store.remove_partial(digest)
                    log.warning("blobcache.fetch_failed", digest=digest, url=url, error=exc.message)
                    raise
                self.fetched += 1
                crashpoint(BLOB_CACHED)  # committed (fsynced, renamed); the next is not asked
                log.info(
                    "blobcache.fetched",
                    digest=digest,
                    size=fetched.size,
                    resumed_from=fetched.resumed_from,
                    seconds=round(fetched.seconds, 3),
                )
        finally:
            self._waiting[digest] -= 1
            if not self._waiting[digest]:
                del self._waiting[digest]
                self._locks.pop(digest, None)

    def references(self, digest: str) -> set[str]:
        """A stored blob and, when it is a manifest, its config, layers and item config."""
        refs = {digest}
        if self.has(digest):
            with contextlib.suppress(AosError, OSError, ValueError):
                doc, config, layers = oci.parse_manifest(self.store.read(digest))
                refs.update((config, *layers))
                refs.update(d for d in [oci.item_config_digest(doc)] if d)
        return refs

    def collect(self, keep_digests: Iterable[str]) -> list[str]:
        """Remove every stored blob and partial file that no wanted instance uses.

        Args:
            keep_digests: the manifest digests of the instances the node must run (their
                config and layers are kept with them); any other blob digest given is kept too.

        Returns:
            The digests removed (stored blobs and partial files).
        """
        keep: set[str] = set(self._pinned)
        for digest in keep_digests:
            keep |= self.references(digest)
        removed = []
        for digest in self.store.stored():
            if digest not in keep:
                self.store.remove(digest)
                removed.append(digest)
        for digest in self.store.partial_digests():
            if digest not in keep:
                self.store.remove_partial(digest)
                removed.append(digest)
        if removed:
            self.store.sync()
            log.info("blobcache.collected", removed=len(removed), kept=len(keep))
        return removed


def _sizes(manifest: dict) -> dict[str, int]:
    """Digest -> size, from the manifest's descriptors (a size the server must not exceed)."""
    out: dict[str, int] = {}
    descriptors = (manifest.get("config"), manifest.get(oci.ITEM_CONFIG_KEY))
    for entry in (*descriptors, *(manifest.get("layers") or ())):
        if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
            size = entry.get("size")
            if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
                out[entry["digest"]] = size
    return out


def _first(errors: list[BaseException]) -> BaseException:
    """The error to report for an image: a checksum one first (permanent), else the first."""
    for exc in errors:
        if isinstance(exc, AosError) and exc.code == AosCode.INVALID_CHECKSUM:
            return exc
    return errors[0]
