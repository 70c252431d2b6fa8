"""Collection: removed item versions whose TTL ran out, then every blob and partial file that no
item still references.

Rows go before files, so a cut never leaves a record of a missing file trusted; an item is
marked removing before anything of it goes, so a cut in the middle finishes the job next time.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import replace

from statemachine import crashpoint

from ...blobs.store import BlobStore
from ...logs import get_logger, mib
from ...protocol import ItemState
from .crashpoints import ITEM_COLLECTED, ITEM_REMOVING
from .interfaces import ImageStorage

log = get_logger("imagemanager")


def collect(
    storage: ImageStorage,
    store: BlobStore,
    references: Callable[[str], set[str]],
    *,
    in_transfer: Container[str],
    removed_ttl_s: float,
    now: float,
) -> dict[str, int]:
    """Collect removed items past their TTL, then every blob and partial file no item
    references. Rows go before files, so a cut never leaves a record of a missing file
    trusted. Returns what was collected."""
    for record in storage.items():
        if record.state != ItemState.REMOVED:
            continue
        since = storage.item_updated_at(record.item_id, record.version) or now
        if now - since >= removed_ttl_s:
            storage.upsert_item(replace(record, state=ItemState.REMOVING, error=None))
            crashpoint(ITEM_REMOVING)
    items = storage.items()
    live: set[str] = set()
    for record in items:
        if record.state != ItemState.REMOVING:
            live |= references(record.index_digest)
    blobs = 0
    freed = 0
    for rec in storage.blobs():
        if rec.digest not in live:
            storage.delete_blob(rec.digest)
    for digest in store.stored():
        if digest not in live:
            stat = store.stat(digest)
            freed += stat.st_size if stat else 0
            store.remove(digest)
            blobs += 1
    partials = 0
    for digest, size in store.partial_digests().items():
        if digest not in live and digest not in in_transfer:
            store.remove_partial(digest)
            freed += size
            partials += 1
    if blobs or partials:
        store.sync()
    collected = 0
    for record in items:
        if record.state == ItemState.REMOVING:
            storage.delete_item(record.item_id, record.version)
            collected += 1
            log.info("item.collected", item=record.item_id, version=record.version)
            crashpoint(ITEM_COLLECTED)
    if blobs or partials or collected:
        log.info(
            "store.collected",
            items=collected,
            blobs=blobs,
            partials=partials,
            freed=mib(freed),
        )
    return {"items": collected, "blobs": blobs, "partials": partials, "freed_bytes": freed}
