"""Small working fakes for the launcher's tests: nodes, storage and image layouts in memory.

No Docker and no SQLite: a node's service manager runs whatever it is told at once and remembers
every call, so a test reads where each instance went from what each node was told.
"""

from __future__ import annotations

from collections.abc import Sequence

from aoscore_py.cm.launcher.interfaces import InstanceRecord
from aoscore_py.errors import AosCode, AosError
from aoscore_py.nodes import ImageLayout, InstanceKey, InstanceSpec, InstanceStatus
from aoscore_py.protocol import Identity, InstanceState, NodeInfo, NodeState, RuntimeInfo


class MemoryLauncherStorage:
    """`LauncherStorage` in memory, read back in key order as `storage.Storage` does."""

    def __init__(self, records: Sequence[InstanceRecord] = ()) -> None:
        self._records = {r.key: r for r in records}
        self._placed: str | None = None

    def replace_instances(self, records: list[InstanceRecord], placed: str | None = None) -> None:
        self._records = {r.key: r for r in records}
        if placed is not None:
            self._placed = placed

    def placed(self) -> str | None:
        return self._placed

    def update_instances(self, records: list[InstanceRecord]) -> None:
        for r in records:
            self._records[r.key] = r

    def instances(self) -> list[InstanceRecord]:
        return [self._records[k] for k in sorted(self._records)]


class RecordingServiceManager:
    """One node's `ServiceManager`: runs exactly what it is told, answering `state` for each.

    Every `run_instances` call is kept in `calls`, with what the storage held at that moment in
    `stored_when_told`, so a test can check that the placement was stored before any node was
    told. `connected` False is a node whose SM is away: it reports it (`error` once
    `timed_out`), and every call raises the link's transient timeout.
    """

    def __init__(
        self,
        node_id: str,
        storage: MemoryLauncherStorage | None = None,
        state: InstanceState = InstanceState.ACTIVE,
    ) -> None:
        self.node_id = node_id
        self.state = state
        self.calls: list[list[InstanceSpec]] = []
        self.stored_when_told: list[list[InstanceRecord]] = []
        self.running: dict[InstanceKey, InstanceSpec] = {}
        self.connected = True
        self.timed_out = False
        self.runtimes_known = True
        self.total_ram: int | None = None
        self._storage = storage

    @property
    def told(self) -> list[InstanceSpec]:
        """What the last call asked this node to run (nothing if it was never told)."""
        return self.calls[-1] if self.calls else []

    async def node_info(self) -> NodeInfo:
        return NodeInfo(
            Identity(codename=self.node_id),
            NodeState.ERROR if self.timed_out else NodeState.PROVISIONED,
            self.connected,
            total_ram=self.total_ram,
            runtimes=(RuntimeInfo(identity=Identity(codename="docker"), runtime_type="docker"),)
            if self.runtimes_known
            else None,
        )

    def _check(self) -> None:
        if not self.connected:
            raise AosError(f"node {self.node_id} is not connected", code=AosCode.TIMEOUT)

    async def run_instances(self, specs: Sequence[InstanceSpec]) -> list[InstanceStatus]:
        self._check()
        self.calls.append(list(specs))
        if self._storage is not None:
            self.stored_when_told.append(self._storage.instances())
        self.running = {s.key: s for s in specs}
        return [InstanceStatus(s.key, s.version, self.node_id, self.state) for s in specs]

    async def instance_statuses(self) -> list[InstanceStatus]:
        self._check()
        return [
            InstanceStatus(s.key, s.version, self.node_id, self.state)
            for s in self.running.values()
        ]


def layout(item_id: str, version: str) -> ImageLayout:
    """A layout whose digests name the item version, so a test can tell layouts apart."""
    tag = f"{item_id}-{version}"
    return ImageLayout(
        index_digest=f"index:{tag}",
        manifest_digest=f"manifest:{tag}",
        manifest={},
        config_digest=f"config:{tag}",
        layer_digests=(f"layer:{tag}",),
    )


class Layouts:
    """A layout function: `layout` for every item version except those in `broken`."""

    def __init__(self, *broken: str) -> None:
        self.broken = set(broken)

    def __call__(self, item_id: str, version: str) -> ImageLayout:
        if item_id in self.broken:
            raise AosError(f"image of {item_id} {version} is incomplete", code=AosCode.NOT_FOUND)
        return layout(item_id, version)
