"""Small working fakes for the cloud link's tests: a clock that moves only when told, and an
in-memory `OutboxStorage` that keeps its entries, their order and every call it was asked.

`MemoryOutboxStorage` behaves as the SQLite store does (`storage/store.py`): ids only grow,
`delete=` goes with the append, and a refused write (`fail_next`) changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from aoscore_py.cm.communication.interfaces import OutboxEntry
from aoscore_py.errors import AosCode, StorageError


class FakeClock:
    """Seconds that move only when the test says so (monotonic and wall alike)."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class MemoryOutboxStorage:
    """The outbox table in memory. `fail_next` makes the next write raise a StorageError
    (a full disk) without changing anything."""

    entries: list[OutboxEntry] = field(default_factory=list)
    appends: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # (txn, delete)
    deletes: list[tuple[str, ...]] = field(default_factory=list)  # one per transaction
    fail_next: bool = False
    _next_id: int = 1

    def _refuse(self, doing: str) -> None:
        if self.fail_next:
            self.fail_next = False
            raise StorageError(f"cannot {doing}: disk full", code=AosCode.NO_MEMORY)

    def outbox_append(
        self,
        txn: str,
        message_type: str,
        frame: bytes,
        created_at: float,
        seq: int | None,
        delete: Sequence[str],
    ) -> int:
        self._refuse(f"queue a {message_type}")
        assert all(e.txn != txn for e in self.entries), f"txn {txn} stored twice"
        gone = set(delete)
        self.entries = [e for e in self.entries if e.txn not in gone]
        entry_id = self._next_id
        self._next_id += 1
        self.entries.append(OutboxEntry(entry_id, txn, message_type, frame, created_at, seq))
        self.appends.append((txn, tuple(delete)))
        return entry_id

    def outbox_delete(self, txns: Sequence[str]) -> None:
        self._refuse("forget acknowledged messages")
        gone = set(txns)
        self.entries = [e for e in self.entries if e.txn not in gone]
        self.deletes.append(tuple(txns))

    def outbox_entries(self) -> list[OutboxEntry]:
        return list(self.entries)

    @property
    def txns(self) -> list[str]:
        return [e.txn for e in self.entries]
