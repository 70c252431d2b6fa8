"""Launcher: what placement is told about each node and instance, what each node is told to run,
and what is recorded. In-memory nodes and storage (stubs.py), no Docker.

`placement.py` has its own tests; these check the launcher hands it the right facts: a node's
paused flag from the node states, its labels and priority from the unit config, an instance's
priority and labels from the desired status, and the current placement from storage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aoscore_py.cm.imagemanager.interfaces import ItemRecord
from aoscore_py.cm.launcher.interfaces import InstanceRecord
from aoscore_py.cm.launcher.launcher import Launcher
from aoscore_py.cm.launcher.placement import NodeCandidate
from aoscore_py.errors import AosCode
from aoscore_py.nodes import InstanceKey
from aoscore_py.protocol import (
    DesiredInstance,
    DesiredItem,
    DesiredStatus,
    ErrorInfo,
    Identity,
    InstanceState,
    ItemState,
    NodeConfig,
    UnitConfig,
)

from .stubs import Layouts, MemoryLauncherStorage, RecordingServiceManager, layout

DIGEST = "sha256:" + "1" * 64
PAUSED = {"n1": "paused", "n2": "provisioned"}


def key(item: str, index: int = 0, subject: str = "s") -> InstanceKey:
    return InstanceKey(item, subject, index)


def config(*nodes: NodeConfig) -> UnitConfig:
    return UnitConfig("1.0.0", "1", nodes)


def node_config(name: str, *labels: str, priority: int = 0) -> NodeConfig:
    return NodeConfig(Identity(codename=name), labels=labels, priority=priority)


def group(
    item: str, n: int = 1, *, priority: int = 0, labels: tuple[str, ...] = ()
) -> DesiredInstance:
    return DesiredInstance(Identity(id=item), Identity(id="s"), priority, n, labels)


def desired(*groups: DesiredInstance, unit_config: UnitConfig | None = None) -> DesiredStatus:
    items = {g.item.key for g in groups}
    return DesiredStatus(
        items=tuple(
            DesiredItem(Identity(id=i, type="service"), "1.0.0", DIGEST) for i in sorted(items)
        ),
        instances=groups,
        unit_config=unit_config,
    )


def downloaded(ds: DesiredStatus) -> list[ItemRecord]:
    return [
        ItemRecord(i.item.key or "", i.version, "service", i.index_digest, ItemState.PENDING)
        for i in ds.items
    ]


class Unit:
    """A launcher over recording nodes and in-memory storage."""

    def __init__(
        self,
        *names: str,
        records: Sequence[InstanceRecord] = (),
        layouts: Layouts | None = None,
    ) -> None:
        self.storage = MemoryLauncherStorage(records)
        self.nodes = {name: RecordingServiceManager(name, self.storage) for name in names}
        self.launcher = Launcher(self.storage, self.nodes, layouts or Layouts())

    async def launch(
        self,
        ds: DesiredStatus,
        node_states: Mapping[str, str] | None = None,
        items: list[ItemRecord] | None = None,
    ) -> list[InstanceRecord]:
        return await self.launcher.launch(
            ds, downloaded(ds) if items is None else items, node_states or {}
        )

    def where(self) -> dict[str, str]:
        """Instance -> the node told to run it."""
        return {str(s.key): name for name, sm in self.nodes.items() for s in sm.told}


class TestCandidates:
    def test_labels_and_priority_come_from_the_unit_config_and_paused_from_the_states(
        self,
    ) -> None:
        unit = Unit("n1", "n2", "n3")
        ds = desired(
            unit_config=config(node_config("n1", "gpu", "cam", priority=3), node_config("n2"))
        )
        states = {"n1": "paused", "n2": "provisioned"}
        assert unit.launcher.candidates(ds, states) == [
            NodeCandidate("n1", 3, frozenset({"gpu", "cam"}), paused=True),
            NodeCandidate("n2", 0, frozenset(), paused=False),
            NodeCandidate("n3", 0, frozenset(), paused=False),
        ]

    def test_without_a_unit_config_every_node_is_plain(self) -> None:
        unit = Unit("b", "a")
        assert unit.launcher.candidates(desired(), {}) == [NodeCandidate("a"), NodeCandidate("b")]


class TestNodeFacts:
    async def test_a_paused_node_is_passed_over_and_told_to_run_nothing(self) -> None:
        # n1 would win on its priority and its name: only its paused state sends svc to n2.
        unit = Unit("n1", "n2")
        ds = desired(group("svc"), unit_config=config(node_config("n1", priority=5)))
        records = await unit.launch(ds, PAUSED)
        assert unit.where() == {"svc/s/0": "n2"}
        assert unit.nodes["n1"].calls == [[]], "a paused node is told it runs nothing"
        assert [(r.key, r.node, r.state) for r in records] == [
            (key("svc"), "n2", InstanceState.ACTIVE)
        ]

    async def test_only_paused_as_a_state_pauses_a_node(self) -> None:
        unit = Unit("n1", "n2")
        await unit.launch(desired(group("svc")), {"n1": "provisioned", "n2": "paused"})
        assert unit.where() == {"svc/s/0": "n1"}

    async def test_an_instance_goes_to_the_node_whose_config_has_its_labels(self) -> None:
        unit = Unit("n1", "n2")
        ds = desired(
            group("cam", labels=("camera",)),
            unit_config=config(node_config("n1", priority=9), node_config("n2", "camera")),
        )
        await unit.launch(ds)
        assert unit.where() == {"cam/s/0": "n2"}

    async def test_the_node_with_the_highest_configured_priority_wins(self) -> None:
        unit = Unit("n1", "n2", "n3")
        ds = desired(
            group("svc", 2),
            unit_config=config(node_config("n2", priority=7), node_config("n3", priority=2)),
        )
        await unit.launch(ds)
        assert unit.where() == {"svc/s/0": "n2", "svc/s/1": "n2"}

    async def test_every_node_paused_fails_the_instance_and_tells_no_node_to_run_it(
        self,
    ) -> None:
        unit = Unit("n1", "n2")
        records = await unit.launch(desired(group("svc")), {"n1": "paused", "n2": "paused"})
        assert unit.where() == {}
        (record,) = records
        assert (record.node, record.state) == ("", InstanceState.FAILED)
        assert record.error == ErrorInfo(int(AosCode.NOT_FOUND), 0, "every node is paused")

    async def test_labels_no_configured_node_has_are_named(self) -> None:
        unit = Unit("n1", "n2")
        ds = desired(group("gpu", labels=("gpu",)), unit_config=config(node_config("n1", "cam")))
        (record,) = await unit.launch(ds)
        assert record.state == InstanceState.FAILED
        assert record.error is not None and "no node has labels ['gpu']" in record.error.message


class TestInstanceFacts:
    async def test_an_instance_without_its_labels_would_go_elsewhere(self) -> None:
        # n1 sorts first and ties on priority: only the instance's labels send it to n2.
        unit = Unit("n1", "n2")
        ds = desired(
            group("cam", labels=("camera",)), unit_config=config(node_config("n2", "camera"))
        )
        await unit.launch(ds)
        assert unit.where() == {"cam/s/0": "n2"}

    async def test_higher_priority_instances_choose_their_node_first(self) -> None:
        # "a" sorts first, but "z" has the higher priority and so gets the preferred node.
        unit = Unit("n1", "n2")
        await unit.launch(desired(group("a"), group("z", priority=5)))
        assert unit.where() == {"a/s/0": "n2", "z/s/0": "n1"}

    async def test_the_instance_priority_reaches_the_node_and_the_record(self) -> None:
        unit = Unit("n1")
        records = await unit.launch(desired(group("svc", priority=4)))
        (spec,) = unit.nodes["n1"].told
        assert (spec.key, spec.priority, spec.version, spec.image) == (
            key("svc"),
            4,
            "1.0.0",
            layout("svc", "1.0.0"),
        )
        assert [r.priority for r in records] == [4]


class TestRecords:
    async def test_the_placement_is_stored_before_any_node_is_told(self) -> None:
        unit = Unit("n1", "n2")
        await unit.launch(desired(group("svc", 2)))
        for name in ("n1", "n2"):
            (stored,) = unit.nodes[name].stored_when_told
            assert {(r.key, r.node) for r in stored} == {
                (key("svc", 0), "n1"),
                (key("svc", 1), "n2"),
            }
        first_told = unit.nodes["n1"].stored_when_told[0]
        assert {r.state for r in first_told} == {InstanceState.ACTIVATING}

    async def test_each_nodes_answer_is_recorded(self) -> None:
        unit = Unit("n1")
        unit.nodes["n1"].state = InstanceState.FAILED
        records = await unit.launch(desired(group("svc")))
        assert [r.state for r in records] == [InstanceState.FAILED]
        assert unit.storage.instances() == records

    async def test_an_instance_stays_on_the_node_storage_says_it_runs_on(self) -> None:
        here = InstanceRecord(key("svc"), "service", "1.0.0", "n2", 0, InstanceState.ACTIVE)
        unit = Unit("n1", "n2", records=[here])
        await unit.launch(desired(group("svc")))
        assert unit.where() == {"svc/s/0": "n2"}

    async def test_an_item_not_downloaded_fails_its_instances(self) -> None:
        unit = Unit("n1")
        (record,) = await unit.launch(desired(group("svc")), items=[])
        assert record.state == InstanceState.FAILED
        assert record.error == ErrorInfo(int(AosCode.NOT_FOUND), 0, "item is not available")
        assert unit.where() == {}

    async def test_an_item_whose_layout_fails_fails_its_instances_with_that_error(self) -> None:
        unit = Unit("n1", layouts=Layouts("bad"))
        records = await unit.launch(desired(group("bad"), group("good")))
        assert unit.where() == {"good/s/0": "n1"}
        bad = next(r for r in records if r.key == key("bad"))
        assert (bad.node, bad.state) == ("n1", InstanceState.FAILED)
        assert bad.error == ErrorInfo(int(AosCode.NOT_FOUND), 0, "image of bad 1.0.0 is incomplete")

    async def test_refresh_fails_an_instance_its_node_no_longer_runs(self) -> None:
        unit = Unit("n1")
        await unit.launch(desired(group("svc", 2)))
        del unit.nodes["n1"].running[key("svc", 1)]
        records = await unit.launcher.refresh()
        assert [(str(r.key), r.state) for r in records] == [
            ("svc/s/0", InstanceState.ACTIVE),
            ("svc/s/1", InstanceState.FAILED),
        ]
        assert records[1].error is not None
        assert records[1].error.message == "instance is not running on its node"


class TestWaitActive:
    async def test_false_while_an_instance_is_activating_true_once_none_is(self) -> None:
        unit = Unit("n1")
        unit.nodes["n1"].state = InstanceState.ACTIVATING
        await unit.launch(desired(group("svc")))
        assert await unit.launcher.wait_active(0.0, poll_s=0) is False
        unit.nodes["n1"].state = InstanceState.ACTIVE
        assert await unit.launcher.wait_active(0.0, poll_s=0) is True
