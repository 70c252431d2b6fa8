"""What a service manager offers the CM: run a node's instances and report their states.

In this version the SM runs inside the agent behind this interface; a later version puts the
same calls on the wire (CM <-> SM WebSocket).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..cm.imagemanager.interfaces import ImageLayout
from ..cm.launcher.interfaces import InstanceKey
from ..protocol import ErrorInfo, InstanceState, NodeInfo


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
    """One node's service manager."""

    node_id: str

    async def node_info(self) -> NodeInfo: ...

    async def run_instances(self, specs: Sequence[InstanceSpec]) -> list[InstanceStatus]:
        """Make the node run exactly `specs`: start what is missing, remove what is not wanted."""
        ...

    async def instance_statuses(self) -> list[InstanceStatus]: ...
