"""Where each instance runs, by AosCore's launcher rules: a pure function of demands over nodes.

Candidates are the connected, provisioned nodes carrying every label the instance asks for,
every shared resource its item config names, a runtime of an allowed type whose platform runs
the image. A runtime fits when its free DMIPS, free RAM (its own `allowedDmips`/`allowedRam`
pool, else the node's), its instance count, each named resource's slots all cover one more.
Groups go in priority order (higher first, then item id, subject id); among fitting nodes the
highest node priority wins, then the most free node CPU, the most free node RAM, the node id;
within a node, the first fitting runtime by type name.

Our addition: an instance keeps its current node while that node qualifies with room for it
(no needless moves); a node that `accepts_new` no more (its SM is away, within its timeout) only
keeps what it runs. Instances that stay book their place before any other is placed, so new
ones balance against what really runs; an instance of strictly higher priority that fits
nowhere else may push lower-priority ones out, which are then placed like new ones. An instance
that fits nowhere gets the reason, in AosCore's filter order.

Speed: instances of one (item, subject) group share their requirements, so candidates are
filtered once per group; the best node comes off a heap keyed by free resources.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from ...errors import AosCode
from ...nodes import InstanceKey
from ...nodes.itemconfig import DEFAULT_RUNTIMES, requested_cpu, requested_ram
from ...nodes.itemconfig import shared_resources as resource_names
from .pools import Candidate, Hold, NodePool, Pool, RuntimePool, fits_without
from .shapes import Demand, NodeSpec, describe_bytes


@dataclass(frozen=True, slots=True)
class Slot:
    """Where one instance goes: a node, a runtime; or none, with the aosCode, the reason."""

    node: str | None
    runtime: str | None = None
    code: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """The slots of one (item, subject) group, by instance index."""

    item: str
    subject: str
    slots: tuple[Slot, ...]

    def __iter__(self) -> Iterator[tuple[InstanceKey, Slot]]:
        for index, slot in enumerate(self.slots):
            yield InstanceKey(self.item, self.subject, index), slot


def balance(
    demands: Sequence[Demand],
    nodes: Sequence[NodeSpec],
    current: Mapping[InstanceKey, str] | None = None,
) -> list[GroupPlan]:
    """Choose a node, a runtime for every instance; one plan per demand, by (item, subject).

    Args:
        demands: the wanted instance groups.
        nodes: every node known, usable or not (the others only explain refusals).
        current: instance -> the node it runs on now; it stays there while it may.
    """
    return _Balancer(nodes).run(demands, current or {})


class _Balancer:
    def __init__(self, nodes: Sequence[NodeSpec]) -> None:
        self.nodes = [NodePool(spec) for spec in sorted(nodes, key=lambda n: n.id)]
        self.usable = [n for n in self.nodes if n.spec.usable]
        # Nodes whose SM is away within its timeout: what runs there stays, whatever it needs
        # (what they offer may not even be known yet).
        self.away = {n.id for n in self.nodes if n.spec.usable and not n.spec.accepts_new}
        self._kept: dict[tuple[str, str], dict[int, str]] = {}
        self._filtered: dict[tuple, list[tuple[NodePool, list[RuntimePool]]]] = {}
        self._cands: dict[tuple, tuple[list[Candidate], Slot | None]] = {}
        self._slots: dict[tuple, Slot] = {}

    def run(self, demands: Sequence[Demand], current: Mapping[InstanceKey, str]) -> list[GroupPlan]:
        groups = sorted(demands, key=lambda d: (-d.priority, d.item, d.subject))
        running: dict[tuple[str, str], dict[int, str]] = {}
        for key, node in current.items():
            running.setdefault((key.item_id, key.subject_id), {})[key.instance] = node
        held: list[dict[int, Hold]] = []
        for order, d in enumerate(groups):
            held.append(self._hold(order, d, running.get((d.item, d.subject))))
        plans = [
            GroupPlan(d.item, d.subject, self._place(d, held[i])) for i, d in enumerate(groups)
        ]
        plans.sort(key=lambda p: (p.item, p.subject))
        return plans

    # --- candidates ---------------------------------------------------------------------------

    def candidates(self, d: Demand) -> tuple[list[Candidate], Slot | None]:
        """The group's candidate nodes, or the refusal that applies when there are none."""
        config = d.config
        names = resource_names(config)
        types = config.runtime_types if config else DEFAULT_RUNTIMES
        static = (d.labels, types, d.platform, names)
        q, r = (config.quotas, config.requested_resources) if config else (None, None)
        asks = None if config is None else (config.skip_resource_limits, q, r)
        key = (static, asks)
        found = self._cands.get(key)
        if found is None:
            nodes = self._filtered.get(static)
            if nodes is None:
                nodes = self._filtered[static] = self._filter(d.labels, types, d.platform, names)
            cands = [
                Candidate(
                    n,
                    rts,
                    requested_cpu(config, n.spec.cpu_ratio),
                    requested_ram(config, n.spec.ram_ratio),
                    names,
                )
                for n, rts in nodes
            ]
            refusal = None if cands else self._static_refusal(d, types, names)
            found = self._cands[key] = (cands, refusal)
        return found

    def _filter(self, labels, types, platform, names) -> list[tuple[NodePool, list[RuntimePool]]]:
        out = []
        for n in self.usable:
            if not labels <= n.spec.labels or any(name not in n.slots for name in names):
                continue
            rts = [
                rt
                for rt in n.runtimes
                if rt.type in types and (platform is None or rt.platform.runs(platform))
            ]
            if rts:
                out.append((n, rts))
        return out

    # --- placing ------------------------------------------------------------------------------

    def _hold(self, order: int, d: Demand, where: dict[int, str] | None) -> dict[int, Hold]:
        """Book the places of the group's running instances whose node still takes them."""
        if not where:
            return {}
        kept = {i: n for i, n in where.items() if n in self.away and i < d.count}
        if kept:
            self._kept[(d.item, d.subject)] = kept
        by_node = {c.node.id: c for c in self.candidates(d)[0]}
        out = {}
        for index in sorted(where):
            if index in kept:
                continue
            cand = by_node.get(where[index])
            rt = cand.fit() if cand is not None and index < d.count else None
            if rt is not None:
                cand.book(rt)
                out[index] = hold = Hold(cand, rt, d.priority, (order, index))
                cand.node.holds.append(hold)
        return out

    def _place(self, d: Demand, held: dict[int, Hold]) -> tuple[Slot, ...]:
        cands, refusal = self.candidates(d)
        kept = self._kept.get((d.item, d.subject), {})
        heap: list[tuple] | None = None
        out = []
        for index in range(d.count):
            if index in kept:
                out.append(self._slot(kept[index], None))
                continue
            hold = held.get(index)
            if hold is not None and hold.rt is not None:
                hold.kept = True
                out.append(self._slot(hold.cand.node.id, hold.rt.id))
                continue
            if refusal is not None:
                out.append(refusal)
                continue
            if heap is None:
                heap = [
                    (-c.node.spec.priority, -c.node.cpu.free, -c.node.ram.free, c.node.id, i)
                    for i, c in enumerate(cands)
                    if c.node.spec.accepts_new
                ]
                heapq.heapify(heap)
            slot = self._take(heap, cands)
            if slot is None:
                slot, heap = self._push_out(d, cands), None
            if slot is None:
                slot = refusal = self._refusal(d, cands)
            out.append(slot)
        return tuple(out)

    def _take(self, heap: list[tuple], cands: list[Candidate]) -> Slot | None:
        while heap:
            top = heap[0]
            cand = cands[top[4]]
            rt = cand.fit()
            if rt is None:
                heapq.heappop(heap)  # resources only shrink while one group is placed
                continue
            cand.book(rt)
            node = cand.node
            heapq.heapreplace(heap, (top[0], -node.cpu.free, -node.ram.free, top[3], top[4]))
            return self._slot(node.id, rt.id)
        return None

    def _push_out(self, d: Demand, cands: list[Candidate]) -> Slot | None:
        """Place one instance by releasing places kept for instances of lower priority.

        The node is chosen as usual among those where releasing every such place makes room.
        Places are released lowest priority first until the instance fits; a released one
        that still fits afterwards is taken again, so nothing moves without need.
        """
        best = None
        for cand in cands:
            if not cand.node.spec.accepts_new:
                continue
            victims = [h for h in cand.node.holds if h.yields_to(d.priority)]
            if victims and fits_without(cand, victims):
                node = cand.node
                key = (-node.spec.priority, -node.cpu.free, -node.ram.free, node.id)
                if best is None or key < best[0]:
                    best = (key, cand, victims)
        if best is None:
            return None
        _, cand, victims = best
        victims.sort(key=lambda h: (h.priority, -h.order[0], -h.order[1]), reverse=True)
        released = []
        while (rt := cand.fit()) is None:
            released.append(victims.pop().release())
        cand.book(rt)
        for hold in reversed(released):
            hold.retake()
        return self._slot(cand.node.id, rt.id)

    def _slot(self, node: str | None, runtime: str | None, code: int = 0, reason: str = "") -> Slot:
        key = (node, runtime, code, reason)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = Slot(node, runtime, code, reason)
        return slot

    # --- refusals -----------------------------------------------------------------------------

    def _static_refusal(self, d: Demand, types: tuple[str, ...], names: tuple[str, ...]) -> Slot:
        """Why no node can ever take the group: the first of AosCore's filters that leaves none."""
        if not self.nodes:
            return self._fail(AosCode.NOT_FOUND, "no node is known")
        if not self.usable:
            states = ", ".join(f"{n.id}: {n.spec.condition}" for n in self.nodes[:8])
            return self._fail(AosCode.NOT_FOUND, f"no connected provisioned node ({states})")
        labelled = [n for n in self.usable if d.labels <= n.spec.labels]
        if not labelled:
            known = frozenset().union(*(n.spec.labels for n in self.usable))
            return self._fail(AosCode.NOT_FOUND, f"no node with labels {_names(d.labels, known)}")
        equipped = [n for n in labelled if all(name in n.slots for name in names)]
        if not equipped:
            known = frozenset().union(*(n.slots for n in labelled))
            return self._fail(AosCode.NOT_FOUND, f"no node with resources {_names(names, known)}")
        if not any(rt.type in types for n in equipped for rt in n.runtimes):
            return self._fail(AosCode.NOT_FOUND, f"no node with a runtime of type {_names(types)}")
        offered = sorted({str(rt.platform) for n in equipped for rt in n.runtimes})
        reason = f"no runtime for platform {d.platform} (nodes offer {', '.join(offered)})"
        return self._fail(AosCode.NOT_FOUND, reason)

    def _refusal(self, d: Demand, cands: list[Candidate]) -> Slot:
        """Why the group's next instance fits on none of its candidates now."""
        if not any(c.node.spec.accepts_new for c in cands):
            away = ", ".join(f"{c.node.id}: SM away" for c in cands[:8])
            return self._fail(AosCode.NOT_FOUND, f"no connected provisioned node ({away})")
        cands = [c for c in cands if c.node.spec.accepts_new]
        free = [c for c in cands if all(pool.free > 0 for pool in c.res)]
        if not free:
            names = resource_names(d.config)
            return self._fail(AosCode.NO_MEMORY, f"no free slot of resources {_names(names)}")
        pairs = [(c, rt) for c in free for rt in c.runtimes]
        cpu_ok = [(c, rt) for c, rt in pairs if rt.cpu.free >= c.cpu]
        if not cpu_ok:
            c, rt = min(pairs, key=lambda p: (-p[1].cpu.free, p[0].node.id))
            reason = f"not enough CPU: needs {c.cpu} DMIPS, most free {rt.cpu.free} DMIPS"
            return self._fail(AosCode.NO_MEMORY, f"{reason} on {_where(c, rt, rt.cpu)}")
        ram_ok = [(c, rt) for c, rt in cpu_ok if rt.ram.free >= c.ram]
        if not ram_ok:
            c, rt = min(cpu_ok, key=lambda p: (-p[1].ram.free, p[0].node.id))
            need, most = describe_bytes(c.ram), describe_bytes(rt.ram.free)
            reason = f"not enough RAM: needs {need}, most free {most}"
            return self._fail(AosCode.NO_MEMORY, f"{reason} on {_where(c, rt, rt.ram)}")
        full = ", ".join(f"{c.node.id}/{rt.id}" for c, rt in ram_ok[:8])
        return self._fail(AosCode.NO_MEMORY, f"every fitting runtime is at max instances ({full})")

    def _fail(self, code: AosCode, reason: str) -> Slot:
        return self._slot(None, None, int(code), reason)


def _names(wanted, known=frozenset()) -> str:
    """`[a, b]`: the wanted names no node has, else all of them."""
    missing = [name for name in wanted if name not in known] or list(wanted)
    return "[" + ", ".join(sorted(missing)) + "]"


def _where(cand: Candidate, rt: RuntimePool, pool: Pool) -> str:
    shared = pool is cand.node.cpu or pool is cand.node.ram
    return cand.node.id if shared else f"{cand.node.id} (runtime {rt.id})"
