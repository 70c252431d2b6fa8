"""The cloud link's durable outbox: every message the unit sends waits in SQLite for its ack.

A message is committed before it is first sent and deleted only when the cloud acks its txn, so
a status made while the link is down, or sent just before the agent was killed or the power cut,
still reaches the cloud later (AosCore keeps its send queue in memory and drops deltas while
offline). Without an ack in `ack_timeout_s` a message is sent again with the same txn, for as
long as it takes; a nack sends it again after its `retryAfter`.

Publish modes: `buffer-only` while the link is down (messages are only stored), `recovering`
after a reconnect while the backlog drains (in order, at most `window` unacknowledged at once),
`direct` once it has drained.

The outbox is bounded by count and bytes. A producer that would overflow it asks first
(`room_for`): the unit status handler then folds every queued status into one full status
(`append(..., replace_types=("unitStatus",))`), so the latest state is never lost and memory
stays flat during a week offline. Anything still over the bound (a flood of other messages) is
evicted oldest first, and logged.

Pure bookkeeping here; `OutboxStorage` is the store's side and the link does the I/O.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from statemachine import crashpoint

from ...logs import get_logger
from .crashpoints import OUTBOX_ACKED, OUTBOX_STORED
from .interfaces import OutboxEntry, OutboxStorage

log = get_logger("communication")


MAX_NACKS = 10
"""Refusals of one message after which it is dropped."""
DEFAULT_RETRY_AFTER_S = 0.5
"""How long a nack without a retryAfter (or with 0) holds a message (PROTOCOL.md's default)."""


class PublishMode(enum.StrEnum):
    DIRECT = "direct"
    BUFFER = "buffer-only"
    RECOVERING = "recovering"


@dataclass(frozen=True)
class OutboxLimits:
    """The outbox's bounds and timing.

    Args:
        max_count: messages kept at most.
        max_bytes: frame bytes kept at most.
        ack_timeout_s: seconds without an ack before a message is sent again.
        window: messages sent and not yet acknowledged at once.
    """

    max_count: int = 1000
    max_bytes: int = 16 * 1024 * 1024
    ack_timeout_s: float = 10.0
    window: int = 64

    def __post_init__(self) -> None:
        if self.max_count < 2 or self.max_bytes < 1 or self.ack_timeout_s <= 0 or self.window < 1:
            raise ValueError(f"outbox limits out of range: {self}")


@dataclass
class _Slot:
    entry: OutboxEntry
    deadline: float | None = None  # None: not sent on this connection
    tries: int = 0
    nacks: int = 0


@dataclass
class Outbox:
    """The queue of unacknowledged messages, its mode and its send schedule.

    Args:
        storage: the durable side.
        clock: monotonic seconds (for ack deadlines).
        wall: wall-clock seconds (for the age an operator reads).
        limits: bounds and timing.
    """

    storage: OutboxStorage
    clock: Callable[[], float]
    wall: Callable[[], float]
    limits: OutboxLimits = field(default_factory=OutboxLimits)
    _slots: OrderedDict[str, _Slot] = field(default_factory=OrderedDict)
    _bytes: int = 0
    _online: bool = False
    _mode: PublishMode = PublishMode.BUFFER
    _acked: list[str] = field(default_factory=list)
    on_dropped: Callable[[OutboxEntry], None] | None = None
    """Called for a message that leaves unsent for good (nacked too often, or evicted), not for
    one folded into another: the status handler then tells the cloud everything again."""

    def __post_init__(self) -> None:
        for entry in self.storage.outbox_entries():
            self._slots[entry.txn] = _Slot(entry)
            self._bytes += len(entry.frame)
        if self._slots:
            log.info(
                "outbox.loaded",
                depth=len(self._slots),
                bytes=self._bytes,
                next="sent in order once the link is up",
            )

    # what an operator reads

    @property
    def mode(self) -> PublishMode:
        return self._mode

    @property
    def depth(self) -> int:
        return len(self._slots)

    @property
    def size(self) -> int:
        return self._bytes

    def oldest_at(self) -> float | None:
        """When the oldest waiting message was made (wall clock), if any."""
        for slot in self._slots.values():
            return slot.entry.created_at
        return None

    def queued(self, message_type: str) -> list[OutboxEntry]:
        """The waiting entries of one type, oldest first."""
        return [s.entry for s in self._slots.values() if s.entry.message_type == message_type]

    # producers

    def room_for(self, size: int) -> bool:
        """Whether one more message of `size` bytes fits without folding or evicting."""
        return len(self._slots) + 1 <= self.limits.max_count and (
            self._bytes + size <= self.limits.max_bytes
        )

    def append(
        self,
        txn: str,
        message_type: str,
        frame: bytes,
        *,
        seq: int | None = None,
        replace_types: Sequence[str] = (),
    ) -> list[OutboxEntry]:
        """Store one message (durably, before it is sent); returns the entries it pushed out.

        `replace_types`: queued messages of these types are deleted in the same transaction
        (folded into this one by the caller). Anything still over the bounds is evicted oldest
        first.
        """
        out = [s.entry for s in self._slots.values() if s.entry.message_type in replace_types]
        count = len(self._slots) - len(out) + 1
        size = self._bytes - sum(len(e.frame) for e in out) + len(frame)
        gone = {e.txn for e in out}
        for slot in self._slots.values():
            if count <= self.limits.max_count and size <= self.limits.max_bytes:
                break
            if slot.entry.txn in gone:
                continue
            out.append(slot.entry)
            gone.add(slot.entry.txn)
            count -= 1
            size -= len(slot.entry.frame)
        created = self.wall()
        entry_id = self.storage.outbox_append(
            txn, message_type, frame, created, seq, [*self._acked, *(e.txn for e in out)]
        )
        self._acked.clear()
        crashpoint(OUTBOX_STORED)
        for entry in out:
            self._forget(entry.txn)
        self._slots[txn] = _Slot(OutboxEntry(entry_id, txn, message_type, frame, created, seq))
        self._bytes += len(frame)
        evicted = [e for e in out if e.message_type not in replace_types]
        for entry in evicted:
            self._dropped(entry)
        if evicted:
            log.warning(
                "outbox.evicted",
                count=len(evicted),
                types=sorted({e.message_type for e in evicted}),
                depth=len(self._slots),
                next="the outbox is over its bounds; the oldest messages were dropped",
            )
        return out

    # the link

    def connected(self) -> None:
        """The link is up: drain the backlog first (recovering), else send directly."""
        self._online = True
        for slot in self._slots.values():
            slot.deadline = None
            slot.tries = 0
        self._set_mode(PublishMode.RECOVERING if self._slots else PublishMode.DIRECT)

    def disconnected(self) -> None:
        """The link is down: only store until it is back."""
        self._online = False
        self._set_mode(PublishMode.BUFFER)

    def due(self) -> list[bytes]:
        """The frames to send now, in order: those past their ack deadline again, and the next
        unsent ones while fewer than `window` are unacknowledged. Nothing while offline."""
        if not self._online:
            return []
        now = self.clock()
        in_flight = sum(1 for s in self._slots.values() if s.deadline is not None)
        out = []
        for slot in self._slots.values():
            if slot.deadline is None:
                if in_flight >= self.limits.window:
                    continue
                in_flight += 1
            elif slot.deadline > now:
                continue
            elif slot.tries:
                log.info(
                    "message.resent",
                    txn=slot.entry.txn,
                    type=slot.entry.message_type,
                    tries=slot.tries + 1,
                    reason="no ack yet",
                )
            slot.tries += 1
            slot.deadline = now + self.limits.ack_timeout_s
            out.append(slot.entry.frame)
        return out

    def acked(self, txn: str) -> bool:
        """The cloud acknowledged `txn`: it leaves the queue now, and the store at the next
        `flush_acked` or `append` (a batch per commit). False for a txn not (or no longer)
        here. A delete lost to a cut only sends the message once more, under the same txn,
        which the cloud records once."""
        if txn not in self._slots:
            return False
        self._acked.append(txn)
        self._forget(txn)
        if not self._slots and self._mode is PublishMode.RECOVERING:
            self._set_mode(PublishMode.DIRECT)
        return True

    def flush_acked(self) -> None:
        """Delete the acknowledged messages from the store, in one transaction."""
        if self._acked:
            self.storage.outbox_delete(self._acked)
            self._acked.clear()
            crashpoint(OUTBOX_ACKED)

    def nacked(self, txn: str, retry_after_s: float) -> bool:
        """The cloud refused `txn` for now: send it again after `retry_after_s`. After
        `MAX_NACKS` refusals of one message it is dropped (a cloud that will never take it must
        not hold the queue for ever); returns whether it was."""
        slot = self._slots.get(txn)
        if slot is None:
            return False
        slot.nacks += 1
        # retryAfter 0 (or none) is the protocol's default, not "at once": ten nacks in a row
        # would otherwise drop a message within milliseconds.
        if retry_after_s <= 0:
            retry_after_s = DEFAULT_RETRY_AFTER_S
        if slot.nacks >= MAX_NACKS:
            self._acked.append(txn)
            self._forget(txn)
            if not self._slots and self._mode is PublishMode.RECOVERING:
                self._set_mode(PublishMode.DIRECT)
            log.error(
                "message.refused_by_cloud",
                txn=txn,
                type=slot.entry.message_type,
                nacks=slot.nacks,
                next="dropped; the next status is a full one",
            )
            self._dropped(slot.entry)
            return True
        slot.deadline = self.clock() + retry_after_s
        return False

    def next_deadline(self) -> float | None:
        """When `due` next has something to resend, if anything is in flight."""
        return min(
            (s.deadline for s in self._slots.values() if s.deadline is not None), default=None
        )

    def _dropped(self, entry: OutboxEntry) -> None:
        if self.on_dropped is not None:
            self.on_dropped(entry)

    def _forget(self, txn: str) -> None:
        slot = self._slots.pop(txn, None)
        if slot is not None:
            self._bytes -= len(slot.entry.frame)

    def _set_mode(self, mode: PublishMode) -> None:
        if mode is self._mode:
            return
        log.info("outbox.mode", mode=mode.value, previous=self._mode.value, depth=len(self._slots))
        self._mode = mode
