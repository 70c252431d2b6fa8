"""What booking an instance takes: free DMIPS, free RAM, instance counts, shared resource slots.

Mutable state for one run of the balancer. A runtime with its own `allowedDmips`/`allowedRam`
gets its own pool; otherwise it shares the node's, so booking on it lowers the node's free CPU
(which orders nodes). A pool nobody limits starts at `UNLIMITED`.
"""

from __future__ import annotations

from .shapes import NodeSpec, RuntimeSpec

UNLIMITED = 1 << 62
"""Free amount of a pool nobody limits: large enough never to run out, small enough to count."""


class Pool:
    """An amount left to book: DMIPS, bytes of RAM, or slots of one shared resource."""

    __slots__ = ("free",)

    def __init__(self, free: int | None) -> None:
        self.free = UNLIMITED if free is None else free


class RuntimePool:
    """A runtime's pools (its own, else its node's) with the instances it may still take."""

    __slots__ = ("cpu", "id", "left", "platform", "ram", "type")

    def __init__(self, node: NodePool, spec: RuntimeSpec) -> None:
        self.id, self.type, self.platform = spec.id, spec.type, spec.platform
        self.cpu = node.cpu if spec.allowed_dmips is None else Pool(spec.allowed_dmips)
        self.ram = node.ram if spec.allowed_ram is None else Pool(spec.allowed_ram)
        self.left = UNLIMITED if not spec.max_instances else spec.max_instances


class NodePool:
    """A node's pools, its runtimes (by type name, then id), the places kept on it."""

    __slots__ = ("cpu", "holds", "id", "ram", "runtimes", "slots", "spec")

    def __init__(self, spec: NodeSpec) -> None:
        self.spec, self.id = spec, spec.id
        self.cpu, self.ram = Pool(spec.max_dmips), Pool(spec.total_ram)
        self.slots = {name: Pool(count or None) for name, count in spec.resources}
        ordered = sorted(spec.runtimes, key=lambda r: (r.type, r.id))
        self.runtimes = [RuntimePool(self, r) for r in ordered]
        self.holds: list[Hold] = []


class Candidate:
    """One candidate node for one group: the runtimes it may use, what one instance books."""

    __slots__ = ("cpu", "node", "ram", "res", "runtimes")

    def __init__(
        self,
        node: NodePool,
        runtimes: list[RuntimePool],
        cpu: int,
        ram: int,
        names: tuple[str, ...],
    ) -> None:
        self.node, self.runtimes, self.cpu, self.ram = node, runtimes, cpu, ram
        self.res = tuple(node.slots[name] for name in names)

    def fit(self) -> RuntimePool | None:
        """The first runtime that takes one more instance now, if any."""
        for pool in self.res:
            if pool.free <= 0:
                return None
        cpu, ram = self.cpu, self.ram
        for rt in self.runtimes:
            if rt.left > 0 and rt.cpu.free >= cpu and rt.ram.free >= ram:
                return rt
        return None

    def book(self, rt: RuntimePool, sign: int = 1) -> None:
        """Take one instance's share on `rt` (or give it back with `sign=-1`)."""
        rt.cpu.free -= sign * self.cpu
        rt.ram.free -= sign * self.ram
        rt.left -= sign
        for pool in self.res:
            pool.free -= sign


class Hold:
    """A place an instance already running keeps, until it is confirmed or pushed out."""

    __slots__ = ("cand", "kept", "order", "priority", "rt")

    def __init__(
        self, cand: Candidate, rt: RuntimePool, priority: int, order: tuple[int, int]
    ) -> None:
        self.cand = cand
        self.rt: RuntimePool | None = rt  # None once pushed out
        self.priority = priority
        self.order = order  # (group position, instance index): who is placed later
        self.kept = False  # confirmed by its group: no longer pushed out

    def yields_to(self, priority: int) -> bool:
        """Whether an instance of `priority` may take this place: kept for a lower one."""
        return not self.kept and self.rt is not None and self.priority < priority

    def release(self) -> Hold:
        """Give the place up: its instance is placed again when its group's turn comes."""
        assert self.rt is not None
        self.cand.book(self.rt, -1)
        self.rt = None
        return self

    def retake(self) -> None:
        """Take a place on the same node again, if one still fits."""
        self.rt = self.cand.fit()
        if self.rt is not None:
            self.cand.book(self.rt)


def fits_without(cand: Candidate, holds: list[Hold]) -> bool:
    """Whether one more instance of `cand` would fit once every place in `holds` is released."""
    taken = [(hold.cand, hold.rt) for hold in holds if hold.rt is not None]
    for owner, rt in taken:
        owner.book(rt, -1)
    fits = cand.fit() is not None
    for owner, rt in taken:
        owner.book(rt)
    return fits
