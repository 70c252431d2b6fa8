"""The launcher: decides where instances run, tells each node, and records the answers.

Durable checkpoints: the placement (before any node is told) and each node's answer. Both are
re-derived on a second run, so launching twice is harmless.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence

from statemachine import crashpoint

from ...errors import AosCode, AosError
from ...logs import get_logger
from ...nodes import (
    ImageLayout,
    InstanceKey,
    InstanceSpec,
    InstanceStatus,
    ServiceManager,
    expand_instances,
)
from ...protocol import DesiredStatus, ErrorInfo, InstanceState, ItemState
from ..imagemanager.interfaces import ItemRecord
from .crashpoints import INSTANCES_ADOPTED, NODE_ANSWERED, PLACEMENT_STORED
from .interfaces import InstanceRecord, LauncherStorage
from .placement import NodeCandidate, WantedInstance, place

log = get_logger("launcher")

LayoutOf = Callable[[str, str], ImageLayout]


def runnable_versions(
    desired: DesiredStatus, records: Sequence[ItemRecord]
) -> dict[str, ItemRecord]:
    """For each desired item, the version its instances should run.

    The desired version when it is downloaded (pending or installed); otherwise the version
    installed before, so what was running keeps running when an update fails.
    """
    by_key = {(r.item_id, r.version): r for r in records}
    out: dict[str, ItemRecord] = {}
    for item in desired.items:
        item_id = item.item.key or ""
        rec = by_key.get((item_id, item.version))
        if (
            rec
            and rec.index_digest == item.index_digest
            and rec.state
            in (
                ItemState.PENDING,
                ItemState.INSTALLED,
            )
        ):
            out[item_id] = rec
            continue
        previous = [r for r in records if r.item_id == item_id and r.state == ItemState.INSTALLED]
        if previous:
            out[item_id] = previous[-1]
    return out


class Launcher:
    """Places instances on nodes and keeps their records.

    Args:
        storage: instance records.
        nodes: node codename -> its service manager.
        layout_of: (item id, version) -> how its image is built from stored blobs.
    """

    def __init__(
        self,
        storage: LauncherStorage,
        nodes: Mapping[str, ServiceManager],
        layout_of: LayoutOf,
    ) -> None:
        self._storage = storage
        self._nodes = dict(nodes)
        self._layout_of = layout_of

    def records(self) -> list[InstanceRecord]:
        return self._storage.instances()

    def candidates(
        self, desired: DesiredStatus, node_states: Mapping[str, str]
    ) -> list[NodeCandidate]:
        """The nodes as placement sees them: labels and priority from the unit config."""
        configs = {}
        if desired.unit_config is not None:
            configs = {n.node.key: n for n in desired.unit_config.nodes}
        out = []
        for node in sorted(self._nodes):
            cfg = configs.get(node)
            out.append(
                NodeCandidate(
                    node=node,
                    priority=cfg.priority if cfg else 0,
                    labels=frozenset(cfg.labels) if cfg else frozenset(),
                    paused=node_states.get(node) == "paused",
                )
            )
        return out

    async def launch(
        self,
        desired: DesiredStatus,
        items: Sequence[ItemRecord],
        node_states: Mapping[str, str],
    ) -> list[InstanceRecord]:
        """Place every desired instance, tell each node its list, record the answers."""
        versions = runnable_versions(desired, items)
        layouts: dict[str, ImageLayout | AosError] = {}
        for item_id, item in versions.items():
            try:
                layouts[item_id] = self._layout_of(item.item_id, item.version)
            except AosError as exc:
                layouts[item_id] = exc
        wanted: list[WantedInstance] = []
        records: dict[InstanceKey, InstanceRecord] = {}
        meta: dict[InstanceKey, tuple[ItemRecord | None, int]] = {}
        for key, inst in expand_instances(desired.instances):
            meta[key] = (versions.get(key.item_id), inst.priority)
            wanted.append(WantedInstance(key, inst.priority, frozenset(inst.labels)))
        current = {r.key: r.node for r in self._storage.instances()}
        placements = place(wanted, self.candidates(desired, node_states), current)
        per_node: dict[str, list[InstanceSpec]] = {node: [] for node in self._nodes}
        for p in placements:
            item, priority = meta[p.key]
            kind = item.item_type if item else "service"
            version = item.version if item else ""
            if item is None:
                records[p.key] = self._failed(
                    p.key,
                    kind,
                    version,
                    p.node or "",
                    priority,
                    AosCode.NOT_FOUND,
                    "item is not available",
                )
            elif p.node is None:
                records[p.key] = self._failed(
                    p.key, kind, version, "", priority, AosCode.NOT_FOUND, p.reason
                )
            else:
                layout = layouts[item.item_id]
                if isinstance(layout, AosError):
                    records[p.key] = self._failed(
                        p.key, kind, version, p.node, priority, layout.code, layout.message
                    )
                    continue
                per_node[p.node].append(InstanceSpec(p.key, kind, version, layout, priority))
                records[p.key] = InstanceRecord(
                    p.key, kind, version, p.node, priority, InstanceState.ACTIVATING
                )
        self._storage.replace_instances(sorted(records.values(), key=lambda r: r.key))
        crashpoint(PLACEMENT_STORED)
        log.info(
            "placement.stored",
            instances=len(records),
            nodes={n: len(s) for n, s in per_node.items()},
        )
        for node, specs in sorted(per_node.items()):
            statuses = await self._nodes[node].run_instances(specs)
            self._record(statuses, records)
            crashpoint(NODE_ANSWERED)
            log.info(
                "node.answered",
                node=node,
                instances=len(specs),
                states=_count(s.state for s in statuses),
            )
        return self._storage.instances()

    @staticmethod
    def _failed(
        key: InstanceKey,
        kind: str,
        version: str,
        node: str,
        priority: int,
        code: AosCode,
        message: str,
    ) -> InstanceRecord:
        return InstanceRecord(
            key,
            kind,
            version,
            node,
            priority,
            InstanceState.FAILED,
            ErrorInfo(int(code), 0, message),
        )

    def _record(
        self,
        statuses: Sequence[InstanceStatus],
        known: Mapping[InstanceKey, InstanceRecord] | None = None,
    ) -> list[InstanceRecord]:
        known = known if known is not None else {r.key: r for r in self._storage.instances()}
        updates = []
        for s in statuses:
            rec = known.get(s.key)
            if rec is None or rec.node != s.node:
                continue
            new = InstanceRecord(
                s.key, rec.item_type, rec.version, s.node, rec.priority, s.state, s.error
            )
            if new != rec:
                updates.append(new)
        if updates:
            self._storage.update_instances(updates)
        return updates

    async def refresh(self) -> list[InstanceRecord]:
        """Ask every node how its instances run and record what changed.

        With no instance record at all (a new store in place of one that was lost, or a unit
        that never launched), what the nodes report is adopted as it runs, so that it is
        reported and the next placement keeps each instance on its node. Once a placement is
        stored, an instance it does not name is one the node is removing (or failed to
        remove): it is not adopted, or its record would outlive its container and be
        reported failed.
        """
        statuses: list[InstanceStatus] = []
        for node in sorted(self._nodes):
            statuses += await self._nodes[node].instance_statuses()
        reported = {s.key for s in statuses}
        known = {r.key: r for r in self._storage.instances()}
        if not known and statuses:
            adopted = [
                InstanceRecord(s.key, "service", s.version, s.node, 0, s.state, s.error)
                for s in sorted(statuses, key=lambda s: s.key)
            ]
            self._storage.update_instances(adopted)
            crashpoint(INSTANCES_ADOPTED)
            log.warning(
                "instances.adopted",
                instances=[str(r.key) for r in adopted],
                next="reported as they run; the next desired status places them again",
            )
            return self._storage.instances()
        missing = [
            InstanceStatus(
                k,
                r.version,
                r.node,
                InstanceState.FAILED,
                ErrorInfo(int(AosCode.NOT_FOUND), 0, "instance is not running on its node"),
            )
            for k, r in known.items()
            if k not in reported and r.node and r.state != InstanceState.FAILED
        ]
        self._record([*statuses, *missing], known)
        return self._storage.instances()

    async def wait_active(self, timeout_s: float, poll_s: float = 0.5) -> bool:
        """Wait until no instance is activating; False when `timeout_s` passes first."""
        deadline = time.monotonic() + timeout_s
        while True:
            records = await self.refresh()
            activating = [str(r.key) for r in records if r.state == InstanceState.ACTIVATING]
            if not activating:
                return True
            if time.monotonic() >= deadline:
                log.warning(
                    "wait_active.timeout",
                    activating=activating,
                    timeout_s=timeout_s,
                    next="finalizing anyway; these instances are reported as they are",
                )
                return False
            await asyncio.sleep(poll_s)


def _count(states: object) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in states:  # type: ignore[attr-defined]
        out[s.value] = out.get(s.value, 0) + 1
    return out
