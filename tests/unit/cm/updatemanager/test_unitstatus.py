"""The unit status handler against stubs: a delta holds only what changed since the cloud was
last told, seqs are consecutive, changes are debounced into one delta, and a full outbox turns a
status into one full status that folds the queued ones (`foldedSeqs`)."""

from __future__ import annotations

import asyncio

import pytest

from aoscore_py.cm.communication.interfaces import OutboxEntry
from aoscore_py.cm.imagemanager.interfaces import ItemRecord
from aoscore_py.cm.launcher.interfaces import InstanceRecord
from aoscore_py.cm.updatemanager.unitstatus import (
    SECTIONS,
    UnitStatusHandler,
    instances_status,
    items_status,
)
from aoscore_py.errors import AosCode, StorageError
from aoscore_py.nodes import InstanceKey
from aoscore_py.protocol import (
    Identity,
    InstanceState,
    ItemState,
    NodeInfo,
    NodeState,
    UnitStatus,
)

from .status_stubs import (
    MemorySeq,
    RecordingSender,
    StatusStore,
    StubInstances,
    StubItems,
    StubNode,
)

DIGEST = "sha256:" + "a" * 64


def item(version: str, state: ItemState = ItemState.INSTALLED) -> ItemRecord:
    return ItemRecord("svc", version, "service", DIGEST, state)


def instance(state: InstanceState) -> InstanceRecord:
    return InstanceRecord(InstanceKey("svc", "owner", 0), "service", "1.0", "node-1", 0, state)


class Unit:
    """A handler over stubs the test can change."""

    def __init__(self, debounce_s: float = 10.0) -> None:
        self.items = StubItems([item("1.0")])
        self.instances = StubInstances([instance(InstanceState.ACTIVE)])
        self.node = StubNode(
            NodeInfo(Identity(codename="node-1"), NodeState.PROVISIONED, is_connected=True)
        )
        self.seq = MemorySeq(next_free=500)
        self.sender = RecordingSender()
        self.handler = UnitStatusHandler(
            StatusStore(),
            self.seq,
            self.items,
            self.instances,
            {"node-1": self.node},
            self.sender,
            debounce_s=debounce_s,
        )

    @property
    def statuses(self) -> list[UnitStatus]:
        return self.sender.statuses

    def disconnect_node(self) -> None:
        self.node.info = NodeInfo(
            Identity(codename="node-1"), NodeState.PROVISIONED, is_connected=False
        )


def sections(status: UnitStatus) -> set[str]:
    return {k for k in SECTIONS if getattr(status, k) is not None}


@pytest.fixture
def unit() -> Unit:
    return Unit()


class TestDelta:
    async def test_with_nothing_told_yet_a_delta_is_a_full_status(self, unit: Unit) -> None:
        await unit.handler.send_delta("changed")
        (status,) = unit.statuses
        assert status.is_delta_info is False
        assert sections(status) == set(SECTIONS)

    async def test_a_delta_holds_only_the_changed_section(self, unit: Unit) -> None:
        await unit.handler.send_full("connected")
        unit.items.items = [item("2.0", ItemState.PENDING)]
        await unit.handler.send_delta("item changed")
        full, delta = unit.statuses
        assert delta.is_delta_info is True
        assert sections(delta) == {"items"}
        assert delta.items == items_status([item("2.0", ItemState.PENDING)])
        assert delta.boot_id == full.boot_id == unit.handler.boot_id

    async def test_a_delta_is_relative_to_the_last_delta_too(self, unit: Unit) -> None:
        await unit.handler.send_full("connected")
        unit.items.items = [item("2.0")]
        await unit.handler.send_delta("item changed")
        unit.instances.instances = [instance(InstanceState.FAILED)]
        await unit.handler.send_delta("instance changed")
        unit.disconnect_node()
        unit.items.items = [item("1.0")]  # back to what the full status said
        await unit.handler.send_delta("node and item changed")
        _, first, second, third = unit.statuses
        assert sections(first) == {"items"}
        assert sections(second) == {"instances"}, "items were told already"
        assert second.instances == instances_status([instance(InstanceState.FAILED)])
        assert sections(third) == {"nodes", "items"}
        assert third.items == items_status([item("1.0")])
        assert third.nodes is not None and third.nodes[0].is_connected is False

    async def test_nothing_changed_sends_nothing(self, unit: Unit) -> None:
        await unit.handler.send_full("connected")
        await unit.handler.send_delta("a change that changed nothing")
        assert len(unit.statuses) == 1

    async def test_seqs_are_consecutive_and_a_check_that_sends_nothing_takes_none(
        self, unit: Unit
    ) -> None:
        await unit.handler.send_full("connected")
        await unit.handler.send_delta("nothing")
        unit.items.items = [item("2.0")]
        await unit.handler.send_delta("item changed")
        await unit.handler.send_delta("nothing")
        await unit.handler.send_full("cycle done")
        unit.disconnect_node()
        await unit.handler.send_delta("node changed")
        assert [s.seq for s in unit.statuses] == [500, 501, 502, 503]

    async def test_a_full_status_resets_what_the_cloud_was_told(self, unit: Unit) -> None:
        await unit.handler.send_full("connected")
        unit.items.items = [item("2.0")]
        await unit.handler.send_full("cycle done")
        await unit.handler.send_delta("nothing new")
        assert len(unit.statuses) == 2


