"""What the update manager offers and needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ...protocol import ErrorInfo, UnitConfigState


@dataclass(frozen=True)
class UnitConfigRecord:
    """The unit configuration last installed, or the one that failed."""

    version: str
    state: UnitConfigState
    body: bytes | None = None
    error: ErrorInfo | None = None


class UpdateStorage(Protocol):
    """The update manager's records: the desired status, node states, the unit config."""

    def save_desired_status(self, body: bytes) -> None: ...
    def load_desired_status(self) -> bytes | None: ...
    def set_node_states(self, states: dict[str, str]) -> None: ...
    def node_states(self) -> dict[str, str]: ...
    def save_unit_config(self, record: UnitConfigRecord) -> None: ...
    def unit_config(self) -> UnitConfigRecord | None: ...


class SequenceStorage(Protocol):
    """Blocks of message sequence numbers that only grow, across restarts."""

    def reserve_seq(self, block: int) -> int: ...
