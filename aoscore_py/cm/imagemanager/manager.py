"""The image manager: makes every desired item's blobs present and verified, and keeps records.

Per item: the index, then its manifest, then config, item config (`aosItemConfig`, when the
manifest names one) and layers, each fetched through URLs the cloud hands out (requestBlobUrls).
Items go on at once and their blobs too, at most `DownloadPolicy.parallel` transfers at a time;
a blob two items share is fetched once. Each blob is checked against its digest and its
signature before it enters the store. A blob already stored is trusted by its record (size and
mtime), never hashed again; one whose file changed is fetched again. An item config that
cannot be parsed fails its item (invalidArgument, naming the JSON path). One item's failure
marks that item failed with an errorInfo; the others go on.

Finalizing retires other versions (state removed); they are kept for a TTL, so that going back
to one needs no download, and then collected (collector.py). Transfers are reported by
progress.py, fetched by download.py into partial files (partial.py). What a stored item says
about where it may run (`item_facts`) is read once per manifest (facts.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography import x509

from statemachine import crashpoint

from ...blobs import oci
from ...blobs.download import Downloader, DownloadPolicy
from ...blobs.partial import IO_POOL
from ...blobs.store import BlobStore, digest_hex, hash_file
from ...crypto.signing import ChainVerifier, hash_names_for
from ...errors import AosCode, AosError, BlobError, classify
from ...logs import MIB, get_logger, mib
from ...nodes import ImageLayout
from ...nodes.itemconfig import ItemFacts
from ...protocol import BlobUrlInfo, DesiredItem, DesiredStatus, ErrorInfo, ItemState
from ..communication.interfaces import BlobUrlSource
from .collector import collect
from .crashpoints import (
    BLOB_ADOPTED,
    BLOB_VERIFIED,
    ITEM_FIRST_BLOB,
    ITEM_INSTALLED,
    ITEM_PENDING,
    ITEM_REMOVED,
)
from .facts import FactsCache, read_item_config
from .interfaces import BlobRecord, ImageStorage, ItemRecord
from .progress import PROGRESS_FILE, ProgressReporter

log = get_logger("imagemanager")

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}
DAY_S = 86400.0


def host_platform() -> tuple[str, str]:
    """The OCI (os, architecture) of this machine."""
    machine = platform.machine()
    return "linux", _ARCH.get(machine, machine)


@dataclass(frozen=True)
class ImagePolicy:
    """The unit's rules for items: whom to trust, what to keep, how to download."""

    trusted_roots: tuple[x509.Certificate, ...] = ()
    allow_unsigned: bool = False
    removed_ttl_s: float = 30 * DAY_S
    space_reserve_bytes: int = 16 * MIB
    download: DownloadPolicy = field(default_factory=DownloadPolicy)


