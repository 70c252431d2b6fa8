"""The unit status handler: builds the full unit status from the records and the nodes.

Every unitStatus carries `bootId` (new per process start) and `seq`, a number that only grows,
across restarts too (reserved from storage in blocks), so the cloud can order a timeline even
when messages arrive out of order.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
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
    """

    def __init__(
        self,
        storage: UpdateStorage,
        seq_storage: SequenceStorage,
        items: ItemSource,
        instances: InstanceSource,
        nodes: Mapping[str, NodeReporter],
        sender: StatusSender,
    ) -> None:
        self.boot_id = uuid.uuid4().hex
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
            seq=self._seq.next(),
        )

    async def send_full(self, reason: str) -> None:
        """Send a full unit status now; never raises (a status that cannot be built is logged)."""
        try:
            status = await self.full_status()
        except Exception:
            log.error(
                "status.failed",
                reason=reason,
                exc_info=True,
                next="the next cycle or reconnect sends a full status",
            )
            return
        txn = await self._sender.send(status)
        log.info(
            "status.full",
            reason=reason,
            seq=status.seq,
            sent=txn is not None,
            items=len(status.items or ()),
            instances=sum(len(g.instances) for g in status.instances or ()),
        )


def _with_state(info: NodeInfo, state: NodeState) -> NodeInfo:
    return replace(info, state=state)
