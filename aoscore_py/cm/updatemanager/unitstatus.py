"""The unit status handler: builds the unit status from the records and the nodes.

A full status goes out on every connect and after every cycle. Between them, item, instance and
node changes are reported as deltas, debounced (`debounce_s`, AosCore's unitStatusSendTimeout,
10 s): the first change starts the timer, and when it runs out one delta holds every section
that differs from what the cloud was last told (a changed section is sent whole). Statuses go
into the link's durable outbox also while offline (AosCore discards them then); when the outbox
is full, the queued statuses are folded into one full status (`foldedSeqs` names what it
replaced), so the latest state is never lost.

Every unitStatus carries `bootId` (new per process start) and `seq`, a number that only grows,
across restarts too (reserved from storage in blocks), so the cloud can order a timeline even
when messages arrive out of order.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import replace
from itertools import groupby

from ...errors import AosError
from ...logs import get_logger
from ...protocol import (
    DesiredStatus,
    ErrorInfo,
    Identity,
    InstancesStatus,
    InstanceStatusInfo,
    ItemStatus,
    NodeInfo,
    NodeState,
    UnitConfigStatus,
    UnitStatus,
)
from ..communication.interfaces import OutboxEntry
from ..imagemanager.interfaces import ItemRecord
from ..launcher.interfaces import InstanceRecord
from .interfaces import (
    InstanceSource,
    ItemSource,
    NodeReporter,
    SequenceStorage,
    StatusSender,
    UpdateStorage,
)

log = get_logger("unitstatus")

SEQ_BLOCK = 100
DEFAULT_DEBOUNCE_S = 10.0
SECTIONS = ("unit_config", "nodes", "items", "instances", "subjects")
"""The sections a delta may carry, each sent whole when it changed."""


class SequenceNumbers:
    """Numbers that only grow, across restarts, costing one commit per `block` numbers."""

    def __init__(self, storage: SequenceStorage, block: int = SEQ_BLOCK) -> None:
        self._storage = storage
        self._block = block
        self._next = 0
        self._end = 0

    def next(self) -> int:
        if self._next >= self._end:
            self._next = self._storage.reserve_seq(self._block)
            self._end = self._next + self._block
        value = self._next
        self._next += 1
        return value


def items_status(records: list[ItemRecord]) -> tuple[ItemStatus, ...]:
    return tuple(
        ItemStatus(Identity(id=r.item_id, type=r.item_type), r.version, r.state, r.error)
        for r in records
    )


def instances_status(records: list[InstanceRecord]) -> tuple[InstancesStatus, ...]:
    """Instances grouped by (item, subject, version), as the protocol reports them."""

    def group(r: InstanceRecord) -> tuple[str, str, str, str]:
        return (r.key.item_id, r.key.subject_id, r.version, r.item_type)

    out = []
    for (item_id, subject_id, version, kind), rows in groupby(
        sorted(records, key=group), key=group
    ):
        out.append(
            InstancesStatus(
                item=Identity(id=item_id, type=kind),
                subject=Identity(id=subject_id),
                version=version,
                instances=tuple(
                    InstanceStatusInfo(
                        node=Identity(codename=r.node),
                        runtime=Identity(codename="docker"),
                        instance=r.key.instance,
                        state=r.state,
                        error_info=r.error,
                    )
                    for r in sorted(rows, key=lambda r: r.key.instance)
                ),
            )
        )
    return tuple(out)


class UnitStatusHandler:
    """Builds and sends full unit statuses.

    The desired status handler tells it which desired status is in force (`use_desired`), so
    it needs no way back into the handler.

    Args:
        storage: unit config and node states.
        seq_storage: where sequence numbers are reserved.
        items: the item records (the image manager).
        instances: the instance records, refreshed from the nodes (the launcher).
        nodes: node codename -> what reports that node.
        sender: sends a status to the cloud (the cloud link).
        debounce_s: how long changes are gathered into one delta.
        boot_id: this process's boot (shared with the link's other messages); a new one when
            not given.
    """

    def __init__(
        self,
        storage: UpdateStorage,
        seq_storage: SequenceStorage,
        items: ItemSource,
        instances: InstanceSource,
        nodes: Mapping[str, NodeReporter],
        sender: StatusSender,
        *,
        debounce_s: float = DEFAULT_DEBOUNCE_S,
        boot_id: str | None = None,
    ) -> None:
        self.boot_id = boot_id or uuid.uuid4().hex
        self._debounce_s = debounce_s
        self._told: UnitStatus | None = None  # what the cloud was last told, sections merged
        self._timer: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._storage = storage
        self._seq = SequenceNumbers(seq_storage)
        self._items = items
        self._instances = instances
        self._nodes = nodes  # a live mapping: a node whose SM connects later is reported
        self._sender = sender
        self._desired: DesiredStatus | None = None

    def use_desired(self, desired: DesiredStatus | None) -> None:
        """The desired status in force now; its subjects are reported."""
        self._desired = desired

    async def _node_infos(self) -> tuple[NodeInfo, ...]:
        states = self._storage.node_states()
        out = []
        for node in sorted(self._nodes):
            info = await self._nodes[node].node_info()
            if states.get(node) == "paused" and info.state == NodeState.PROVISIONED:
                info = _with_state(info, NodeState.PAUSED)  # error outranks paused
            out.append(info)
        return tuple(out)

    async def _instance_records(self) -> list[InstanceRecord]:
        """The instances as the nodes report them now; the last recorded ones, each marked with
        the error, when a node cannot be asked (a status still goes out)."""
        try:
            return await self._instances.refresh()
        except AosError as exc:
            log.warning(
                "status.degraded",
                error=exc.message,
                next="reporting the last recorded instance states",
            )
            error = ErrorInfo(int(exc.code), 0, f"node not reachable: {exc.message}")
            return [replace(r, error=r.error or error) for r in self._instances.records()]

    async def full_status(self) -> UnitStatus:
        """The unit's whole status now, not yet numbered (`seq` is given as it is queued)."""
        configs = self._storage.unit_configs()
        desired = self._desired
        return UnitStatus(
            is_delta_info=False,
            unit_config=tuple(UnitConfigStatus(c.version, c.state, c.error) for c in configs),
            nodes=await self._node_infos(),
            items=items_status(self._items.records()),
            instances=instances_status(await self._instance_records()),
            subjects=tuple(Identity(codename=s.identity.key) for s in desired.subjects)
            if desired
            else (),
            boot_id=self.boot_id,
        )

    async def send_full(self, reason: str) -> None:
        """Queue a full unit status now; never raises (one that cannot be built is logged)."""
        async with self._send_lock:
            status = await self._built(reason)
            if status is not None:
                await self._queue(status, reason)

    async def _built(self, reason: str) -> UnitStatus | None:
        """The full status now, or None (logged) when it cannot be built."""
        try:
            return await self.full_status()
        except Exception:
            log.error(
                "status.failed",
                reason=reason,
                exc_info=True,
                next="the next change, cycle or reconnect sends a status",
            )
            return None

    def changed(self, reason: str) -> None:
        """Something the status reports changed: a delta goes out within `debounce_s`."""
        if self._timer is not None and not self._timer.done():
            return
        self._timer = asyncio.get_running_loop().create_task(
            self._send_delta_later(reason), name="status-delta"
        )

    async def _send_delta_later(self, reason: str) -> None:
        await asyncio.sleep(self._debounce_s)
        self._timer = None
        await self.send_delta(reason)

    async def send_delta(self, reason: str) -> None:
        """Queue a delta of what changed since the cloud was last told (nothing when nothing
        did; a full status when it has been told nothing yet); never raises."""
        async with self._send_lock:
            now = await self._built(reason)
            if now is None:
                return
            told = self._told
            if told is None:
                await self._queue(now, reason)
                return
            changed = {k: getattr(now, k) for k in SECTIONS if getattr(now, k) != getattr(told, k)}
            if not changed:
                return
            delta = UnitStatus(is_delta_info=True, boot_id=now.boot_id, **changed)
            await self._queue(delta, reason)

    async def _queue(self, status: UnitStatus, reason: str) -> None:
        """Number `status` and hand it to the outbox; fold the queued statuses into a full one
        when it would overflow."""
        try:
            status = replace(status, seq=self._seq.next())
            replace_types: tuple[str, ...] = ()
            if not self._sender.room_for(status):
                if status.is_delta_info:
                    status = replace(await self.full_status(), seq=status.seq)
                folded = _ranges(
                    e.seq
                    for e in self._sender.outbox.queued(status.MESSAGE_TYPE)
                    if e.seq is not None
                )
                status = replace(status, folded_seqs=folded or None)
                replace_types = (status.MESSAGE_TYPE,)
                log.warning(
                    "status.folded",
                    statuses=sum(b - a + 1 for a, b in folded),
                    seq=status.seq,
                    next="the outbox is full; its queued statuses are replaced by this full one",
                )
            txn = await self._sender.send(status, replace_types=replace_types)
        except Exception as exc:  # the store refuses (a full disk), a node cannot be asked
            log.error(
                "status.not_queued",
                reason=reason,
                seq=status.seq,
                error=exc.message if isinstance(exc, AosError) else f"{type(exc).__name__}: {exc}",
                next="the next change, cycle or reconnect sends what it held",
            )
            return
        self._told = (
            status
            if not status.is_delta_info or self._told is None
            else _merged(self._told, status)
        )
        log.info(
            "status.delta" if status.is_delta_info else "status.full",
            reason=reason,
            seq=status.seq,
            txn=txn,
            sections=[k for k in SECTIONS if getattr(status, k) is not None]
            if status.is_delta_info
            else None,
            items=len(status.items or ()),
            instances=sum(len(g.instances) for g in status.instances or ()),
            outbox=self._sender.outbox.depth,
        )

    def dropped(self, entry: OutboxEntry) -> None:
        """The outbox dropped a message unsent (nacked too often, or evicted): if it was a
        status, what the cloud was told is no longer known, so the next one is full."""
        if entry.message_type == UnitStatus.MESSAGE_TYPE:
            self._told = None
            log.warning(
                "status.dropped",
                seq=entry.seq,
                next="the next status is a full one",
            )

    def stop(self) -> None:
        """Drop a pending delta timer (the next start sends a full status anyway)."""
        if self._timer is not None:
            self._timer.cancel()


def _with_state(info: NodeInfo, state: NodeState) -> NodeInfo:
    return replace(info, state=state)


def _merged(told: UnitStatus, delta: UnitStatus) -> UnitStatus:
    """What the cloud knows after `delta`: its sections over the ones it was told before."""
    changed = {k: getattr(delta, k) for k in SECTIONS if getattr(delta, k) is not None}
    return replace(told, **changed)


def _ranges(seqs: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Sorted seqs as (first, last) runs of consecutive numbers."""
    out: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return tuple(out)
