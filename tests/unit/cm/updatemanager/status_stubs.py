"""Small working fakes of the unit status handler's collaborators, with memory.

`RecordingSender` stands for the cloud link: it keeps every status queued, holds them in a
`QueuedOutbox` until the test acks one, folds them as the real outbox does when a status comes
with `replace_types`, and says there is no room when the test sets `room = False`. A test can
wait for the n-th status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from aoscore_py.cm.communication.interfaces import OutboxEntry
from aoscore_py.cm.imagemanager.interfaces import ItemRecord
from aoscore_py.cm.launcher.interfaces import InstanceRecord
from aoscore_py.cm.updatemanager.interfaces import UnitConfigRecord
from aoscore_py.protocol import NodeInfo, UnitStatus


@dataclass
class StatusStore:
    """The records the status reads: unit configs and node states."""

    configs: list[UnitConfigRecord] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)

    def unit_configs(self) -> list[UnitConfigRecord]:
        return list(self.configs)

    def node_states(self) -> dict[str, str]:
        return dict(self.states)


@dataclass
class MemorySeq:
    """Sequence numbers reserved in blocks, in memory; `reserved` counts the blocks."""

    next_free: int = 1
    reserved: int = 0

    def reserve_seq(self, block: int) -> int:
        start = self.next_free
        self.next_free += block
        self.reserved += 1
        return start


@dataclass
class StubItems:
    items: list[ItemRecord] = field(default_factory=list)

    def records(self) -> list[ItemRecord]:
        return list(self.items)


@dataclass
class StubInstances:
    instances: list[InstanceRecord] = field(default_factory=list)

    def records(self) -> list[InstanceRecord]:
        return list(self.instances)

    async def refresh(self) -> list[InstanceRecord]:
        return list(self.instances)


@dataclass
class StubNode:
    info: NodeInfo

    async def node_info(self) -> NodeInfo:
        return self.info


@dataclass
class QueuedOutbox:
    """The statuses waiting for their ack, oldest first."""

    entries: list[OutboxEntry] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return len(self.entries)

    def queued(self, message_type: str) -> list[OutboxEntry]:
        return [e for e in self.entries if e.message_type == message_type]

    def ack(self, seq: int) -> None:
        """The cloud acknowledged the status numbered `seq`."""
        self.entries = [e for e in self.entries if e.seq != seq]


class RecordingSender:
    """The cloud link as the status handler uses it."""

    def __init__(self) -> None:
        self.outbox = QueuedOutbox()
        self.room = True
        self.fail_next: Exception | None = None  # what the next send raises (a full disk)
        self.statuses: list[UnitStatus] = []
        self.replace_types: list[tuple[str, ...]] = []
        self._sent = asyncio.Event()

    async def send(self, message: UnitStatus, *, replace_types: Sequence[str] = ()) -> str:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        txn = f"txn-{len(self.statuses) + 1}"
        self.statuses.append(message)
        self.replace_types.append(tuple(replace_types))
        kept = [e for e in self.outbox.entries if e.message_type not in replace_types]
        entry = OutboxEntry(len(self.statuses), txn, message.MESSAGE_TYPE, b"", 0.0, message.seq)
        self.outbox.entries = [*kept, entry]
        self._sent.set()
        return txn

    def room_for(self, message: UnitStatus) -> bool:
        return self.room

    async def status(self, number: int, timeout_s: float = 5.0) -> UnitStatus:
        """The `number`-th status queued (1 is the first), waiting for it if need be."""
        async with asyncio.timeout(timeout_s):
            while len(self.statuses) < number:
                self._sent.clear()
                await self._sent.wait()
        return self.statuses[number - 1]
