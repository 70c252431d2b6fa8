"""Node manager: the registry of the unit's nodes and each SM link's rules, without gRPC.

Messages go in as the generated `servicemanager.v5` messages (made with `nodes/wire.py`, as an
SM makes them); what the CM sends lands in a recording outbox; a fake clock moves node timeouts.
The gRPC adapter has its own tests (tests/integration/test_sm_link_cm.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import orjson
import pytest

from aoscore_py.cm.launcher.nodemanager import NodeLink, NodeManager
from aoscore_py.errors import AosCode, AosError, ProtocolError, Retry, classify
from aoscore_py.nodes import InstanceKey, InstanceSpec, InstanceStatus, wire
from aoscore_py.nodes.proto import sm_pb2
from aoscore_py.protocol import (
    ErrorInfo,
    Identity,
    InstanceState,
    NodeConfig,
    NodeState,
    ResourceInfo,
    RuntimeInfo,
    UnitConfig,
    UnitConfigState,
    UnitConfigStatus,
)

from .stubs import layout

GIB = 1 << 30


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingOutbox:
    """An `Outbox` that keeps what the CM sends, and why it was closed."""

    def __init__(self) -> None:
        self.sent: list[sm_pb2.SMIncomingMessages] = []
        self.closed: str | None = None

    def put(self, message: sm_pb2.SMIncomingMessages) -> None:
        if self.closed is None:
            self.sent.append(message)

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason

    def of(self, case: str) -> list:
        return [getattr(m, case) for m in self.sent if m.WhichOneof("SMIncomingMessage") == case]


def key(item: str, index: int = 0) -> InstanceKey:
    return InstanceKey(item, "s", index)


def spec(item: str, index: int = 0, version: str = "1.0") -> InstanceSpec:
    return InstanceSpec(key(item, index), "service", version, layout(item, version))


def status(
    item: str, index: int = 0, state: InstanceState = InstanceState.ACTIVE, version: str = "1.0"
) -> InstanceStatus:
    return InstanceStatus(key(item, index), version, "n1", state)


def sm_info(node: str = "n1") -> sm_pb2.SMOutgoingMessages:
    docker = RuntimeInfo(
        Identity(codename="docker"), "docker", max_dmips=5000, total_ram=4 * GIB, max_instances=8
    )
    return wire.sm_info(node, [docker], [ResourceInfo("gpu", 1)])


def report(*statuses: InstanceStatus, digests: dict | None = None) -> sm_pb2.SMOutgoingMessages:
    return wire.node_instances_status(statuses, manifest_digests=digests)


def answer(*statuses: InstanceStatus) -> sm_pb2.SMOutgoingMessages:
    return wire.update_instances_status(statuses)


class Unit:
    """A node manager on a fake clock, recording `on_node_changed`."""

    def __init__(self, *expected: str, answer_timeout_s: float = 5.0) -> None:
        self.clock = FakeClock()
        self.changed: list[str] = []
        self.nodes = NodeManager(
            expected,
            node_timeout_s=60.0,
            answer_timeout_s=answer_timeout_s,
            clock=self.clock,
            on_node_changed=self.changed.append,
        )

    def connect(
        self, node: str = "n1", *statuses: InstanceStatus, reports: bool = True
    ) -> tuple[NodeLink, RecordingOutbox]:
        """A new stream of `node`: its SMInfo, then (as an SM does) what it runs."""
        outbox = RecordingOutbox()
        link = self.nodes.register(sm_info(node), outbox, peer=f"ipv4:127.0.0.1:{len(node)}")
        if reports:
            link.receive(report(*statuses))
        return link, outbox


async def until(condition: Callable[[], bool], turns: int = 100) -> None:
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def start_keys(update: sm_pb2.UpdateInstances) -> list[InstanceKey]:
    return [wire.instance_key(i.instance) for i in update.start_instances]


def stop_keys(update: sm_pb2.UpdateInstances) -> list[InstanceKey]:
    return [wire.instance_key(i) for i in update.stop_instances]


class TestRegistry:
    def test_nodes_of_the_unit_config_are_there_before_they_connect(self) -> None:
        unit = Unit("n1", "n2")
        assert list(unit.nodes) == ["n1", "n2"]
        assert len(unit.nodes) == 2
        node = unit.nodes["n2"]
        assert (node.connected, node.ever_connected, node.state) == (
            False,
            False,
            NodeState.PROVISIONED,
        )

    async def test_sm_info_registers_the_node_with_its_runtimes(self) -> None:
        unit = Unit("n1")
        link, outbox = unit.connect("n1")
        info = await unit.nodes["n1"].node_info()
        assert info.is_connected and info.state == NodeState.PROVISIONED
        assert info.identity.codename == "n1"
        assert [r.identity.key for r in info.runtimes or ()] == ["docker"]
        assert (info.max_dmips, info.total_ram) == (5000, 4 * GIB)
        assert info.resources == (ResourceInfo("gpu", 1),)
        assert link.current and link.node is unit.nodes["n1"]
        # The SM learns at once whether the cloud is connected.
        assert [c.cloud_status for c in outbox.of("connection_status")] == [sm_pb2.DISCONNECTED]

    def test_a_node_the_unit_config_does_not_name_joins_when_it_connects(self) -> None:
        unit = Unit("n1")
        unit.connect("extra")
        assert list(unit.nodes) == ["extra", "n1"]
        assert unit.nodes.candidates() == ["extra"]

    @pytest.mark.parametrize(
        "first",
        [
            report(status("a")),
            sm_pb2.SMOutgoingMessages(),
            wire.sm_info("", []),
        ],
        ids=["instances first", "no case", "no node id"],
    )
    def test_a_stream_must_open_with_sm_info(self, first: sm_pb2.SMOutgoingMessages) -> None:
        unit = Unit("n1")
        with pytest.raises(ProtocolError) as caught:
            unit.nodes.register(first, RecordingOutbox())
        assert "SMOutgoingMessages" in caught.value.path or "node_id" in caught.value.path
        assert not unit.nodes["n1"].connected
        assert list(unit.nodes) == ["n1"]

    def test_unit_config_change_drops_only_nodes_that_never_came(self) -> None:
        unit = Unit("n1", "n2", "n3")
        unit.connect("n2")
        unit.nodes.set_unit_nodes(["n1", "n4"])
        assert list(unit.nodes) == ["n1", "n2", "n4"]
        assert unit.nodes.expected == frozenset({"n1", "n4"})

    async def test_desired_states_pause_nodes(self) -> None:
        unit = Unit("n1", "n2")
        unit.nodes.set_desired_states({"n1": "paused", "n2": "provisioned"})
        assert unit.nodes["n1"].state == NodeState.PAUSED
        assert (await unit.nodes["n2"].node_info()).state == NodeState.PROVISIONED
        unit.nodes.set_desired_states({})
        assert unit.nodes["n1"].state == NodeState.PROVISIONED

    def test_cloud_link_changes_reach_every_connected_sm(self) -> None:
        unit = Unit("n1", "n2")
        _, out1 = unit.connect("n1")
        unit.nodes.set_cloud_connected(True)
        unit.nodes.set_cloud_connected(True)  # no change, nothing sent
        _, out2 = unit.connect("n2")
        statuses = [c.cloud_status for c in out1.of("connection_status")]
        assert statuses == [sm_pb2.DISCONNECTED, sm_pb2.CONNECTED]
        assert [c.cloud_status for c in out2.of("connection_status")] == [sm_pb2.CONNECTED]

    def test_close_all_ends_every_stream(self) -> None:
        unit = Unit("n1", "n2")
        _, out1 = unit.connect("n1")
        _, out2 = unit.connect("n2")
        unit.nodes.close_all("the CM is stopping")
        assert out1.closed == out2.closed == "the CM is stopping"
        assert unit.nodes.candidates() == []


class TestConnectionsAndTimeout:
    async def test_a_node_gone_past_the_timeout_is_error_until_it_comes_back(self) -> None:
        unit = Unit("n1")
        link, _ = unit.connect("n1", reports=False)
        unit.clock.advance(5)
        link.close()
        node = unit.nodes["n1"]
        assert not node.connected and node.since == unit.clock.now
        assert unit.nodes.next_deadline() == unit.clock.now + 60

        unit.clock.advance(59)
        assert node.state == NodeState.PROVISIONED
        assert unit.nodes.expire() == []
        unit.clock.advance(1)
        assert node.state == NodeState.ERROR
        info = await node.node_info()
        assert (info.state, info.is_connected) == (NodeState.ERROR, False)
        assert info.error_info is not None and info.error_info.aos_code == AosCode.TIMEOUT
        assert "60 s" in info.error_info.message

        assert unit.nodes.expire() == ["n1"]
        assert unit.changed == ["n1"]
        assert unit.nodes.expire() == []  # once per absence
        assert unit.nodes.next_deadline() is None
        assert unit.nodes.candidates() == []

        unit.connect("n1")
        assert node.state == NodeState.PROVISIONED and node.connected
        assert unit.nodes.candidates() == ["n1"]

    def test_error_wins_over_paused(self) -> None:
        unit = Unit("n1")
        unit.nodes.set_desired_states({"n1": "paused"})
        unit.clock.advance(60)
        assert unit.nodes["n1"].state == NodeState.ERROR

    def test_a_node_of_the_unit_config_that_never_came_goes_to_error(self) -> None:
        unit = Unit("n1", "n2")
        unit.connect("n1")
        assert unit.nodes.next_deadline() == unit.clock.now + 60
        unit.clock.advance(61)
        assert unit.nodes.expire() == ["n2"]
        assert unit.nodes["n2"].state == NodeState.ERROR
        assert unit.nodes["n1"].state == NodeState.PROVISIONED

    def test_a_new_stream_replaces_the_old_one(self) -> None:
        unit = Unit("n1")
        old, old_out = unit.connect("n1", status("a"))
        new, new_out = unit.connect("n1", reports=False)
        assert old_out.closed is not None and "replaced" in old_out.closed
        assert new_out.closed is None
        assert (old.current, new.current) == (False, True)
        # What the old stream still says is ignored; its end does not disconnect the node.
        old.receive(report())
        assert [s.key for s in unit.nodes["n1"]._statuses.values()] == [key("a")]
        old.close()
        assert unit.nodes["n1"].connected

    def test_a_second_sm_info_updates_runtimes_but_cannot_change_the_node(self) -> None:
        unit = Unit("n1")
        link, _ = unit.connect("n1")
        link.receive(wire.sm_info("n1", []))
        assert unit.nodes["n1"].runtimes == wire.NodeRuntimes("n1", (), ())
        with pytest.raises(ProtocolError, match=r"SMInfo\.node_id"):
            link.receive(wire.sm_info("n2", []))


class TestWaitAllConnected:
    async def test_returns_when_every_node_of_the_unit_config_came_once(self) -> None:
        unit = Unit("n1", "n2")
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, unit.connect, "n1")
        loop.call_later(0.02, lambda: unit.connect("n2")[0].close())  # came once is enough
        assert await unit.nodes.wait_all_connected(5.0) == []

    async def test_returns_the_nodes_that_never_came(self) -> None:
        unit = Unit("n1", "n2", "n3")
        unit.connect("n2")
        assert await unit.nodes.wait_all_connected(0.02) == ["n1", "n3"]

    async def test_a_node_counts_once_it_said_what_it_runs(self) -> None:
        unit = Unit("n1")
        link, _ = unit.connect("n1", reports=False)
        assert await unit.nodes.wait_all_connected(0.02) == ["n1"]
        asyncio.get_running_loop().call_later(0.01, link.receive, report(status("a")))
        assert await unit.nodes.wait_all_connected(5.0) == []

    async def test_no_node_named_means_no_wait(self) -> None:
        assert await Unit().nodes.wait_all_connected(60.0) == []


class TestRunInstances:
    async def test_sends_the_wanted_set_and_returns_the_answer(self) -> None:
        unit = Unit("n1")
        link, outbox = unit.connect("n1", status("a"), status("old"), status("b", 1))
        node = unit.nodes["n1"]
        call = asyncio.create_task(node.run_instances([spec("a"), spec("b", 1), spec("c")]))
        await until(lambda: bool(outbox.of("update_instances")))
        (update,) = outbox.of("update_instances")
        # Start: every wanted instance, unchanged ones too, each with its manifest digest.
        assert start_keys(update) == [key("a"), key("b", 1), key("c")]
        assert update.start_instances[2].manifest_digest == "manifest:c-1.0"
        assert update.start_instances[2].runtime_id == "docker"
        # Stop: what the node reports and must not run.
        assert stop_keys(update) == [key("old")]

        answered = [status("a"), status("b", 1), status("c", state=InstanceState.ACTIVATING)]
        link.receive(answer(*answered))
        assert await call == answered
        assert await node.instance_statuses() == answered  # "old" is gone
        assert unit.changed == ["n1"]  # the report, not the answer

    async def test_a_stopped_instance_keeps_its_item_type(self) -> None:
        unit = Unit("n1")
        link, outbox = unit.connect("n1")
        component = wire.node_instances_status(
            [status("comp")], item_types={key("comp"): "component"}
        )
        link.receive(component)
        call = asyncio.create_task(unit.nodes["n1"].run_instances([]))
        await until(lambda: bool(outbox.of("update_instances")))
        (update,) = outbox.of("update_instances")
        assert [i.type for i in update.stop_instances] == [wire.common_pb2.COMPONENT]
        link.receive(answer())
        assert await call == []
        assert await unit.nodes["n1"].instance_statuses() == []

    async def test_a_node_not_connected_is_a_transient_error(self) -> None:
        unit = Unit("n1")
        node = unit.nodes["n1"]
        for call in (node.run_instances([spec("a")]), node.instance_statuses()):
            with pytest.raises(AosError, match="node n1 is not connected") as caught:
                await call
            assert caught.value.code == AosCode.TIMEOUT
            assert classify(caught.value) is Retry.TRANSIENT

    async def test_no_answer_in_time_is_a_transient_timeout(self) -> None:
        unit = Unit("n1", answer_timeout_s=0.01)
        unit.connect("n1")
        with pytest.raises(AosError, match="did not answer UpdateInstances") as caught:
            await unit.nodes["n1"].run_instances([spec("a")])
        assert caught.value.code == AosCode.TIMEOUT
        assert classify(caught.value) is Retry.TRANSIENT

    async def test_a_node_that_goes_away_before_answering(self) -> None:
        unit = Unit("n1")
        link, outbox = unit.connect("n1")
        call = asyncio.create_task(unit.nodes["n1"].run_instances([spec("a")]))
        await until(lambda: bool(outbox.of("update_instances")))
        link.close()
        with pytest.raises(AosError, match=r"node n1 is not connected .*went away") as caught:
            await call
        assert classify(caught.value) is Retry.TRANSIENT

    async def test_a_node_that_reconnects_before_answering(self) -> None:
        unit = Unit("n1")
        _, outbox = unit.connect("n1")
        call = asyncio.create_task(unit.nodes["n1"].run_instances([spec("a")]))
        await until(lambda: bool(outbox.of("update_instances")))
        unit.connect("n1")
        with pytest.raises(AosError, match="reconnected") as caught:
            await call
        assert caught.value.code == AosCode.TIMEOUT

    async def test_calls_for_one_node_run_one_at_a_time(self) -> None:
        unit = Unit("n1")
        link, outbox = unit.connect("n1")
        node = unit.nodes["n1"]
        first = asyncio.create_task(node.run_instances([spec("a")]))
        second = asyncio.create_task(node.run_instances([spec("b")]))
        await until(lambda: bool(outbox.of("update_instances")))
        for _ in range(10):
            await asyncio.sleep(0)
        assert len(outbox.of("update_instances")) == 1
        link.receive(answer(status("a")))
        assert await first == [status("a")]
        await until(lambda: len(outbox.of("update_instances")) == 2)
        assert stop_keys(outbox.of("update_instances")[1]) == [key("a")]
        link.receive(answer(status("b")))
        assert await second == [status("b")]

    async def test_a_late_answer_is_not_taken_for_the_next_one(self) -> None:
        unit = Unit("n1", answer_timeout_s=0.01)
        link, outbox = unit.connect("n1")
        node = unit.nodes["n1"]
        with pytest.raises(AosError):
            await node.run_instances([spec("a", version="1.0")])
        unit.nodes.answer_timeout_s = 5.0
        call = asyncio.create_task(node.run_instances([spec("a", version="2.0")]))
        await until(lambda: len(outbox.of("update_instances")) == 2)
        link.receive(answer(status("a", version="1.0")))  # the first request's
        for _ in range(5):
            await asyncio.sleep(0)
        assert not call.done()
        link.receive(answer(status("a", version="2.0")))
        assert await call == [status("a", version="2.0")]

    async def test_an_answer_the_sm_never_sent_does_not_block_later_calls(self) -> None:
        unit = Unit("n1", answer_timeout_s=0.01)
        link, outbox = unit.connect("n1")
        node = unit.nodes["n1"]
        with pytest.raises(AosError):
            await node.run_instances([spec("a", version="1.0")])  # never answered
        unit.nodes.answer_timeout_s = 5.0
        call = asyncio.create_task(node.run_instances([spec("a", version="2.0")]))
        await until(lambda: len(outbox.of("update_instances")) == 2)
        link.receive(answer(status("a", version="2.0")))
        assert await call == [status("a", version="2.0")]
        # And the count starts again: the next answer is the next call's.
        call = asyncio.create_task(node.run_instances([spec("a", version="3.0")]))
        await until(lambda: len(outbox.of("update_instances")) == 3)
        link.receive(answer(status("a", state=InstanceState.FAILED, version="2.0")))
        assert await call == [status("a", state=InstanceState.FAILED, version="2.0")]

    async def test_an_unreadable_answer_fails_the_call(self) -> None:
        unit = Unit("n1")
        link, outbox = unit.connect("n1")
        call = asyncio.create_task(unit.nodes["n1"].run_instances([spec("a")]))
        await until(lambda: bool(outbox.of("update_instances")))
        bad = answer(status("a"))
        bad.update_instances_status.instances[0].state = "sleeping"
        with pytest.raises(ProtocolError):
            link.receive(bad)
        with pytest.raises(ProtocolError, match=r"UpdateInstancesStatus.instances\[0\].state"):
            await call

    async def test_an_item_type_the_link_cannot_carry_is_refused_before_sending(self) -> None:
        unit = Unit("n1")
        _, outbox = unit.connect("n1")
        layer = InstanceSpec(key("x"), "layer", "1", layout("x", "1"))
        with pytest.raises(AosError) as caught:
            await unit.nodes["n1"].run_instances([layer])
        assert caught.value.code == AosCode.NOT_SUPPORTED
        assert outbox.of("update_instances") == []


class TestReports:
    async def test_every_instances_report_replaces_the_last_and_asks_for_a_comparison(
        self,
    ) -> None:
        unit = Unit("n1")
        link, _ = unit.connect("n1", status("a"), status("b"))
        link.receive(report(status("b", state=InstanceState.FAILED)))
        assert await unit.nodes["n1"].instance_statuses() == [
            status("b", state=InstanceState.FAILED)
        ]
        assert unit.changed == ["n1", "n1"]

    async def test_an_unreadable_report_changes_nothing(self) -> None:
        unit = Unit("n1")
        link, _ = unit.connect("n1", status("a"))
        bad = report(status("b"))
        bad.node_instances_status.instances[0].state = "sleeping"
        with pytest.raises(ProtocolError, match=r"NodeInstancesStatus.instances\[0\].state"):
            link.receive(bad)
        assert await unit.nodes["n1"].instance_statuses() == [status("a")]
        assert unit.changed == ["n1"]

    async def test_statuses_are_not_given_for_a_node_that_went_away(self) -> None:
        unit = Unit("n1")
        link, _ = unit.connect("n1", status("a"))
        link.close()
        with pytest.raises(AosError, match="not connected"):
            await unit.nodes["n1"].instance_statuses()

    def test_needs_update_compares_versions_digests_and_extras(self) -> None:
        unit = Unit("n1")
        link, _ = unit.connect("n1")
        node = unit.nodes["n1"]
        digests = {key("a"): "manifest:a-1.0"}
        link.receive(report(status("a"), digests=digests))
        assert not node.needs_update([spec("a")])
        assert node.needs_update([spec("a", version="2.0")])
        assert node.needs_update([spec("a"), spec("b")])
        assert node.needs_update([])
        link.receive(report(status("a"), digests={key("a"): "manifest:other"}))
        assert node.needs_update([spec("a")])

    def test_alerts_are_kept_on_the_node(self) -> None:
        unit = Unit("n1")
        link, _ = unit.connect("n1")
        at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        link.receive(wire.instance_alert(key("a"), "1.0", "CrashLoopBackOff: exit 3", at=at))
        system = sm_pb2.SMOutgoingMessages(
            alert=sm_pb2.Alert(system_alert=sm_pb2.SystemAlert(message="disk almost full"))
        )
        link.receive(system)
        node = unit.nodes["n1"]
        alert = node.last_alert(key("a"))
        assert alert is not None
        assert (alert.kind, alert.version, alert.message, alert.at) == (
            "instance_alert",
            "1.0",
            "CrashLoopBackOff: exit 3",
            at,
        )
        assert [a.kind for a in node.alerts] == ["instance_alert", "system_alert"]
        assert node.last_alert(key("b")) is None

    def test_node_config_status_is_kept(self) -> None:
        unit = Unit("n1")
        link, _ = unit.connect("n1")
        error = ErrorInfo(1, 0, "bad")
        link.receive(
            wire.node_config_status(UnitConfigStatus("1.2.0", UnitConfigState.FAILED, error))
        )
        assert unit.nodes["n1"].config_status == UnitConfigStatus(
            "1.2.0", UnitConfigState.FAILED, error
        )

    def test_a_message_this_cm_does_not_read_is_skipped(self) -> None:
        unit = Unit("n1")
        link, _ = unit.connect("n1", status("a"))
        link.receive(sm_pb2.SMOutgoingMessages())
        link.receive(sm_pb2.SMOutgoingMessages(alert=sm_pb2.Alert()))
        assert unit.nodes["n1"].connected and not unit.nodes["n1"].alerts

    def test_a_failing_callback_does_not_break_the_link(self) -> None:
        def boom(node: str) -> None:
            raise RuntimeError(node)

        unit = Unit("n1")
        unit.nodes.on_node_changed = boom
        link, _ = unit.connect("n1", status("a"))
        link.receive(report(status("b")))
        assert [s.key for s in unit.nodes["n1"]._statuses.values()] == [key("b")]


def unit_config(version: str, *nodes: str) -> UnitConfig:
    return UnitConfig(version, "1", tuple(NodeConfig(Identity(codename=n)) for n in nodes))


def config_status(
    version: str, state: UnitConfigState, error: ErrorInfo | None = None
) -> sm_pb2.SMOutgoingMessages:
    return wire.node_config_status(UnitConfigStatus(version, state, error))


class TestUnitConfig:
    async def answer_each(
        self, link: NodeLink, outbox: RecordingOutbox, *answers: sm_pb2.SMOutgoingMessages
    ) -> None:
        def sent() -> int:
            return len(outbox.of("check_node_config")) + len(outbox.of("set_node_config"))

        for n, message in enumerate(answers, start=1):
            await until(lambda n=n: sent() >= n)
            link.receive(message)

    async def test_every_connected_node_checks_then_sets_its_entry(self) -> None:
        unit = Unit("n1", "n2")
        link, outbox = unit.connect("n1")
        config = unit_config("2.0.0", "n1", "n2")
        task = asyncio.create_task(unit.nodes.apply_unit_config(config))
        await self.answer_each(
            link,
            outbox,
            config_status("2.0.0", UnitConfigState.ABSENT),
            config_status("2.0.0", UnitConfigState.INSTALLED),
        )
        assert await task is None
        (check,) = outbox.of("check_node_config")
        (set_,) = outbox.of("set_node_config")
        assert check.version == set_.version == "2.0.0"
        assert orjson.loads(set_.node_config)["node"]["codename"] == "n1"
        assert unit.nodes["n1"].config_status == UnitConfigStatus(
            "2.0.0", UnitConfigState.INSTALLED
        )

    async def test_a_node_refusing_its_entry_refuses_the_config_and_nothing_is_set(
        self,
    ) -> None:
        unit = Unit("n1")
        link, outbox = unit.connect("n1")
        refusal = ErrorInfo(int(AosCode.INVALID_ARGUMENT), 0, "bad labels")
        task = asyncio.create_task(unit.nodes.apply_unit_config(unit_config("2.0.0", "n1")))
        await self.answer_each(
            link, outbox, config_status("2.0.0", UnitConfigState.FAILED, refusal)
        )
        assert await task == ErrorInfo(int(AosCode.INVALID_ARGUMENT), 0, "node n1: bad labels")
        assert outbox.of("set_node_config") == []

    async def test_a_node_that_connects_later_gets_the_config_set(self) -> None:
        unit = Unit("n1", "n2")
        link, outbox = unit.connect("n1")
        task = asyncio.create_task(unit.nodes.apply_unit_config(unit_config("2.0.0", "n1", "n2")))
        await self.answer_each(
            link,
            outbox,
            config_status("2.0.0", UnitConfigState.ABSENT),
            config_status("2.0.0", UnitConfigState.INSTALLED),
        )
        assert await task is None
        _, later = unit.connect("n2")
        (set_,) = later.of("set_node_config")
        assert set_.version == "2.0.0"
        assert orjson.loads(set_.node_config)["node"]["codename"] == "n2"

    async def test_a_node_going_away_before_answering_gets_it_when_it_comes_back(
        self,
    ) -> None:
        unit = Unit("n1")
        link, outbox = unit.connect("n1")
        task = asyncio.create_task(unit.nodes.apply_unit_config(unit_config("2.0.0", "n1")))
        await until(lambda: bool(outbox.of("check_node_config")))
        link.close()
        assert await task is None
        _, again = unit.connect("n1")
        (set_,) = again.of("set_node_config")
        assert set_.version == "2.0.0"

    async def test_a_connected_node_that_does_not_answer_is_a_transient_failure(self) -> None:
        unit = Unit("n1", answer_timeout_s=0.05)
        unit.connect("n1")
        with pytest.raises(AosError) as raised:
            await unit.nodes.apply_unit_config(unit_config("2.0.0", "n1"))
        assert classify(raised.value) is Retry.TRANSIENT

    def test_the_pki_nodes_are_known_before_they_connect(self) -> None:
        nodes = NodeManager(["n1"], known=["n1", "n2"])
        assert (nodes.knows("n1"), nodes.knows("n2"), nodes.knows("n3")) == (True, True, False)