class ImageManager:
    """Downloads, verifies, records and collects items.

    Args:
        storage: item and blob records.
        store: the blob files.
        source: where blob URLs come from (the cloud link).
        http: the HTTP client for blob downloads (one per agent, reused).
        policy: trust, retention and download settings.
        sleep: how to wait between download rounds (tests pass a fast one).
    """

    def __init__(
        self,
        storage: ImageStorage,
        store: BlobStore,
        source: BlobUrlSource,
        http: httpx.AsyncClient,
        policy: ImagePolicy | None = None,
        *,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self._storage = storage
        self._store = store
        self._source = source
        self.policy = policy or ImagePolicy()
        self.downloader = Downloader(http, store, self.policy.download, sleep=sleep)
        self._platform = host_platform()
        self._facts = FactsCache(store.read, self._platform)
        self._locks: dict[str, asyncio.Lock] = {}
        self.on_changed: Callable[[], None] | None = None
        """Called after every item record written (the unit status's delta trigger)."""
        self.progress = ProgressReporter(
            self.downloader.active,
            store.root / PROGRESS_FILE,
            self.policy.download.progress_interval_s,
        )

    def _upsert(self, record: ItemRecord) -> None:
        """Write an item record; every write goes here, so `item_facts` never answers from a
        stale record."""
        self._facts.forget(record.item_id, record.version)
        self._storage.upsert_item(record)
        if self.on_changed is not None:
            self.on_changed()

    def records(self) -> list[ItemRecord]:
        return self._storage.items()

    def record(self, item_id: str, version: str) -> ItemRecord | None:
        return self._storage.item(item_id, version)

    # downloading

    async def download(self, ds: DesiredStatus, skip: Collection[str] = ()) -> list[ItemRecord]:
        """Make every item's blobs present; returns each item's record (pending or failed).

        Args:
            ds: the desired status whose items to fetch.
            skip: items not to fetch again when their record says they failed for this very
                version and index digest (the update cycle found them failed for good).
        """
        verifier = ChainVerifier(self.policy.trusted_roots, ds.certificates, ds.certificate_chains)
        self._locks = {}
        reporter = asyncio.create_task(self.progress.run(), name="download.progress")
        try:
            return list(
                await asyncio.gather(
                    *(self._download_item(i, verifier, i.item.key in skip) for i in ds.items)
                )
            )
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            self.progress.write()

    async def _download_item(
        self, item: DesiredItem, verifier: ChainVerifier, skip: bool
    ) -> ItemRecord:
        item_id = item.item.key or ""
        kind = item.item.type or "service"
        known = self.record(item_id, item.version)
        if (
            skip
            and known is not None
            and known.state == ItemState.FAILED
            and known.index_digest == item.index_digest
        ):
            log.info(
                "item.skipped",
                item=item_id,
                version=item.version,
                error=known.error.message if known.error else None,
                next="not fetched again for this desired status",
            )
            return known
        state = known.state if known and known.index_digest == item.index_digest else None
        if state not in (ItemState.PENDING, ItemState.INSTALLED):
            state = ItemState.DOWNLOADING
        record = ItemRecord(item_id, item.version, kind, item.index_digest, state)
        if known != record:
            self._upsert(record)
        started = time.monotonic()
        attempted: set[str] = set()
        try:
            fetched = await self._fetch_tree(item, verifier, attempted)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, AosError) and exc.code == AosCode.NO_MEMORY:
                for digest in attempted:
                    self._store.remove_partial(digest)
            failed = ItemRecord(
                item_id,
                item.version,
                kind,
                item.index_digest,
                ItemState.FAILED,
                ErrorInfo.from_exception(exc),
            )
            self._upsert(failed)
            log.error(
                "item.failed",
                item=item_id,
                version=item.version,
                error=str(exc),
                retry=classify(exc).value,
                next="other items go on; the running version keeps running",
            )
            return failed
        if state == ItemState.DOWNLOADING:
            record = ItemRecord(item_id, item.version, kind, item.index_digest, ItemState.PENDING)
            self._upsert(record)
            crashpoint(ITEM_PENDING)
        log.info(
            "item.ready",
            item=item_id,
            version=item.version,
            state=record.state.value,
            blobs_fetched=fetched,
            seconds=round(time.monotonic() - started, 3),
        )
        return record

    async def _fetch_tree(
        self, item: DesiredItem, verifier: ChainVerifier, attempted: set[str]
    ) -> int:
        fetched: list[str] = []
        await self._ensure([item.index_digest], verifier, fetched, attempted)
        manifest_digest = self._manifest_digest(item.index_digest)
        await self._ensure([manifest_digest], verifier, fetched, attempted)
        doc, config, layers = oci.parse_manifest(self._store.read(manifest_digest))
        item_config = oci.item_config_digest(doc)
        named = [config, item_config, *layers] if item_config else [config, *layers]
        await self._ensure(named, verifier, fetched, attempted)
        if item_config is not None:
            # refused now, not when instances are placed: the item fails, the old version runs
            read_item_config(self._store.read(item_config), item_config)
        return len(fetched)

    async def _hashes_to(self, digest: str) -> bool:
        """Whether the stored file of `digest` hashes to it; hashed on the I/O pool, so a large
        blob does not hold up the loop (keepalives, a superseding desired status)."""
        path = self._store.path(digest)
        return await asyncio.wrap_future(IO_POOL.submit(hash_file, path)) == digest

    async def _have(self, digest: str) -> bool:
        """Whether `digest` is stored and unchanged since it was verified (by its record).

        A stored file with no record (its record was lost with a store moved aside) is hashed
        once and adopted when it matches its digest: only a verified blob reaches `blobs/`.
        """
        rec = self._storage.blob(digest)
        stat = self._store.stat(digest)
        if rec is None and stat is not None and await self._hashes_to(digest):
            self._storage.record_blob(
                BlobRecord(digest, stat.st_size, stat.st_mtime_ns, time.time())
            )
            crashpoint(BLOB_ADOPTED)
            log.info(
                "blob.adopted",
                digest=digest,
                size=stat.st_size,
                next="trusted by its record from now on",
            )
            return True
        if rec is not None and stat is not None and stat.st_size == rec.size:
            if stat.st_mtime_ns == rec.mtime_ns:
                return True
            if rec.mtime_ns == 0 and await self._hashes_to(digest):
                # recorded before mtimes were kept: checked once, trusted by its record after
                self._storage.record_blob(
                    BlobRecord(digest, rec.size, stat.st_mtime_ns, time.time())
                )
                return True
        if rec is not None or stat is not None:
            log.warning(
                "blob.changed",
                digest=digest,
                recorded_size=rec.size if rec else None,
                size_on_disk=stat.st_size if stat else None,
                next="fetching it again",
            )
            self._storage.delete_blob(digest)
            self._store.remove(digest)
        return False

    async def _ensure(
        self,
        digests: Sequence[str],
        verifier: ChainVerifier,
        fetched: list[str],
        attempted: set[str],
    ) -> None:
        missing = [d for d in dict.fromkeys(digests) if not await self._have(d)]
        if not missing:
            return
        for d in missing:
            digest_hex(d)  # refuse a malformed digest before asking the cloud
        answer = {i.digest: i for i in await self._source.request_blob_urls(missing)}
        infos = [self._checked(d, answer.get(d)) for d in missing]
        self._check_space(infos)
        attempted.update(missing)
        try:
            async with asyncio.TaskGroup() as group:
                for info in infos:
                    group.create_task(self._fetch_blob(info, verifier, fetched))
        except BaseExceptionGroup as errors:
            raise _first(errors) from None

    def _checked(self, digest: str, info: BlobUrlInfo | None) -> BlobUrlInfo:
        """The cloud's answer for one blob, refused before any byte is fetched if unusable."""
        if info is None:
            raise BlobError(f"the cloud has no URL for blob {digest}", code=AosCode.NOT_FOUND)
        if info.sha256 and info.sha256.hex() != digest_hex(digest):
            raise BlobError(
                f"blob {digest}: blobUrls sha256 {info.sha256.hex()} does not match",
                code=AosCode.INVALID_CHECKSUM,
            )
        if info.decrypt_info is not None:
            raise BlobError(
                f"blob {digest} is encrypted (decryptInfo); this unit does not decrypt blobs",
                code=AosCode.NOT_SUPPORTED,
            )
        if info.sign_info is None and not self.policy.allow_unsigned:
            raise BlobError(
                f"blob {digest} has no signature (signInfo) and this unit does not allow "
                "unsigned items (allow_unsigned is off)",
                code=AosCode.INVALID_ARGUMENT,
            )
        if not info.urls:
            raise BlobError(f"the cloud gave no URL for blob {digest}", code=AosCode.NOT_FOUND)
        return info

    def _check_space(self, infos: Sequence[BlobUrlInfo]) -> None:
        need = sum(max(0, i.size - self._store.partial_size(i.digest)) for i in infos)
        claimed = sum(max(0, t.size - t.present) for t in self.downloader.active.values())
        free = self._store.free_bytes()
        reserve = self.policy.space_reserve_bytes
        if need + claimed + reserve > free:
            raise BlobError(
                f"not enough space: {len(infos)} blobs need {mib(need)} more "
                f"(and transfers under way {mib(claimed)}), {mib(free)} is free on "
                f"{self._store.root}, keeping {mib(reserve)} in reserve",
                code=AosCode.NO_MEMORY,
            )

    async def _fetch_blob(
        self, info: BlobUrlInfo, verifier: ChainVerifier, fetched: list[str]
    ) -> None:
        lock = self._locks.setdefault(info.digest, asyncio.Lock())
        async with lock:
            if await self._have(info.digest):
                return  # another item fetched it meanwhile
            result = await self.downloader.fetch(
                info,
                hash_names_for(info.sign_info),
                lambda hashes: self._verify(info, verifier, hashes),
            )
        self._storage.record_blob(
            BlobRecord(info.digest, result.size, result.mtime_ns, time.time())
        )
        fetched.append(info.digest)
        log.info(
            "blob.stored",
            digest=info.digest,
            size=result.size,
            fetched=result.fetched,
            resumed_from=result.resumed_from,
            seconds=round(result.seconds, 3),
            mib_s=round(result.fetched / MIB / result.seconds, 1) if result.seconds else None,
            signed=info.sign_info is not None,
            url=result.url,
        )
        if len(fetched) == 1:
            crashpoint(ITEM_FIRST_BLOB)
        crashpoint(BLOB_VERIFIED)

    def _verify(
        self, info: BlobUrlInfo, verifier: ChainVerifier, hashes: Mapping[str, bytes]
    ) -> None:
        if info.sign_info is None:
            return  # allowed by policy, checked before the download began
        verifier.verify(info.digest, info.sign_info, hashes)

    # layouts

    def _manifest_digest(self, index_digest: str) -> str:
        """The manifest for this platform named by the stored index (an item may also point
        straight at a manifest: then it is its own); cached, as the index never changes."""
        return self._facts.manifest_digest(index_digest)

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

    def references(self, index_digest: str) -> set[str]:
        """Every blob an item names, as far as its stored documents tell."""
        refs = {index_digest}
        with contextlib.suppress(AosError, OSError):
            manifest_digest = self._manifest_digest(index_digest)
            refs.add(manifest_digest)
            doc, config, layers = oci.parse_manifest(self._store.read(manifest_digest))
            refs.update((config, *layers))
            item_config = oci.item_config_digest(doc)
            if item_config is not None:
                refs.add(item_config)
        return refs

    def item_facts(self, item_id: str, version: str) -> ItemFacts:
        """The item config and image platform of a stored item version, for placement.

        Cheap after the first call for a manifest: the launcher asks per item on every plan.

        Raises:
            AosError: the version is not stored (notFound): unknown, still downloading, failed
                or being collected.
            ProtocolError: its item config cannot be parsed (invalidArgument).
            BlobError: its manifest or image config cannot be read (invalidArgument).
        """
        index_digest = self._facts.stored_index(item_id, version)
        if index_digest is None:
            record = self.record(item_id, version)
            if record is None or record.state not in _STORED:
                state = "not known" if record is None else f"{record.state.value}, not stored"
                raise AosError(f"item {item_id} {version} is {state}", code=AosCode.NOT_FOUND)
            index_digest = record.index_digest
            self._facts.remember(item_id, version, index_digest)
        try:
            return self._facts.facts(self._manifest_digest(index_digest))
        except OSError as exc:
            raise AosError(
                f"item {item_id} {version}: a blob is missing from the store: {exc}",
                code=AosCode.NOT_FOUND,
            ) from exc

    # finalizing and collection

    def finalize(self, desired: Sequence[DesiredItem], running: set[tuple[str, str]]) -> None:
        """Mark desired items installed; retire other versions no instance runs; collect.

        Args:
            desired: the items of the desired status.
            running: (item id, version) pairs that instances still use.
        """
        wanted = {(i.item.key or "", i.version) for i in desired}
        for record in self._storage.items():
            key = (record.item_id, record.version)
            if key in wanted and record.state == ItemState.PENDING:
                self._set_state(record, ItemState.INSTALLED)
                log.info("item.installed", item=record.item_id, version=record.version)
                crashpoint(ITEM_INSTALLED)
            elif key not in wanted and key not in running and record.state not in _RETIRED:
                self._set_state(record, ItemState.REMOVED)
                log.info(
                    "item.removed",
                    item=record.item_id,
                    version=record.version,
                    next=f"kept {self.policy.removed_ttl_s / DAY_S:g} days, then collected",
                )
                crashpoint(ITEM_REMOVED)
        self.collect()

    def _set_state(self, record: ItemRecord, state: ItemState) -> None:
        self._upsert(
            ItemRecord(record.item_id, record.version, record.item_type, record.index_digest, state)
        )

    def collect(self, now: float | None = None) -> dict[str, int]:
        """Collect removed items past their TTL and every blob and partial file no item
        references (collector.py); returns what was collected."""
        try:
            collected = collect(
                self._storage,
                self._store,
                self.references,
                in_transfer=self.downloader.active,
                removed_ttl_s=self.policy.removed_ttl_s,
                now=time.time() if now is None else now,
            )
        finally:
            self._facts.forget_items()  # the collector writes item records of its own
        if collected["blobs"]:
            self._facts.prune(set(self._store.stored()))
        return collected


_RETIRED = (ItemState.REMOVED, ItemState.REMOVING)
# States whose blobs are all present and verified (removed versions are kept for the TTL).
_STORED = (ItemState.PENDING, ItemState.INSTALLED, ItemState.REMOVED)


def _first(group: BaseExceptionGroup) -> BaseException:
    """The first real error of a task group (cancellations of its siblings aside)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]
