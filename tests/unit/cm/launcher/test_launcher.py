"""Launcher: what placement is told about each node and instance, what each node is told to run,
and what is recorded. In-memory nodes and storage (stubs.py), no Docker.

`balancer.py` has its own tests; these check the launcher hands it the right facts: a node's
paused flag from the node states, its labels and priority from the unit config, whether its SM
is away or in error, an instance's priority and labels from the desired status, its item's
config, and the current placement from storage; and that a node already running what it should
is not told again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from aoscore_py.cm.imagemanager.interfaces import ItemRecord
from aoscore_py.cm.launcher.interfaces import InstanceRecord
from aoscore_py.cm.launcher.launcher import Launcher
from aoscore_py.cm.launcher.shapes import NodeSpec, RuntimeSpec
from aoscore_py.errors import AosCode, AosError
from aoscore_py.nodes import InstanceKey
from aoscore_py.nodes.itemconfig import ItemConfig, parse_item_config
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


@dataclass(frozen=True)
class Facts:
    config: ItemConfig | None = None
    os: str | None = None
    architecture: str | None = None
    variant: str | None = None


def requesting_ram(ram: int) -> Callable[[str, str], Facts]:
    """Item facts whose config requests `ram` bytes for every item."""
    cfg = parse_item_config(f'{{"requestedResources": {{"ram": {ram}}}}}'.encode())
    return lambda item_id, version: Facts(cfg)


def running(item: str, index: int, node: str) -> InstanceRecord:
    """The record of an instance running on `node`, as a previous launch left it."""
    return InstanceRecord(key(item, index), "service", "1.0.0", node, 0, InstanceState.ACTIVE)


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


DOCKER = (RuntimeSpec("docker", "docker"),)


class TestNodeSpecs:
    async def test_labels_and_priority_come_from_the_unit_config_and_paused_from_the_states(
        self,
    ) -> None:
        unit = Unit("n1", "n2", "n3")
        ds = desired(
            unit_config=config(node_config("n1", "gpu", "cam", priority=3), node_config("n2"))
        )
        states = {"n1": "paused", "n2": "provisioned"}
        assert await unit.launcher.node_specs(ds, states) == [
            NodeSpec("n1", True, "paused", 3, frozenset({"gpu", "cam"}), runtimes=DOCKER),
            NodeSpec("n2", runtimes=DOCKER),
            NodeSpec("n3", runtimes=DOCKER),
        ]

    async def test_a_node_whose_sm_is_away_keeps_its_instances_but_takes_no_new_one(
        self,
    ) -> None:
        unit = Unit("n1", "n2")
        unit.nodes["n2"].connected = False
        n1, n2 = await unit.launcher.node_specs(desired(), {})
        assert (n1.connected, n1.accepts_new) == (True, True)
        assert (n2.connected, n2.accepts_new) == (True, False)

    async def test_a_node_in_error_is_not_usable(self) -> None:
        unit = Unit("n1")
        unit.nodes["n1"].connected = False
        unit.nodes["n1"].timed_out = True
        (spec,) = await unit.launcher.node_specs(desired(), {"n1": "paused"})
        assert (spec.connected, spec.state, spec.usable) == (False, "error", False)


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
        assert record.error == ErrorInfo(
            int(AosCode.NOT_FOUND), 0, "no connected provisioned node (n1: paused, n2: paused)"
        )

    async def test_labels_no_configured_node_has_are_named(self) -> None:
        unit = Unit("n1", "n2")
        ds = desired(group("gpu", labels=("gpu",)), unit_config=config(node_config("n1", "cam")))
        (record,) = await unit.launch(ds)
        assert record.state == InstanceState.FAILED
        assert record.error is not None and record.error.message == "no node with labels [gpu]"


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
        # "a" sorts first, but "z" has the higher priority and so gets the roomier node.
        unit = Unit("n1", "n2")
        unit.nodes["n1"].total_ram, unit.nodes["n2"].total_ram = 1000, 800
        unit.launcher._facts_of = requesting_ram(600)
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


class TestNodesComeAndGo:
    async def test_an_instance_on_a_node_whose_sm_is_away_stays_there_and_launch_goes_on(
        self,
    ) -> None:
        unit = Unit("n1", "n2", records=[running("svc", 1, "n2")])
        await unit.launch(desired(group("svc", 2)))
        unit.nodes["n2"].connected = False
        records = await unit.launch(desired(group("svc", 2), group("new")))
        assert {(str(r.key), r.node, r.state) for r in records} == {
            ("svc/s/0", "n1", InstanceState.ACTIVE),
            ("svc/s/1", "n2", InstanceState.ACTIVE),
            ("new/s/0", "n1", InstanceState.ACTIVE),
        }

    async def test_instances_of_a_node_in_error_move_where_they_fit(self) -> None:
        unit = Unit("n1", "n2", records=[running("svc", 1, "n2")])
        ds = desired(group("svc", 2))
        await unit.launch(ds)
        assert unit.where() == {"svc/s/0": "n1", "svc/s/1": "n2"}
        unit.nodes["n2"].connected = False
        unit.nodes["n2"].timed_out = True
        records = await unit.launcher.reconcile(lambda: downloaded(ds), dict)
        assert records is not None
        assert {(str(r.key), r.node) for r in records} == {("svc/s/0", "n1"), ("svc/s/1", "n1")}

    async def test_reconcile_before_any_launch_does_nothing(self) -> None:
        unit = Unit("n1")
        assert await unit.launcher.reconcile(list, dict) is None
        assert unit.nodes["n1"].calls == []

    async def test_a_node_already_running_its_instances_is_not_told_again(self) -> None:
        unit = Unit("n1")
        node = unit.nodes["n1"]
        node.needs_update = lambda specs: {s.key for s in specs} != set(node.running)  # type: ignore[attr-defined]
        await unit.launch(desired(group("svc")))
        await unit.launch(desired(group("svc")))
        assert len(node.calls) == 1

    async def test_reconcile_places_the_desired_status_launched_while_it_waited(self) -> None:
        """A node's report asks to place again while a cycle launches a newer desired status:
        the newer one is placed, not the one in force when the report came."""
        unit = Unit("n1")
        old, new = desired(group("svc", 2)), desired(group("svc", 1))
        await unit.launch(old)
        gate = asyncio.Event()
        node = unit.nodes["n1"]
        told = node.run_instances

        async def slow(specs):  # type: ignore[no-untyped-def]
            await gate.wait()
            return await told(specs)

        node.run_instances = slow  # type: ignore[method-assign]
        launching = asyncio.create_task(unit.launch(new))
        await asyncio.sleep(0)
        again = asyncio.create_task(unit.launcher.reconcile(lambda: downloaded(new), dict))
        await asyncio.sleep(0)
        gate.set()
        await launching
        await again
        assert unit.where() == {"svc/s/0": "n1"}


class TestItemFacts:
    async def test_requested_ram_sends_an_instance_to_the_node_with_room(self) -> None:
        unit = Unit("n1", "n2")
        unit.nodes["n1"].total_ram = 1024
        unit.nodes["n2"].total_ram = 4096
        unit.launcher._facts_of = requesting_ram(2048)
        await unit.launch(desired(group("big")))
        assert unit.where() == {"big/s/0": "n2"}

    async def test_an_item_whose_facts_cannot_be_read_fails_its_instances(self) -> None:
        def facts(item_id: str, version: str) -> object:
            raise AosError("item config: $.quotas: bad", code=AosCode.INVALID_ARGUMENT)

        unit = Unit("n1")
        unit.launcher._facts_of = facts
        (record,) = await unit.launch(desired(group("svc")))
        assert record.state == InstanceState.FAILED
        assert record.error == ErrorInfo(
            int(AosCode.INVALID_ARGUMENT), 0, "item config: $.quotas: bad"
        )


class TestRecords:
    async def test_the_placement_is_stored_before_any_node_is_told(self) -> None:
        unit = Unit("n1", "n2", records=[running("svc", 1, "n2")])
        await unit.launch(desired(group("svc", 2)))
        for name in ("n1", "n2"):
            (stored,) = unit.nodes[name].stored_when_told
            assert {(r.key, r.node) for r in stored} == {
                (key("svc", 0), "n1"),
                (key("svc", 1), "n2"),
            }
        first_told = {r.key: r.state for r in unit.nodes["n1"].stored_when_told[0]}
        assert first_told == {
            key("svc", 0): InstanceState.ACTIVATING,
            key("svc", 1): InstanceState.ACTIVE,  # kept where it runs, as it runs
        }

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

    async def test_giving_up_fails_the_late_instances_with_a_timeout(self) -> None:
        unit = Unit("n1")
        unit.nodes["n1"].state = InstanceState.ACTIVATING
        await unit.launch(desired(group("svc", 2)))
        assert unit.launcher.give_up_activating(600) == [("svc", "1.0.0")]
        records = unit.launcher.records()
        assert {r.state for r in records} == {InstanceState.FAILED}
        assert records[0].error == ErrorInfo(
            int(AosCode.TIMEOUT), 0, "did not become active within 600 s"
        )
        assert unit.launcher.give_up_activating(600) == []


class TestAfterARestart:
    async def test_the_launched_desired_status_is_stored_with_the_placement(self) -> None:
        unit = Unit("n1")
        ds = desired(group("svc", 2))
        await unit.launch(ds)
        again = Launcher(unit.storage, unit.nodes, Layouts())
        assert again.launched == ds

    async def test_a_node_not_back_yet_keeps_its_instances_whatever_it_offered(self) -> None:
        """Right after a CM restart a node's SM may not have reconnected: nothing is known of
        its runtimes or RAM, yet what runs there stays there until its node timeout."""
        unit = Unit("n1", "n2", records=[running("svc", 1, "n2")])
        ds = desired(group("svc", 2))
        await unit.launch(ds)
        unit.nodes["n2"].connected = False
        unit.nodes["n2"].runtimes_known = False
        records = await unit.launcher.reconcile(lambda: downloaded(ds), dict)
        assert records is not None
        assert {(str(r.key), r.node) for r in records} == {("svc/s/0", "n1"), ("svc/s/1", "n2")}

    async def test_an_instance_given_up_on_stays_failed_while_its_node_says_activating(
        self,
    ) -> None:
        unit = Unit("n1")
        unit.nodes["n1"].state = InstanceState.ACTIVATING
        await unit.launch(desired(group("svc")))
        unit.launcher.give_up_activating(600)
        (record,) = await unit.launcher.refresh()
        assert record.state == InstanceState.FAILED
        unit.nodes["n1"].state = InstanceState.ACTIVE
        (record,) = await unit.launcher.refresh()
        assert (record.state, record.error) == (InstanceState.ACTIVE, None)

    async def test_placement_uses_the_installed_unit_config_not_a_refused_one(self) -> None:
        unit = Unit("n1", "n2")
        installed = config(node_config("n2", "gpu"))
        unit.launcher._unit_config_of = lambda: installed
        refused = config(node_config("n1", "gpu"))
        await unit.launch(desired(group("cam", labels=("gpu",)), unit_config=refused))
        assert unit.where() == {"cam/s/0": "n2"}

    async def test_on_a_new_store_what_runs_is_adopted_before_placing(self) -> None:
        """A store that lost its records: the first placement keeps each instance on the node
        that reports running it, rather than placing from nothing."""
        unit = Unit("n1", "n2", records=[running("svc", 1, "n2")])
        ds = desired(group("svc", 2))
        await unit.launch(ds)
        unit.storage.replace_instances([])
        await unit.launch(ds)
        assert unit.where() == {"svc/s/0": "n1", "svc/s/1": "n2"}
