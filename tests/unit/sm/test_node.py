"""`SmNode` driven with a fake manager, a fake blob cache and a recording link: what it sends
on a new stream, how it acts on UpdateInstances, what it reports and alerts, node configs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from aoscore_py.errors import AosCode, AosError, BlobError
from aoscore_py.nodes import InstanceKey, InstanceSpec, wire
from aoscore_py.nodes.proto import common_pb2, sm_pb2
from aoscore_py.protocol import UnitConfigState, UnitConfigStatus
from aoscore_py.sm.node import SmNode
from aoscore_py.sm.nodeinfo import NodeResources, sm_info_message
from aoscore_py.sm.types import Platform

from .node_stubs import (
    CRASH,
    FAILED,
    NODE,
    FakeImages,
    FakeManager,
    Harness,
    RecordingLink,
    digest,
    key,
    layout,
    spec,
    status,
)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    made = Harness(FakeManager(), FakeImages(), RecordingLink())
    await made.node.hello()  # as the link does on each new stream
    task = asyncio.create_task(made.node.serve())
    yield made
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def states(message) -> dict[InstanceKey, str]:
    return {wire.instance_key(s.instance): s.state for s in message.instances}


def reported(harness: Harness) -> dict[InstanceKey, str]:
    """What the last NodeInstancesStatus said."""
    message = harness.link.last("node_instances_status")
    return {} if message is None else states(message)


class TestSmNode:
    async def test_hello_is_sm_info_then_every_instance(self) -> None:
        manager = FakeManager([status("a"), status("b", FAILED, message=CRASH)])
        previous = {key("a"): spec("a")}
        info = sm_info_message(NODE, Platform("linux", "amd64"), NodeResources())
        node = SmNode(NODE, manager, FakeImages(), info, previous=previous)
        first, second = await node.hello()
        assert first.WhichOneof("SMOutgoingMessage") == "sm_info"
        assert second.WhichOneof("SMOutgoingMessage") == "node_instances_status"
        reported = second.node_instances_status.instances
        assert states(second.node_instances_status) == {key("a"): "active", key("b"): "failed"}
        # The manifest of an instance from before the restart comes from the state file.
        assert [s.manifest_digest for s in reported] == [digest("a"), ""]

    async def test_an_update_runs_exactly_the_start_list_and_is_answered(self, harness) -> None:
        harness.update(spec("a"), spec("b"))
        answer = await harness.answered()
        assert states(answer) == {key("a"): "activating", key("b"): "activating"}
        assert [s.manifest_digest for s in answer.instances] == [digest("a"), digest("b")]
        assert harness.manager.runs == [[spec("a"), spec("b")]]
        assert sorted(harness.images.asked) == [digest("a"), digest("b")]
        assert harness.images.kept and set(harness.images.kept[-1]) == {digest("a"), digest("b")}

    async def test_changes_are_reported_once_and_the_countdown_is_not(self, harness) -> None:
        harness.update(spec("a"))
        await harness.answered()
        sent = len(harness.link.sent)
        await asyncio.sleep(0.05)
        assert len(harness.link.sent) == sent  # nothing changed since the answer
        harness.manager.statuses[key("a")] = status("a")
        await harness.until(lambda: "node_instances_status" in harness.link.cases()[sent:])
        assert states(harness.link.last("node_instances_status")) == {key("a"): "active"}
        sent = len(harness.link.sent)
        for left in (10, 9, 8):
            harness.manager.statuses[key("a")] = status(
                "a", FAILED, message=f"{CRASH}; next start in {left} s"
            )
            await asyncio.sleep(0.03)
        assert harness.link.cases()[sent:] == ["node_instances_status", "alert"]
        alert = harness.link.last("alert").instance_alert
        assert wire.instance_key(alert.instance) == key("a")
        assert alert.service_version == "1.0" and alert.message.startswith("CrashLoopBackOff")

    async def test_an_instance_without_its_image_fails_and_is_fetched_again(self, harness) -> None:
        harness.images.errors[digest("b")] = BlobError("the CM's blob server is away")
        harness.update(spec("a"), spec("b"))
        answer = await harness.answered()
        assert states(answer) == {key("a"): "activating", key("b"): "failed"}
        error = answer.instances[1].error
        assert error.aos_code == AosCode.FAILED and error.message.startswith("ErrImagePull")
        assert harness.manager.runs == [[spec("a")]]
        await harness.until(lambda: harness.images.asked.count(digest("b")) >= 2)
        del harness.images.errors[digest("b")]
        await harness.until(lambda: harness.manager.runs[-1] == [spec("a"), spec("b")])
        await harness.until(lambda: reported(harness).get(key("b")) == "activating")
        assert harness.link.cases().count("update_instances_status") == 1  # a retry answers none

    async def test_a_permanent_failure_is_not_fetched_again(self, harness) -> None:
        harness.images.errors[digest("a")] = BlobError("mismatch", code=AosCode.INVALID_CHECKSUM)
        harness.update(spec("a"))
        await harness.answered()
        await asyncio.sleep(0.1)
        assert harness.images.asked == [digest("a")]

    async def test_an_unreadable_update_changes_nothing(self, harness) -> None:
        update = wire.update_instances([spec("a")], [])
        update.update_instances.start_instances[0].manifest_digest = ""
        harness.node.received(update, 1)
        answer = await harness.answered()
        assert states(answer) == {key("a"): "failed"}
        assert "manifest_digest" in answer.instances[0].error.message
        assert harness.manager.runs == []

    async def test_an_engine_failure_answers_every_instance_failed(self, harness) -> None:
        harness.manager.fail = AosError("the engine is away", code=AosCode.RUNTIME)
        harness.update(spec("a"))
        answer = await harness.answered()
        assert states(answer) == {key("a"): "failed"}
        assert answer.instances[0].error.message == "the engine is away"
        harness.manager.fail = None
        await harness.until(lambda: harness.manager.runs == [[spec("a")]])  # tried again

    async def test_an_answer_stays_on_the_stream_of_its_request(self, harness) -> None:
        harness.link.stream = 2  # stream 1 ended and another opened meanwhile
        harness.update(spec("a"), stream=1)
        await harness.until(lambda: harness.node.applied == 1)
        assert "update_instances_status" not in harness.link.cases()
        assert harness.manager.runs == [[spec("a")]]

    async def test_the_item_type_asked_for_is_reported(self, harness) -> None:
        component = InstanceSpec(key("a"), "component", "1.0", layout("a"))
        harness.update(component)
        answer = await harness.answered()
        assert answer.instances[0].instance.type == common_pb2.COMPONENT

    async def test_node_config_requests_are_answered_in_order(self, harness) -> None:
        config = orjson.dumps({"node": {"codename": NODE}, "priority": 1})
        other = orjson.dumps({"node": {"codename": "node-2"}})
        harness.node.received(wire.get_node_config_status(), 1)
        harness.node.received(wire.check_node_config(NODE, "1.0.0", config), 1)
        check = wire.check_node_config("node-2", "1.0.0", other)
        harness.node.received(check, 1)
        harness.node.received(wire.set_node_config(NODE, "1.0.0", config), 1)
        harness.node.received(wire.get_node_config_status(), 2)  # a stream that ended
        harness.node.received(wire.get_node_config_status(), 1)
        await harness.until(lambda: len(harness.link.sent) == 5)
        answers = [
            wire.node_config_status_from_proto(m.node_config_status) for _, m in harness.link.sent
        ]
        assert answers[:2] == [
            UnitConfigStatus("", UnitConfigState.ABSENT),
            UnitConfigStatus("1.0.0", UnitConfigState.ABSENT),
        ]
        refused = answers[2].error_info
        assert refused is not None and refused.aos_code == AosCode.INVALID_ARGUMENT
        assert "'node-2' is not this node 'node-1'" in refused.message
        assert answers[3:] == [UnitConfigStatus("1.0.0", UnitConfigState.INSTALLED)] * 2
        assert harness.node.node_config.status().state == UnitConfigState.INSTALLED

    async def test_messages_it_does_not_read_are_skipped(self, harness) -> None:
        harness.node.received(sm_pb2.SMIncomingMessages(), 1)
        harness.node.received(wire.connection_status(True), 1)
        assert harness.link.sent == []

    async def test_nothing_is_reported_while_no_stream_is_open(self, harness) -> None:
        harness.link.stream = None
        harness.manager.statuses[key("a")] = status("a")
        await asyncio.sleep(0.05)
        harness.link.stream = 1
        await harness.until(lambda: "node_instances_status" in harness.link.cases())
        assert states(harness.link.last("node_instances_status")) == {key("a"): "active"}
