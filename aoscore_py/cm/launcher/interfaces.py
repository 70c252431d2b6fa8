"""What the launcher offers and needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ...protocol import ErrorInfo, InstanceState


@dataclass(frozen=True, order=True)
class InstanceKey:
    """An instance's identity: (item id, subject id, index)."""

    item_id: str
    subject_id: str
    instance: int

    def __str__(self) -> str:
        return f"{self.item_id}/{self.subject_id}/{self.instance}"


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

    def replace_instances(self, records: list[InstanceRecord]) -> None: ...
    def update_instances(self, records: list[InstanceRecord]) -> None: ...
    def instances(self) -> list[InstanceRecord]: ...
