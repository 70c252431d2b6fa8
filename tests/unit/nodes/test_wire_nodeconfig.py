"""The node config messages of the SM link: what the CM sends (GetNodeConfigStatus,
CheckNodeConfig, SetNodeConfig), what the SM reads of them, the NodeConfigStatus it answers,
round trips through the wire bytes, and what the CM's helpers refuse to send."""

from __future__ import annotations

import orjson
import pytest

from aoscore_py.errors import AosCode, LocalError
from aoscore_py.nodes import wire
from aoscore_py.nodes.proto import sm_pb2
from aoscore_py.protocol import ErrorInfo, UnitConfigState, UnitConfigStatus

NODE = "node-1"
CONFIG = orjson.dumps(
    {
        "version": "2.0.0",
        "node": {"codename": NODE},
        "nodeGroupSubject": {"codename": "mainType"},
        "labels": ["mainNode"],
        "priority": 1,
    }
)


def over_the_wire(message: sm_pb2.SMIncomingMessages) -> sm_pb2.SMIncomingMessages:
    """`message` as the SM reads it: serialised by the CM, parsed at the other end."""
    return sm_pb2.SMIncomingMessages.FromString(message.SerializeToString())


class TestRequests:
    def test_get_node_config_status(self) -> None:
        message = over_the_wire(wire.get_node_config_status())
        assert message.WhichOneof("SMIncomingMessage") == "get_node_config_status"

    @pytest.mark.parametrize(
        ("make", "case"),
        [
            (wire.check_node_config, "check_node_config"),
            (wire.set_node_config, "set_node_config"),
        ],
    )
    def test_the_config_and_version_arrive_as_sent(self, make, case: str) -> None:
        message = over_the_wire(make(NODE, "2.1.0", CONFIG))
        assert message.WhichOneof("SMIncomingMessage") == case
        request = wire.node_config_request(getattr(message, case))
        assert request == wire.NodeConfigRequest("2.1.0", CONFIG.decode())
        assert orjson.loads(request.config_json) == orjson.loads(CONFIG)

    def test_the_bytes_are_aoscores(self) -> None:
        """Field 2 of the oneof (check_node_config) holding node_config = 1, version = 2."""
        body = b'{"node":{"codename":"n"}}'
        raw = wire.check_node_config("n", "1", body).SerializeToString()
        inner = b"\x0a" + bytes([len(body)]) + body + b"\x12\x011"
        assert raw == b"\x12" + bytes([len(inner)]) + inner

    @pytest.mark.parametrize("make", [wire.check_node_config, wire.set_node_config])
    @pytest.mark.parametrize(
        ("body", "says"),
        [
            (orjson.dumps({"node": {"codename": "node-2"}}), "names node 'node-2'"),
            (b"{not json", "node config for node node-1: $"),
            (b'{"labels": []}', "$.node"),
            (b'{"node": {"codename": "node-1"}, "x": "\xff"}', "not UTF-8"),
        ],
    )
    def test_the_cm_never_sends_a_config_the_node_must_refuse(
        self, make, body: bytes, says: str
    ) -> None:
        with pytest.raises(LocalError) as caught:
            make(NODE, "1.0.0", body)
        assert caught.value.code == AosCode.INVALID_ARGUMENT
        assert says in caught.value.message


class TestStatus:
    @pytest.mark.parametrize(
        "status",
        [
            UnitConfigStatus("", UnitConfigState.ABSENT),
            UnitConfigStatus("2.0.0", UnitConfigState.INSTALLED),
            UnitConfigStatus(
                "1.0.0",
                UnitConfigState.FAILED,
                ErrorInfo(int(AosCode.WRONG_STATE), 0, "node config version 1.0.0 is older"),
            ),
        ],
    )
    def test_round_trip(self, status: UnitConfigStatus) -> None:
        sent = wire.node_config_status(status)
        received = sm_pb2.SMOutgoingMessages.FromString(sent.SerializeToString())
        assert wire.node_config_status_from_proto(received.node_config_status) == status
