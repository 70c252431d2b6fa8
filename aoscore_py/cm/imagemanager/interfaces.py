"""What the image manager offers and needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ...protocol import ErrorInfo, ItemState


@dataclass(frozen=True)
class ItemRecord:
    """One item version as the unit knows it."""

    item_id: str
    version: str
    item_type: str
    index_digest: str
    state: ItemState
    error: ErrorInfo | None = None


@dataclass(frozen=True)
class BlobRecord:
    """A blob stored and verified once; trusted afterwards while its file's size and mtime
    are unchanged, so a new desired status never hashes stored blobs again."""

    digest: str
    size: int
    mtime_ns: int
    verified_at: float


class ImageStorage(Protocol):
    """The image manager's records."""

    def upsert_item(self, record: ItemRecord) -> None: ...
    def items(self) -> list[ItemRecord]: ...
    def item(self, item_id: str, version: str) -> ItemRecord | None: ...
    def delete_item(self, item_id: str, version: str) -> None: ...
    def item_updated_at(self, item_id: str, version: str) -> float | None: ...
    def record_blob(self, record: BlobRecord) -> None: ...
    def blob(self, digest: str) -> BlobRecord | None: ...
    def blobs(self) -> list[BlobRecord]: ...
    def delete_blob(self, digest: str) -> None: ...
