"""Where each instance runs: a pure function of the wanted instances and the nodes.

Rules, in order: a node must be provisioned (not paused), carry every label the instance asks
for, and offer a runtime; an instance keeps its current node while that node still qualifies
(no needless moves); otherwise it goes to the qualifying node with the highest priority, then
the fewest instances (counting those that stay, then those placed so far), then the smallest
name. Instances of higher priority are placed first. An instance no node can take is reported
with the reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ...nodes import InstanceKey


@dataclass(frozen=True)
class NodeCandidate:
    """A node as placement sees it."""

    node: str
    priority: int = 0
    labels: frozenset[str] = frozenset()
    paused: bool = False
    has_runtime: bool = True


@dataclass(frozen=True)
class WantedInstance:
    """An instance the desired status asks for."""

    key: InstanceKey
    priority: int = 0
    labels: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Placement:
    """The node chosen for an instance, or why there is none."""

    key: InstanceKey
    node: str | None
    reason: str = ""


def _refusal(wanted: WantedInstance, nodes: Sequence[NodeCandidate]) -> str:
    if not nodes:
        return "no node is known"
    if all(n.paused for n in nodes):
        return "every node is paused"
    missing = sorted(wanted.labels - frozenset().union(*(n.labels for n in nodes)))
    if missing:
        return f"no node has labels {missing}"
    return "no provisioned node with a runtime has all the labels " + repr(sorted(wanted.labels))


def place(
    wanted: Sequence[WantedInstance],
    nodes: Sequence[NodeCandidate],
    current: Mapping[InstanceKey, str] | None = None,
) -> list[Placement]:
    """Choose a node for every wanted instance; the result is sorted by instance key."""
    current = current or {}
    order = sorted(wanted, key=lambda w: (-w.priority, w.key))
    fits = {
        w.key: [n for n in nodes if not n.paused and n.has_runtime and w.labels <= n.labels]
        for w in order
    }
    keep = {w.key: n for w in order for n in fits[w.key] if n.node == current.get(w.key)}
    # Instances that stay count toward their node's load before any other is placed, so new
    # instances balance against what will really run, whatever the order of their keys.
    load: Counter[str] = Counter(n.node for n in keep.values())
    out: list[Placement] = []
    for w in order:
        fit = fits[w.key]
        if not fit:
            out.append(Placement(w.key, None, _refusal(w, nodes)))
            continue
        chosen = keep.get(w.key)
        if chosen is None:
            chosen = min(fit, key=lambda n: (-n.priority, load[n.node], n.node))
            load[chosen.node] += 1
        out.append(Placement(w.key, chosen.node))
    return sorted(out, key=lambda p: p.key)
