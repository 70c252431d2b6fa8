"""What the CM asks of a node's service manager, and the types both sides exchange.

An instance is named by (item id, subject id, index), with index in 0..numInstances-1: one
function, `expand_instances`, turns the desired status's instance groups into those names, so
the launcher, the comparison and the laboratory's checks cannot disagree on them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..protocol import DesiredInstance, ErrorInfo, InstanceState, NodeInfo


@dataclass(frozen=True, order=True)
class InstanceKey:
    """An instance's identity: (item id, subject id, index)."""

    item_id: str
    subject_id: str
    instance: int

    def __str__(self) -> str:
        return f"{self.item_id}/{self.subject_id}/{self.instance}"


def expand_instances(
    groups: Sequence[DesiredInstance],
) -> Iterator[tuple[InstanceKey, DesiredInstance]]:
    """Every instance the desired groups ask for, with the group it comes from."""
    for group in groups:
        item_id, subject_id = group.item.key or "", group.subject.key or ""
        for index in range(group.num_instances):
            yield InstanceKey(item_id, subject_id, index), group


@dataclass(frozen=True)
class ImageLayout:
    """What a runtime needs to build an item's image from stored blobs."""

    index_digest: str
    manifest_digest: str
    manifest: dict
    config_digest: str
    layer_digests: tuple[str, ...]


@dataclass(frozen=True)
class InstanceSpec:
    """An instance the CM wants on a node."""

    key: InstanceKey
    item_type: str
    version: str
    image: ImageLayout
    priority: int = 0


@dataclass(frozen=True)
class InstanceStatus:
    """How an instance runs on its node."""

    key: InstanceKey
    version: str
    node: str
    state: InstanceState
    error: ErrorInfo | None = None
    runtime: str = "docker"


class ServiceManager(Protocol):
    """One node's service manager, as the CM sees it."""

    node_id: str

    async def node_info(self) -> NodeInfo: ...

    async def run_instances(self, specs: Sequence[InstanceSpec]) -> list[InstanceStatus]:
        """Make the node run exactly `specs`: start what is missing, remove what is not wanted."""
        ...

    async def instance_statuses(self) -> list[InstanceStatus]: ...
