"""What the balancer reads: nodes, runtimes, wanted instance groups, built from protocol values.

`node_specs` turns v7 unitStatus node objects plus the unit config's node entries (labels,
priority, resource ratios) into `NodeSpec`s; `demands` turns a desired status's instance groups
plus the items' configs, image platforms into `Demand`s. What a node does not report is not held
against it: a runtime without archInfo takes the node's, a node without maxDmips or totalRam is
not limited on that side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from ...nodes.itemconfig import ItemConfig
from ...protocol import DesiredStatus, NodeInfo, UnitConfig

MIB = 1 << 20

_ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "armhf": "arm",
    "i386": "386",
    "i686": "386",
}


def _arch(name: str) -> str:
    name = name.lower()
    return _ARCH_ALIASES.get(name, name)


@dataclass(frozen=True, slots=True)
class Platform:
    """An OS, CPU architecture, variant: of an image, or of a runtime that may run it."""

    os: str | None = None
    architecture: str | None = None
    variant: str | None = None

    def runs(self, image: Platform) -> bool:
        """Whether a runtime of this platform runs `image`.

        Architectures compare by their OCI names (x86_64 is amd64), OS names ignoring case;
        a part either side leaves out is not checked.
        """
        arch, mine = image.architecture, self.architecture
        if arch and mine and _arch(arch) != _arch(mine):
            return False
        if image.os and self.os and image.os.lower() != self.os.lower():
            return False
        return not (
            image.variant and self.variant and image.variant.lower() != self.variant.lower()
        )

    def __str__(self) -> str:
        parts = [p for p in (self.os, self.architecture, self.variant) if p]
        return "/".join(parts) or "any"


@dataclass(frozen=True, slots=True)
class RuntimeSpec:
    """A runtime of a node; `allowed_*` None books against the node's pools, 0 max = no limit."""

    id: str
    type: str
    platform: Platform = Platform()
    allowed_dmips: int | None = None
    allowed_ram: int | None = None
    max_instances: int = 0


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A node as placement sees it. Resources are (name, shared count), 0 = unlimited.

    `accepts_new` False: the node keeps the instances it runs but takes no other (a node whose
    SM went away, within its node timeout: its containers most likely still run).
    """

    id: str
    connected: bool = True
    state: str = "provisioned"
    priority: int = 0
    labels: frozenset[str] = frozenset()
    max_dmips: int | None = None
    total_ram: int | None = None
    cpu_ratio: int | None = None
    ram_ratio: int | None = None
    runtimes: tuple[RuntimeSpec, ...] = ()
    resources: tuple[tuple[str, int], ...] = ()
    accepts_new: bool = True

    @property
    def usable(self) -> bool:
        """Connected, provisioned: paused, error, unprovisioned nodes run nothing new."""
        return self.connected and self.state == "provisioned"

    @property
    def condition(self) -> str:
        """The state a refusal names: `disconnected` first, since it explains the most."""
        return self.state if self.connected else "disconnected"


@dataclass(frozen=True, slots=True)
class Demand:
    """A group of `count` instances of one item for one subject, indexes 0..count-1."""

    item: str
    subject: str
    count: int
    priority: int = 0
    labels: frozenset[str] = frozenset()
    config: ItemConfig | None = None
    platform: Platform | None = None


def describe_bytes(n: int) -> str:
    """A RAM size in a refusal: whole MiB as `512 MiB`, others `1.5 MiB`, small ones in bytes."""
    if n < MIB:
        return f"{n} bytes"
    if n % MIB == 0:
        return f"{n // MIB} MiB"
    return f"{n / MIB:.1f} MiB"


def _platform(node: NodeInfo, rt_arch, rt_os) -> Platform:
    arch = rt_arch
    if arch is None:
        arch = next((cpu.arch_info for cpu in node.cpus or () if cpu.arch_info), None)
    os_info = rt_os or node.os_info
    return Platform(
        os=os_info.os if os_info else None,
        architecture=arch.architecture if arch else None,
        variant=arch.variant if arch else None,
    )


def node_specs(nodes: Sequence[NodeInfo], unit_config: UnitConfig | None = None) -> list[NodeSpec]:
    """The nodes as placement sees them: what each reports, with its unit config entry."""
    configs = {c.node.key: c for c in unit_config.nodes} if unit_config else {}
    out = []
    for info in nodes:
        node_id = info.identity.key
        cfg = configs.get(node_id)
        ratios = cfg.resource_ratios if cfg else None
        runtimes = tuple(
            RuntimeSpec(
                id=rt.identity.key,
                type=rt.runtime_type,
                platform=_platform(info, rt.arch_info, rt.os_info),
                allowed_dmips=rt.allowed_dmips,
                allowed_ram=rt.allowed_ram,
                max_instances=rt.max_instances or 0,
            )
            for rt in info.runtimes or ()
        )
        out.append(
            NodeSpec(
                id=node_id,
                connected=info.is_connected,
                state=str(info.state),
                priority=cfg.priority if cfg else 0,
                labels=frozenset(cfg.labels) if cfg else frozenset(),
                max_dmips=info.max_dmips,
                total_ram=info.total_ram,
                cpu_ratio=ratios.cpu if ratios else None,
                ram_ratio=ratios.ram if ratios else None,
                runtimes=runtimes,
                resources=tuple((r.name, r.shared_count) for r in info.resources or ()),
            )
        )
    return out


def with_desired_states(specs: Sequence[NodeSpec], states: Mapping[str, str]) -> list[NodeSpec]:
    """The desired node states applied: a provisioned node the cloud pauses counts as paused, a
    paused one it resumes as provisioned; a node in error (or unprovisioned) stays as it is."""
    out = []
    for spec in specs:
        state = states.get(spec.id)
        if state is not None and spec.state in ("provisioned", "paused"):
            spec = replace(spec, state="paused" if state == "paused" else "provisioned")
        out.append(spec)
    return out


def demands(
    desired: DesiredStatus,
    configs: Mapping[str, ItemConfig] | None = None,
    platforms: Mapping[str, Platform] | None = None,
) -> list[Demand]:
    """The desired status's instance groups, each with its item's config, image platform."""
    configs, platforms = configs or {}, platforms or {}
    out = []
    for group in desired.instances:
        item = group.item.key
        out.append(
            Demand(
                item=item,
                subject=group.subject.key,
                count=group.num_instances,
                priority=group.priority,
                labels=frozenset(group.labels),
                config=configs.get(item),
                platform=platforms.get(item),
            )
        )
    return out
