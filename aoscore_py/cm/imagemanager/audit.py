"""`aoscore images verify`: hash every stored blob again, on demand.

Day to day the agent trusts a blob by its record (size and mtime). An operator who suspects the
storage (a failing card, a file edited by hand) runs this to check every byte: a blob whose bytes
no longer hash to its digest loses its record and its file, so the next cycle fetches it again.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...blobs.store import BlobStore, hash_file
from ...logs import get_logger
from .interfaces import ImageStorage

log = get_logger("imagemanager.audit")


@dataclass(frozen=True)
class AuditRow:
    """What was found for one blob, and what was done about it."""

    digest: str
    size: int | None
    verdict: str  # ok, corrupt, missing, unrecorded
    action: str

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


def audit(storage: ImageStorage, store: BlobStore) -> list[AuditRow]:
    """Re-hash every recorded and every stored blob; drop the ones that are wrong."""
    rows: list[AuditRow] = []
    records = {r.digest: r for r in storage.blobs()}
    for digest in sorted(set(records) | set(store.stored())):
        stat = store.stat(digest)
        if stat is None:
            storage.delete_blob(digest)
            rows.append(AuditRow(digest, None, "missing", "record dropped; fetched when needed"))
        elif hash_file(store.path(digest)) != digest:
            storage.delete_blob(digest)
            store.remove(digest)
            rows.append(
                AuditRow(digest, stat.st_size, "corrupt", "removed; fetched again when needed")
            )
        elif digest not in records:
            rows.append(AuditRow(digest, stat.st_size, "unrecorded", "left for collection"))
        else:
            rows.append(AuditRow(digest, stat.st_size, "ok", ""))
    for row in rows:
        if not row.ok:
            log.warning("blob.audit", digest=row.digest, verdict=row.verdict, action=row.action)
    return rows
