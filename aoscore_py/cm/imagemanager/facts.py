"""What a stored item version says about where it may run (`ItemFacts`), read once per manifest.

The launcher asks for the facts of every item each time it places instances (10,000 instances
over a few hundred items): a database lookup and parsing index, manifest, item config and image
config each time would dominate placement. Blobs are content-addressed, so what a digest says
never changes: the manifest an index chooses is cached per index digest, the facts per manifest
digest, and no entry ever goes stale. `prune` drops the entries of collected blobs, so the cache
does not grow with every version the unit ever stored.

Which index a stored item version has is a record, and records change: the image manager (the
only writer of item records) calls `forget` on every write and `forget_items` after a
collection, so a cached entry always matches the record.
"""

from __future__ import annotations

from collections.abc import Callable, Container

from ...blobs import oci
from ...errors import ProtocolError
from ...logs import get_logger
from ...nodes.itemconfig import ItemConfig, ItemFacts, parse_item_config

log = get_logger("imagemanager")


def read_item_config(raw: bytes, digest: str) -> ItemConfig:
    """The item config blob `digest`, parsed.

    Raises:
        ProtocolError: it cannot be read (invalidArgument, so permanent for the desired status);
            the message starts with the JSON path of the bad value and names the blob.
    """
    try:
        return parse_item_config(raw)
    except ProtocolError as exc:
        raise ProtocolError(exc.path, f"{exc.reason} (in {oci.ITEM_CONFIG_KEY} {digest})") from None


class FactsCache:
    """Stored item version -> index, index -> manifest and manifest -> facts, each read once.

    Args:
        read: the bytes of a stored blob (raises OSError when it is not stored).
        platform: the (os, architecture) an index's manifest is chosen for.
    """

    def __init__(self, read: Callable[[str], bytes], platform: tuple[str, str]) -> None:
        self._read = read
        self._platform = platform
        self._items: dict[tuple[str, str], str] = {}
        self._manifests: dict[str, str] = {}
        self._facts: dict[str, ItemFacts] = {}

    def stored_index(self, item_id: str, version: str) -> str | None:
        """The index digest of a stored item version, if `remember` was told it."""
        return self._items.get((item_id, version))

    def remember(self, item_id: str, version: str, index_digest: str) -> None:
        """Note that this item version is stored with this index (its record says so)."""
        self._items[(item_id, version)] = index_digest

    def forget(self, item_id: str, version: str) -> None:
        """Drop what is known of an item version: its record is being written."""
        self._items.pop((item_id, version), None)

    def forget_items(self) -> None:
        """Drop what is known of every item version (a collection changed records)."""
        self._items.clear()

    def manifest_digest(self, index_digest: str) -> str:
        """The manifest for this platform named by the stored index (an item may also point
        straight at a manifest: then it is its own).

        Raises:
            BlobError: the index cannot be read or names no manifest for this platform.
            OSError: the index is not stored.
        """
        found = self._manifests.get(index_digest)
        if found is None:
            top = self._read(index_digest)
            found = index_digest
            if oci.is_index(oci.load_document(top)):
                found = oci.choose_manifest(top, *self._platform)
            self._manifests[index_digest] = found
        return found

    def facts(self, manifest_digest: str) -> ItemFacts:
        """The item config and platform of the stored manifest `manifest_digest`.

        Raises:
            ProtocolError: the item config cannot be parsed (names the JSON path).
            BlobError: the manifest or image config cannot be read.
            OSError: one of the blobs is not stored.
        """
        found = self._facts.get(manifest_digest)
        if found is None:
            doc, config_digest, _ = oci.parse_manifest(self._read(manifest_digest))
            item_config_digest = oci.item_config_digest(doc)
            item_config = (
                None
                if item_config_digest is None
                else read_item_config(self._read(item_config_digest), item_config_digest)
            )
            found = ItemFacts(item_config, *oci.image_platform(self._read(config_digest)))
            self._facts[manifest_digest] = found
            log.debug(
                "item.facts_read",
                manifest=manifest_digest,
                item_config=item_config_digest,
                os=found.os,
                architecture=found.architecture,
                variant=found.variant,
                next="cached for this manifest",
            )
        return found

    def prune(self, live: Container[str]) -> None:
        """Forget the entries whose digest is no longer live (after a collection)."""
        self._manifests = {i: m for i, m in self._manifests.items() if i in live}
        self._facts = {m: f for m, f in self._facts.items() if m in live}
