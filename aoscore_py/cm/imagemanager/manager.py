"""The image manager: makes every desired item's blobs present and verified, and keeps records.

Per item: the index, then its manifest, then config and layers, each fetched through URLs the
cloud hands out (requestBlobUrls), hashed while streaming, and stored content-addressed. A blob
already stored and recorded with the same size is not fetched or hashed again. One item's
failure marks that item failed with an errorInfo; the other items go on.
"""

from __future__ import annotations

import asyncio
import platform
import time
from collections.abc import AsyncIterator, Sequence

import httpx

from statemachine import crashpoint

from ...errors import AosCode, BlobError
from ...logs import get_logger
from ...protocol import BlobUrlInfo, DesiredItem, ErrorInfo, ItemState
from ..communication.interfaces import BlobUrlSource
from . import oci
from .blobstore import BlobStore, digest_hex
from .interfaces import ImageLayout, ImageStorage, ItemRecord

log = get_logger("imagemanager")

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}


def host_platform() -> tuple[str, str]:
    """The OCI (os, architecture) of this machine."""
    machine = platform.machine()
    return "linux", _ARCH.get(machine, machine)


class ImageManager:
    """Downloads, verifies and records items.

    Args:
        storage: item and blob records.
        store: the blob files.
        source: where blob URLs come from (the cloud link).
        http: the HTTP client for blob downloads (one per agent, reused).
    """

    def __init__(
        self,
        storage: ImageStorage,
        store: BlobStore,
        source: BlobUrlSource,
        http: httpx.AsyncClient,
    ) -> None:
        self._storage = storage
        self._store = store
        self._source = source
        self._http = http
        self._platform = host_platform()

    def records(self) -> list[ItemRecord]:
        return self._storage.items()

    def record(self, item_id: str, version: str) -> ItemRecord | None:
        return self._storage.item(item_id, version)

    async def download(self, items: Sequence[DesiredItem]) -> list[ItemRecord]:
        """Make every item's blobs present; returns each item's record (pending or failed)."""
        results = []
        for item in items:
            results.append(await self._download_item(item))
        return results

    async def _download_item(self, item: DesiredItem) -> ItemRecord:
        item_id = item.item.key or ""
        kind = item.item.type or "service"
        known = self.record(item_id, item.version)
        state = known.state if known and known.index_digest == item.index_digest else None
        if state not in (ItemState.PENDING, ItemState.INSTALLED):
            state = ItemState.DOWNLOADING
        record = ItemRecord(item_id, item.version, kind, item.index_digest, state)
        if known != record:
            self._storage.upsert_item(record)
        started = time.monotonic()
        try:
            fetched = await self._fetch_tree(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failed = ItemRecord(
                item_id,
                item.version,
                kind,
                item.index_digest,
                ItemState.FAILED,
                ErrorInfo.from_exception(exc),
            )
            self._storage.upsert_item(failed)
            log.error(
                "item.failed",
                item=item_id,
                version=item.version,
                error=str(exc),
                next="other items go on; this item is reported failed",
            )
            return failed
        if state == ItemState.DOWNLOADING:
            record = ItemRecord(item_id, item.version, kind, item.index_digest, ItemState.PENDING)
            self._storage.upsert_item(record)
            crashpoint("imagemanager.item.pending")
        log.info(
            "item.ready",
            item=item_id,
            version=item.version,
            state=record.state.value,
            blobs_fetched=fetched,
            seconds=round(time.monotonic() - started, 3),
        )
        return record

    def _have(self, digest: str) -> bool:
        rec = self._storage.blob(digest)
        return rec is not None and self._store.size(digest) == rec.size

    async def _ensure(self, item_id: str, digests: Sequence[str], fetched: list[str]) -> None:
        missing = list(dict.fromkeys(d for d in digests if not self._have(d)))
        if not missing:
            return
        for d in missing:
            digest_hex(d)  # refuse a malformed digest before asking the cloud
        infos = {i.digest: i for i in await self._source.request_blob_urls(missing)}
        for digest in missing:
            info = infos.get(digest)
            if info is None:
                raise BlobError(f"the cloud has no URL for blob {digest}", code=AosCode.NOT_FOUND)
            await self._fetch_blob(info)
            fetched.append(digest)
            if len(fetched) == 1:
                crashpoint("imagemanager.item.first_blob")
            crashpoint("imagemanager.blob.stored")

    async def _fetch_tree(self, item: DesiredItem) -> int:
        item_id = item.item.key or ""
        fetched: list[str] = []
        await self._ensure(item_id, [item.index_digest], fetched)
        manifest_digest = self._manifest_digest(item.index_digest)
        await self._ensure(item_id, [manifest_digest], fetched)
        _, config, layers = oci.parse_manifest(self._store.read(manifest_digest))
        await self._ensure(item_id, [config, *layers], fetched)
        return len(fetched)

    async def _fetch_blob(self, info: BlobUrlInfo) -> None:
        if info.sha256 and info.sha256.hex() != digest_hex(info.digest):
            raise BlobError(
                f"blob {info.digest}: blobUrls sha256 {info.sha256.hex()} does not match",
                code=AosCode.INVALID_CHECKSUM,
            )
        errors: list[str] = []
        for url in info.urls:
            try:
                size = await self._store.write(info.digest, self._stream(url), info.size or None)
            except BlobError as exc:
                if exc.code == AosCode.INVALID_CHECKSUM:
                    raise
                errors.append(f"{url}: {exc.message}")
                continue
            except (httpx.HTTPError, OSError) as exc:
                errors.append(f"{url}: {type(exc).__name__}: {exc}")
                log.warning(
                    "blob.url_failed",
                    digest=info.digest,
                    url=url,
                    error=str(exc),
                    next="trying the next URL",
                )
                continue
            self._storage.record_blob(info.digest, size)
            log.debug("blob.stored", digest=info.digest, size=size, url=url)
            return
        raise BlobError(
            f"blob {info.digest}: every URL failed: " + "; ".join(errors or ["no URLs given"])
        )

    async def _stream(self, url: str) -> AsyncIterator[bytes]:
        async with self._http.stream("GET", url) as response:
            if response.status_code != 200:
                raise BlobError(f"HTTP {response.status_code}")
            async for chunk in response.aiter_bytes(1 << 20):
                yield chunk

    def _manifest_digest(self, index_digest: str) -> str:
        """The manifest for this platform named by the stored index (an item may also point
        straight at a manifest: then it is its own)."""
        top = self._store.read(index_digest)
        if oci.is_index(oci.load_document(top)):
            return oci.choose_manifest(top, *self._platform)
        return index_digest

    def layout(self, item_id: str, version: str) -> ImageLayout:
        """How the stored blobs of an item version make an image.

        Raises:
            BlobError: the item is unknown or its blobs are not stored.
        """
        record = self.record(item_id, version)
        if record is None:
            raise BlobError(f"item {item_id} {version} is not known", code=AosCode.NOT_FOUND)
        manifest_digest = self._manifest_digest(record.index_digest)
        doc, config, layers = oci.parse_manifest(self._store.read(manifest_digest))
        return ImageLayout(record.index_digest, manifest_digest, doc, config, layers)

    def finalize(self, desired: Sequence[DesiredItem], running: set[tuple[str, str]]) -> None:
        """Mark desired items installed; retire other versions no instance runs.

        Args:
            desired: the items of the desired status.
            running: (item id, version) pairs that instances still use.
        """
        wanted = {(i.item.key or "", i.version) for i in desired}
        for record in self._storage.items():
            key = (record.item_id, record.version)
            if key in wanted and record.state == ItemState.PENDING:
                self._storage.upsert_item(
                    ItemRecord(*key, record.item_type, record.index_digest, ItemState.INSTALLED)
                )
                log.info("item.installed", item=record.item_id, version=record.version)
                crashpoint("imagemanager.item.installed")
            elif key not in wanted and key not in running and record.state != ItemState.REMOVED:
                self._storage.upsert_item(
                    ItemRecord(*key, record.item_type, record.index_digest, ItemState.REMOVED)
                )
                log.info("item.removed", item=record.item_id, version=record.version)
                crashpoint("imagemanager.item.removed")
