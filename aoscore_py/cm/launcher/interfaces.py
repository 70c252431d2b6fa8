"""What the launcher offers and needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ...nodes import InstanceKey
from ...protocol import ErrorInfo, InstanceState


@dataclass(frozen=True)
class InstanceRecord:
    """Where an instance runs and how it was last seen."""

    key: InstanceKey
    item_type: str
    version: str
    node: str
    priority: int
    state: InstanceState
    error: ErrorInfo | None = None


class LauncherStorage(Protocol):
    """The launcher's records: the placement and each node's answer."""

    def replace_instances(self, records: list[InstanceRecord], placed: str | None = None) -> None:
        """Replace the placement, and the desired status (JSON) it was made from."""
        ...

    def placed(self) -> str | None:
        """The desired status (JSON) the stored placement was made from, if any."""
        ...

    def update_instances(self, records: list[InstanceRecord]) -> None: ...
    def instances(self) -> list[InstanceRecord]: ...
