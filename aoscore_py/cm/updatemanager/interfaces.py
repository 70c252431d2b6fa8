"""What the update manager offers and needs.

The desired status handler sees its collaborators only through these small protocols, as
AosCore's update manager sees its own through `itf/`: the image manager, the launcher, the unit
status handler and the store of the desired status, node states and unit config. Its phase and
journal come as a `DurableMachine`. Nothing here imports an engine, a socket or a database, so
the handler's central rule is tested in milliseconds against stubs (tests/unit/cm/updatemanager).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ...protocol import (
    DesiredItem,
    DesiredStatus,
    ErrorInfo,
    NodeInfo,
    UnitConfig,
    UnitConfigState,
    UnitStatus,
)
from ..communication.interfaces import OutboxEntry
from ..imagemanager.interfaces import ItemRecord
from ..launcher.interfaces import InstanceRecord


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
    def unit_config(self) -> UnitConfigRecord | None:
        """The unit config in force (installed), if any."""
        ...

    def unit_configs(self) -> list[UnitConfigRecord]:
        """The installed unit config, then the last refused one, as the status reports them."""
        ...


class SequenceStorage(Protocol):
    """Blocks of message sequence numbers that only grow, across restarts."""

    def reserve_seq(self, block: int) -> int: ...


class ItemSource(Protocol):
    """The item records, as the unit status reports them."""

    def records(self) -> list[ItemRecord]: ...


class ImageProvider(ItemSource, Protocol):
    """The image manager, as the update cycle drives it."""

    async def download(self, ds: DesiredStatus, skip: Collection[str] = ()) -> list[ItemRecord]:
        """Make every item's blobs present and verified; each item's record (pending or
        failed, with its errorInfo). One item's failure does not stop the others. An item
        named in `skip` whose record says it failed, for this very version and index digest,
        is not fetched again: its record is returned as it is."""
        ...

    def finalize(self, desired: Sequence[DesiredItem], running: set[tuple[str, str]]) -> None:
        """Mark desired items installed and retire versions no instance runs."""
        ...


class InstanceSource(Protocol):
    """The instance records: as last stored, or refreshed from the nodes."""

    def records(self) -> list[InstanceRecord]: ...

    async def refresh(self) -> list[InstanceRecord]:
        """Ask every node how its instances run, record and return it.

        Raises:
            AosError: a node cannot be asked.
        """
        ...


class InstanceLauncher(InstanceSource, Protocol):
    """The launcher, as the update cycle drives it."""

    async def launch(
        self, desired: DesiredStatus, items: Sequence[ItemRecord], node_states: Mapping[str, str]
    ) -> list[InstanceRecord]:
        """Place every desired instance, tell each node its list, record the answers."""
        ...

    async def wait_active(self, timeout_s: float) -> bool:
        """Wait until no instance is activating; False when `timeout_s` passes first."""
        ...

    def give_up_activating(self, timeout_s: float) -> list[tuple[str, str]]:
        """Record the instances still activating as failed; their (item id, version) pairs."""
        ...


class NodeDirectory(Protocol):
    """The unit's nodes, as the update cycle needs them for a unit config."""

    def knows(self, node_id: str) -> bool:
        """Whether `node_id` is a node of this unit (provisioned, or its SM connected)."""
        ...

    async def apply_unit_config(self, config: UnitConfig) -> ErrorInfo | None:
        """Have the nodes check, then set, their entries; why it was refused, else None."""
        ...

    def set_unit_nodes(self, node_ids: Iterable[str]) -> None:
        """The nodes the installed unit config names: launching waits for them."""
        ...


class NodeReporter(Protocol):
    """A node as the unit status describes it."""

    async def node_info(self) -> NodeInfo: ...


class QueuedStatuses(Protocol):
    """The link's outbox, as the status handler reads it (to fold it when it is full)."""

    @property
    def depth(self) -> int: ...

    def queued(self, message_type: str) -> list[OutboxEntry]: ...


class StatusSender(Protocol):
    """Queues a unit status for the cloud (the cloud link and its durable outbox)."""

    outbox: QueuedStatuses

    async def send(self, message: UnitStatus, *, replace_types: Sequence[str] = ()) -> str:
        """Queue `message` (committed) and send it when the link allows; its txn."""
        ...

    def room_for(self, message: UnitStatus) -> bool:
        """Whether `message` fits in the outbox without folding."""
        ...


class UnitStatusReporter(Protocol):
    """The unit status handler, as the desired status handler uses it."""

    def use_desired(self, desired: DesiredStatus | None) -> None:
        """The desired status in force now (its subjects are reported)."""
        ...

    async def send_full(self, reason: str) -> None:
        """Send a full unit status now; never raises."""
        ...