class TestCannotQueue:
    """The outbox cannot store a status (a full disk): `send_full` and `send_delta` promise
    never to raise (they run as fire-and-forget tasks), and the cloud is not assumed told."""

    async def test_a_full_status_that_cannot_be_stored_is_not_raised(self, unit: Unit) -> None:
        unit.sender.fail_next = StorageError("disk full", code=AosCode.NO_MEMORY)
        await unit.handler.send_full("connected")
        assert unit.statuses == []
        await unit.handler.send_delta("item changed")
        (status,) = unit.statuses
        assert status.is_delta_info is False, "told nothing yet, so the next one is full"

    async def test_a_delta_that_cannot_be_stored_is_sent_with_the_next_one(
        self, unit: Unit
    ) -> None:
        await unit.handler.send_full("connected")
        unit.items.items = [item("2.0")]
        unit.sender.fail_next = StorageError("disk full", code=AosCode.NO_MEMORY)
        await unit.handler.send_delta("item changed")
        unit.disconnect_node()
        await unit.handler.send_delta("node changed")
        _, delta = unit.statuses
        assert sections(delta) == {"items", "nodes"}


class TestDebounce:
    async def test_several_changes_make_one_delta(self) -> None:
        unit = Unit(debounce_s=0.05)
        await unit.handler.send_full("connected")
        unit.items.items = [item("2.0")]
        unit.handler.changed("item changed")
        unit.instances.instances = [instance(InstanceState.FAILED)]
        unit.handler.changed("instance changed")
        unit.handler.changed("again")
        for _ in range(10):
            await asyncio.sleep(0)
        assert len(unit.statuses) == 1, "nothing before the debounce runs out"
        delta = await unit.sender.status(2)
        await asyncio.sleep(0.15)  # three more debounce periods: no second delta
        assert unit.statuses[1:] == [delta]
        assert delta.is_delta_info is True
        assert sections(delta) == {"items", "instances"}

    async def test_a_change_after_the_delta_went_out_makes_another(self) -> None:
        unit = Unit(debounce_s=0.01)
        await unit.handler.send_full("connected")
        unit.items.items = [item("2.0")]
        unit.handler.changed("item changed")
        first = await unit.sender.status(2)
        unit.disconnect_node()
        unit.handler.changed("node changed")
        second = await unit.sender.status(3)
        assert (sections(first), sections(second)) == ({"items"}, {"nodes"})
        assert second.seq == first.seq + 1

    async def test_stop_drops_a_pending_delta(self) -> None:
        unit = Unit(debounce_s=0.01)
        await unit.handler.send_full("connected")
        unit.items.items = [item("2.0")]
        unit.handler.changed("item changed")
        unit.handler.stop()
        await asyncio.sleep(0.05)
        assert len(unit.statuses) == 1


