"""The launcher: decides where instances run, tells each node, and records the answers.

Durable checkpoints: the placement (before any node is told) and each node's answer. Both are
re-derived on a second run, so launching twice is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from statemachine import crashpoint

from ...errors import AosCode, AosError, ProtocolError
from ...logs import get_logger
from ...nodes import (
    ImageLayout,
    InstanceKey,
    InstanceSpec,
    InstanceStatus,
    ServiceManager,
)
from ...protocol import (
    DesiredStatus,
    ErrorInfo,
    InstanceState,
    ItemState,
    NodeState,
    UnitConfig,
    dump_message,
    parse_message,
)
from ..imagemanager.interfaces import ItemRecord
from .balancer import balance
from .crashpoints import INSTANCES_ADOPTED, NODE_ANSWERED, PLACEMENT_STORED
from .interfaces import InstanceRecord, LauncherStorage
from .shapes import Demand, NodeSpec, Platform, demands, node_specs, with_desired_states

if TYPE_CHECKING:
    from ...nodes.itemconfig import ItemConfig, ItemFacts

log = get_logger("launcher")

LayoutOf = Callable[[str, str], ImageLayout]
FactsOf = Callable[[str, str], "ItemFacts"]


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
        nodes: node codename -> its service manager: the `NodeManager` (a live mapping, so a
            node whose SM connects later is placed on), or a plain mapping of in-process nodes.
        layout_of: (item id, version) -> how its image is built from stored blobs.
        facts_of: (item id, version) -> its item config and image platform (`ItemFacts`);
            None places without them (no resources asked, any platform).
        node_wait_s: how long the first launch of a cycle waits for the nodes the unit config
            names to connect once (AosCore's WaitAllNodesConnected).
    """

    def __init__(
        self,
        storage: LauncherStorage,
        nodes: Mapping[str, ServiceManager],
        layout_of: LayoutOf,
        facts_of: FactsOf | None = None,
        *,
        unit_config_of: Callable[[], UnitConfig | None] | None = None,
        node_wait_s: float = 60.0,
    ) -> None:
        self._storage = storage
        self._nodes = nodes
        self._layout_of = layout_of
        self._facts_of = facts_of
        self._unit_config_of = unit_config_of
        self._node_wait_s = node_wait_s
        self._lock = asyncio.Lock()
        self.launched: DesiredStatus | None = _read_placed(storage.placed())
        """The desired status the stored placement was made from (what `reconcile` keeps in
        force); stored with the placement, so it survives a restart in any phase."""

    def records(self) -> list[InstanceRecord]:
        return self._storage.instances()

    async def node_specs(
        self, desired: DesiredStatus, node_states: Mapping[str, str]
    ) -> list[NodeSpec]:
        """The nodes as placement sees them: what each reports, its unit config entry, the
        desired node states. A node whose SM is away, but not for its node timeout yet, keeps
        the instances it runs and takes no new ones (also one that has not come back since the
        CM started: what it runs is not known yet). Labels, priorities and resource ratios come
        from the installed unit config (`unit_config_of`), else from the desired status."""
        infos = [await self._nodes[n].node_info() for n in sorted(self._nodes)]
        config = desired.unit_config if self._unit_config_of is None else self._unit_config_of()
        specs = []
        for info, spec in zip(infos, node_specs(infos, config), strict=True):
            if not info.is_connected and info.state != NodeState.ERROR:
                spec = replace(spec, connected=True, accepts_new=False)
            specs.append(spec)
        return with_desired_states(specs, node_states)

    def _demands(
        self, desired: DesiredStatus, versions: Mapping[str, ItemRecord]
    ) -> tuple[list[Demand], dict[str, AosError]]:
        """The desired groups with their items' configs and platforms; items whose facts cannot
        be read, with the error."""
        configs: dict[str, ItemConfig] = {}
        platforms: dict[str, Platform] = {}
        broken: dict[str, AosError] = {}
        if self._facts_of is not None:
            for item_id, rec in versions.items():
                try:
                    facts = self._facts_of(rec.item_id, rec.version)
                except AosError as exc:
                    broken[item_id] = exc
                    continue
                if facts.config is not None:
                    configs[item_id] = facts.config
                platforms[item_id] = Platform(facts.os, facts.architecture, facts.variant)
        return demands(desired, configs, platforms), broken

    async def launch(
        self,
        desired: DesiredStatus,
        items: Sequence[ItemRecord],
        node_states: Mapping[str, str],
        *,
        wait_nodes: bool = True,
    ) -> list[InstanceRecord]:
        """Place every desired instance, tell each node its list, record the answers.

        With `wait_nodes`, first wait (at most the node wait) until every node the unit config
        names has connected once, so a node that is still booting is not passed over.
        """
        async with self._lock:
            return await self._locked_launch(desired, items, node_states, wait_nodes)

    async def reconcile(
        self,
        items: Callable[[], Sequence[ItemRecord]],
        node_states: Callable[[], Mapping[str, str]],
    ) -> list[InstanceRecord] | None:
        """Place again what the last launch placed, because a node came, went or reported
        something else than it was told; None when nothing was launched yet. Nodes that already
        run what they should are not told anything. The desired status, items and node states
        are read once the lock is held: a launch that ran meanwhile placed newer ones."""
        async with self._lock:
            if self.launched is None:
                return None
            return await self._locked_launch(self.launched, items(), node_states(), False)

    async def _locked_launch(
        self,
        desired: DesiredStatus,
        items: Sequence[ItemRecord],
        node_states: Mapping[str, str],
        wait_nodes: bool,
    ) -> list[InstanceRecord]:
        setter = getattr(self._nodes, "set_desired_states", None)
        if setter is not None:
            setter(node_states)
        waiter = getattr(self._nodes, "wait_all_connected", None)
        if wait_nodes and waiter is not None:
            await waiter(self._node_wait_s)
        return await self._launch(desired, items, node_states)

    async def _launch(
        self,
        desired: DesiredStatus,
        items: Sequence[ItemRecord],
        node_states: Mapping[str, str],
    ) -> list[InstanceRecord]:
        versions = runnable_versions(desired, items)
        layouts: dict[str, ImageLayout | AosError] = {}
        for item_id, item in versions.items():
            try:
                layouts[item_id] = self._layout_of(item.item_id, item.version)
            except AosError as exc:
                layouts[item_id] = exc
        wanted, broken = self._demands(desired, versions)
        layouts.update(broken)
        if not self._storage.instances():
            # A new store (or a unit never placed): adopt what the nodes that reported run, so
            # the placement keeps each instance where it runs.
            with contextlib.suppress(AosError):
                await self.refresh()
        before = {r.key: r for r in self._storage.instances()}
        current = {k: r.node for k, r in before.items() if r.node}
        specs = await self.node_specs(desired, node_states)
        plans = balance(wanted, specs, current)
        priorities = {(g.item.key, g.subject.key): g.priority for g in desired.instances}
        records: dict[InstanceKey, InstanceRecord] = {}
        per_node: dict[str, list[InstanceSpec]] = {spec.id: [] for spec in specs}
        for plan in plans:
            priority = priorities.get((plan.item, plan.subject), 0)
            item = versions.get(plan.item)
            kind = item.item_type if item else "service"
            version = item.version if item else ""
            for key, slot in plan:
                if item is None:
                    records[key] = self._failed(
                        key, kind, version, "", priority, AosCode.NOT_FOUND, "item is not available"
                    )
                    continue
                layout = layouts[item.item_id]
                if isinstance(layout, AosError):
                    records[key] = self._failed(
                        key, kind, version, slot.node or "", priority, layout.code, layout.message
                    )
                elif slot.node is None:
                    records[key] = self._failed(
                        key, kind, version, "", priority, AosCode(slot.code), slot.reason
                    )
                else:
                    per_node[slot.node].append(InstanceSpec(key, kind, version, layout, priority))
                    old = before.get(key)
                    kept = old is not None and old.node == slot.node and old.version == version
                    records[key] = (
                        replace(old, priority=priority)
                        if kept and old.state != InstanceState.FAILED
                        else InstanceRecord(
                            key, kind, version, slot.node, priority, InstanceState.ACTIVATING
                        )
                    )
        self._storage.replace_instances(
            sorted(records.values(), key=lambda r: r.key), dump_message(desired).decode()
        )
        self.launched = desired
        crashpoint(PLACEMENT_STORED)
        log.info(
            "placement.stored",
            instances=len(records),
            nodes={n: len(s) for n, s in per_node.items()},
            failed=sum(1 for r in records.values() if r.state == InstanceState.FAILED),
        )
        # Nodes are told side by side: one fetching large images delays no other. Every node's
        # answer is recorded before an error is raised.
        told = await asyncio.gather(
            *(self._tell(node, specs_, records) for node, specs_ in sorted(per_node.items())),
            return_exceptions=True,
        )
        for result in told:
            if isinstance(result, BaseException):
                raise result
        return self._storage.instances()

    async def _tell(
        self,
        node: str,
        specs: Sequence[InstanceSpec],
        records: Mapping[InstanceKey, InstanceRecord],
    ) -> None:
        """Make `node` run `specs` and record its answer. A node that already runs them is not
        asked again; one whose SM is away is left for when it comes back (its records stay)."""
        sm = self._nodes[node]
        needs_update = getattr(sm, "needs_update", None)
        try:
            if needs_update is not None and not needs_update(specs):
                statuses = await sm.instance_statuses()
                told = False
            else:
                statuses = await sm.run_instances(specs)
                told = True
        except AosError as exc:
            if exc.code != AosCode.TIMEOUT:
                raise
            log.warning(
                "node.unreachable",
                node=node,
                instances=len(specs),
                error=exc.message,
                next="told again when its SM connects; placed elsewhere after its node timeout",
            )
            return
        self._record(statuses, records)
        if told:
            crashpoint(NODE_ANSWERED)
            log.info(
                "node.answered",
                node=node,
                instances=len(specs),
                states=_count(s.state for s in statuses),
            )

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
            if _given_up(rec) and s.state == InstanceState.ACTIVATING:
                continue  # failed when waitingActive gave up; until it is active or fails
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
        reported and the next placement keeps each instance on its node. A node whose SM is
        away (of several) is skipped: its records stay as they were. Once a placement is
        stored, an instance it does not name is one the node is removing (or failed to
        remove): it is not adopted, or its record would outlive its container and be
        reported failed.
        """
        statuses: list[InstanceStatus] = []
        away: set[str] = set()
        for node in sorted(self._nodes):
            try:
                statuses += await self._nodes[node].instance_statuses()
            except AosError as exc:
                if exc.code != AosCode.TIMEOUT or len(self._nodes) == 1:
                    raise
                away.add(node)  # its records stay as they were until it comes back
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
            if k not in reported
            and r.node
            and r.node not in away
            # Placed and not reported yet: its node is being told (waitingActive times it out).
            and r.state not in (InstanceState.FAILED, InstanceState.ACTIVATING)
        ]
        self._record([*statuses, *missing], known)
        return self._storage.instances()

    def give_up_activating(self, timeout_s: float) -> list[tuple[str, str]]:
        """Record every instance still activating as failed (errorInfo timeout); the (item id,
        version) pairs they belong to. What waitingActive does when its timeout passes."""
        late = [r for r in self._storage.instances() if r.state == InstanceState.ACTIVATING]
        if late:
            error = _late_error(timeout_s)
            self._storage.update_instances(
                [replace(r, state=InstanceState.FAILED, error=error) for r in late]
            )
        return sorted({(r.key.item_id, r.version) for r in late})

    async def wait_active(self, timeout_s: float, poll_s: float = 0.1) -> bool:
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
                    next="reported failed; finalizing the items whose instances are active",
                )
                return False
            await asyncio.sleep(poll_s)


LATE = "did not become active within"


def _late_error(timeout_s: float) -> ErrorInfo:
    return ErrorInfo(int(AosCode.TIMEOUT), 0, f"{LATE} {timeout_s:g} s")


def _given_up(record: InstanceRecord) -> bool:
    """Failed by `give_up_activating`: still activating on its node, but no longer waited for."""
    error = record.error
    return (
        record.state == InstanceState.FAILED
        and error is not None
        and error.aos_code == AosCode.TIMEOUT
        and error.message.startswith(LATE)
    )


def _read_placed(raw: str | None) -> DesiredStatus | None:
    if raw is None:
        return None
    try:
        desired = parse_message(raw, message_type="desiredStatus")
    except ProtocolError:
        log.warning("placed.unreadable", next="placed again by the next cycle")
        return None
    return desired if isinstance(desired, DesiredStatus) else None


def _count(states: object) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in states:  # type: ignore[attr-defined]
        out[s.value] = out.get(s.value, 0) + 1
    return out