class TestFolding:
    """No room in the outbox: the status goes out full and replaces every queued status."""

    async def queue_three(self, unit: Unit) -> None:
        await unit.handler.send_full("connected")
        unit.items.items = [item("2.0")]
        await unit.handler.send_delta("item changed")
        unit.instances.instances = [instance(InstanceState.FAILED)]
        await unit.handler.send_delta("instance changed")

    async def test_a_delta_becomes_a_full_status_naming_the_folded_seqs(self, unit: Unit) -> None:
        await self.queue_three(unit)
        unit.sender.room = False
        unit.disconnect_node()
        await unit.handler.send_delta("node changed")
        folded = unit.statuses[-1]
        assert folded.is_delta_info is False
        assert sections(folded) == set(SECTIONS)
        assert folded.seq == 503
        assert folded.folded_seqs == ((500, 502),)
        assert unit.sender.replace_types[-1] == ("unitStatus",)
        assert [e.seq for e in unit.sender.outbox.queued("unitStatus")] == [503]
        # full, so it says everything the folded ones said, and the change
        assert folded.items == items_status([item("2.0")])
        assert folded.instances == instances_status([instance(InstanceState.FAILED)])
        assert folded.nodes is not None and folded.nodes[0].is_connected is False

    async def test_seqs_the_cloud_acked_are_not_folded(self, unit: Unit) -> None:
        await self.queue_three(unit)
        unit.sender.outbox.ack(501)
        unit.sender.room = False
        unit.disconnect_node()
        await unit.handler.send_delta("node changed")
        assert unit.statuses[-1].folded_seqs == ((500, 500), (502, 502))

    async def test_a_full_status_with_no_room_folds_too(self, unit: Unit) -> None:
        await self.queue_three(unit)
        unit.sender.room = False
        await unit.handler.send_full("cycle done")
        folded = unit.statuses[-1]
        assert (folded.is_delta_info, folded.seq, folded.folded_seqs) == (False, 503, ((500, 502),))
        assert unit.sender.replace_types[-1] == ("unitStatus",)

    async def test_with_room_nothing_is_folded(self, unit: Unit) -> None:
        await self.queue_three(unit)
        assert all(s.folded_seqs is None for s in unit.statuses)
        assert unit.sender.replace_types == [(), (), ()]
        assert [e.seq for e in unit.sender.outbox.queued("unitStatus")] == [500, 501, 502]

    async def test_no_status_queued_names_no_folded_seqs(self, unit: Unit) -> None:
        """The outbox is full of other messages: the status still replaces its own type (none
        here), and `foldedSeqs` is left out rather than empty."""
        unit.sender.room = False
        await unit.handler.send_full("connected")
        assert unit.statuses[-1].folded_seqs is None

    async def test_after_a_fold_deltas_are_relative_to_the_folded_full_status(
        self, unit: Unit
    ) -> None:
        await self.queue_three(unit)
        unit.sender.room = False
        unit.disconnect_node()
        await unit.handler.send_delta("node changed")
        unit.sender.room = True
        unit.items.items = [item("3.0")]
        await unit.handler.send_delta("item changed")
        delta = unit.statuses[-1]
        assert delta.is_delta_info is True
        assert sections(delta) == {"items"}
        assert delta.seq == 504


class TestDroppedStatus:
    async def test_a_status_the_outbox_dropped_makes_the_next_one_full(self, unit: Unit) -> None:
        """A delta the cloud never got (nacked too often, or evicted) leaves what it was told
        unknown: the next status must not be a delta against it."""
        await unit.handler.send_full("connected")
        unit.items.items = [item("2.0", ItemState.PENDING)]
        await unit.handler.send_delta("item changed")
        lost = unit.statuses[-1]
        unit.handler.dropped(OutboxEntry(1, "t-lost", "unitStatus", b"", 0.0, lost.seq))
        unit.instances.instances = [instance(InstanceState.FAILED)]
        await unit.handler.send_delta("instance changed")
        again = unit.statuses[-1]
        assert again.is_delta_info is False, "the lost item change goes out again"
        assert again.items == items_status([item("2.0", ItemState.PENDING)])
