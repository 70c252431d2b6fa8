"""Conversions between the SM link's messages and our types, both ways, and what they refuse."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aoscore_py.errors import AosCode, LocalError, ProtocolError, Retry, classify
from aoscore_py.nodes import ImageLayout, InstanceKey, InstanceSpec, InstanceStatus, wire
from aoscore_py.nodes.proto import common_pb2, sm_pb2
from aoscore_py.protocol import (
    ArchInfo,
    ErrorInfo,
    Identity,
    InstanceState,
    OsInfo,
    ResourceInfo,
    RuntimeInfo,
    UnitConfigState,
    UnitConfigStatus,
)

DIGEST = "sha256:" + "ab" * 32
KEY = InstanceKey("item-1", "subject-1", 2)


def layout(manifest_digest: str = DIGEST) -> ImageLayout:
    return ImageLayout(
        index_digest="sha256:" + "01" * 32,
        manifest_digest=manifest_digest,
        manifest={},
        config_digest="sha256:" + "02" * 32,
        layer_digests=("sha256:" + "03" * 32,),
    )


def spec(key: InstanceKey = KEY, item_type: str = "service", priority: int = 7) -> InstanceSpec:
    return InstanceSpec(key, item_type, "1.2.0", layout(), priority)


def reread(message):
    """What the peer parses from our bytes."""
    return type(message).FromString(message.SerializeToString())


class TestInstanceInfo:
    def test_spec_fields_go_where_aoscore_reads_them(self):
        info = wire.instance_info(spec(), runtime_id="runc")
        assert info.instance.item_id == "item-1"
        assert info.instance.subject_id == "subject-1"
        assert info.instance.instance == 2
        assert info.instance.type == common_pb2.SERVICE
        assert info.version == "1.2.0"
        assert info.manifest_digest == DIGEST
        assert info.priority == 7
        assert info.runtime_id == "runc"

    def test_runtime_defaults_to_our_docker_runtime(self):
        assert wire.instance_info(spec()).runtime_id == wire.DOCKER_RUNTIME == "docker"

    def test_extras_aoscore_knows(self):
        info = wire.instance_info(
            spec(),
            owner_id="owner",
            uid=5001,
            gid=5002,
            storage_path="/s",
            state_path="/t",
            env_vars=[("A", "1"), ("B", "2")],
            preinstalled=True,
        )
        again = reread(info)
        assert (again.owner_id, again.uid, again.gid) == ("owner", 5001, 5002)
        assert (again.storage_path, again.state_path) == ("/s", "/t")
        assert [(e.name, e.value) for e in again.env_vars] == [("A", "1"), ("B", "2")]
        assert again.instance.preinstalled

    def test_component(self):
        info = wire.instance_info(spec(item_type="component"))
        assert info.instance.type == common_pb2.COMPONENT

    @pytest.mark.parametrize("item_type", ["layer", "runtime", "Service", ""])
    def test_an_item_type_the_link_cannot_carry_is_refused(self, item_type):
        with pytest.raises(LocalError, match="cannot run on a node") as caught:
            wire.instance_info(spec(item_type=item_type))
        assert caught.value.code == AosCode.NOT_SUPPORTED
        assert str(KEY) in caught.value.message

    def test_negative_numbers_are_refused(self):
        with pytest.raises(LocalError, match="priority -1 is out of range") as caught:
            wire.instance_info(spec(priority=-1))
        assert caught.value.code == AosCode.INVALID_ARGUMENT
        with pytest.raises(LocalError, match="index -1 is out of range"):
            wire.instance_info(spec(key=InstanceKey("i", "s", -1)))


class TestUpdateInstances:
    def test_round_trip_to_what_the_sm_runs(self):
        other = InstanceKey("item-2", "subject-1", 0)
        gone = InstanceKey("item-3", "subject-1", 1)
        message = reread(wire.update_instances([spec(), spec(key=other)], [gone]))
        assert message.WhichOneof("SMIncomingMessage") == "update_instances"
        start, stop = wire.update_request(message.update_instances)
        assert [r.key for r in start] == [KEY, other]
        assert stop == [gone]
        first = start[0]
        assert (first.item_type, first.version, first.manifest_digest) == (
            "service",
            "1.2.0",
            DIGEST,
        )
        assert (first.runtime_id, first.priority, first.preinstalled) == ("docker", 7, False)
        assert first.spec(layout()) == spec()
        with pytest.raises(LocalError, match="but the CM asked for"):
            first.spec(layout("sha256:" + "ff" * 32))

    def test_stopped_components_keep_their_type(self):
        gone = InstanceKey("comp", "subject-1", 0)
        message = wire.update_instances([], [gone], item_types={gone: "component"})
        assert message.update_instances.stop_instances[0].type == common_pb2.COMPONENT

    def test_empty_means_run_nothing(self):
        assert wire.update_request(reread(wire.update_instances([], [])).update_instances) == (
            [],
            [],
        )

    def test_an_unreadable_entry_refuses_the_whole_message(self):
        update = wire.update_instances([spec()], []).update_instances
        update.start_instances.add().CopyFrom(
            sm_pb2.InstanceInfo(instance=common_pb2.InstanceIdent(item_id="x"))
        )
        with pytest.raises(ProtocolError) as caught:
            wire.update_request(update)
        assert caught.value.path == "UpdateInstances.start_instances[1].manifest_digest"
        assert classify(caught.value) is Retry.PERMANENT

    def test_refusals_name_the_field(self):
        info = wire.instance_info(spec())
        info.instance.item_id = ""
        with pytest.raises(ProtocolError, match=r"InstanceInfo\.instance\.item_id: is empty"):
            wire.instance_request(info)
        info = wire.instance_info(spec())
        info.instance.type = 7  # a type a later AosCore might add: proto3 keeps the number
        with pytest.raises(ProtocolError, match=r"instance\.type: unknown item type 7"):
            wire.instance_request(reread(info))
        bad_stop = sm_pb2.UpdateInstances(stop_instances=[common_pb2.InstanceIdent()])
        with pytest.raises(ProtocolError, match=r"stop_instances\[0\]\.item_id: is empty"):
            wire.update_request(bad_stop)


class TestInstanceStatus:
    @pytest.mark.parametrize("state", list(InstanceState))
    def test_round_trip(self, state):
        status = InstanceStatus(KEY, "1.2.0", "node-1", state, runtime="docker")
        message = reread(wire.instance_status(status, manifest_digest=DIGEST))
        assert message.state == state.value
        assert message.manifest_digest == DIGEST
        assert not message.HasField("error")
        assert wire.instance_status_from_proto(message, node="node-1") == status

    def test_error_round_trip(self):
        error = ErrorInfo(aos_code=int(AosCode.RUNTIME), exit_code=137, message="CrashLoopBackOff")
        status = InstanceStatus(KEY, "1.2.0", "node-1", InstanceState.FAILED, error)
        message = reread(wire.instance_status(status))
        assert (message.error.aos_code, message.error.exit_code) == (2, 137)
        assert message.error.message == "CrashLoopBackOff"
        assert wire.instance_status_from_proto(message, node="node-1") == status

    def test_the_node_is_the_links(self):
        status = InstanceStatus(KEY, "1.2.0", "node-1", InstanceState.ACTIVE)
        again = wire.instance_status_from_proto(wire.instance_status(status), node="node-9")
        assert again.node == "node-9"

    def test_aoscores_no_error_reads_as_none(self):
        """AosCore's SM writes an ErrorInfo on every status, aos_code 0 when all is well."""
        message = wire.instance_status(InstanceStatus(KEY, "1", "n", InstanceState.ACTIVE))
        message.error.CopyFrom(common_pb2.ErrorInfo(aos_code=0, exit_code=0, message=""))
        assert message.HasField("error")
        assert wire.instance_status_from_proto(message, node="n").error is None

    @pytest.mark.parametrize("state", ["running", "Active", "", "ACTIVE", "stopped"])
    def test_unknown_states_are_refused(self, state):
        message = wire.instance_status(InstanceStatus(KEY, "1", "n", InstanceState.ACTIVE))
        message.state = state
        with pytest.raises(ProtocolError, match="unknown instance state") as caught:
            wire.instance_status_from_proto(message, node="n")
        assert caught.value.path == "InstanceStatus.state"
        assert "activating, active, inactive, failed" in caught.value.reason
        assert caught.value.code == AosCode.INVALID_ARGUMENT

    def test_lists_name_the_bad_entry(self):
        good = InstanceStatus(KEY, "1", "n", InstanceState.ACTIVE)
        message = wire.node_instances_status([good, good]).node_instances_status
        message.instances[1].state = "zombie"
        with pytest.raises(ProtocolError) as caught:
            wire.instance_statuses_from_proto(message, node="n")
        assert caught.value.path == "NodeInstancesStatus.instances[1].state"

    @pytest.mark.parametrize("maker", ["node_instances_status", "update_instances_status"])
    def test_lists_round_trip(self, maker):
        statuses = [
            InstanceStatus(KEY, "1", "n", InstanceState.ACTIVATING),
            InstanceStatus(InstanceKey("c", "s", 0), "2", "n", InstanceState.INACTIVE),
        ]
        message = reread(
            getattr(wire, maker)(
                statuses,
                manifest_digests={KEY: DIGEST},
                item_types={statuses[1].key: "component"},
            )
        )
        assert message.WhichOneof("SMOutgoingMessage") == maker
        body = getattr(message, maker)
        assert body.instances[0].manifest_digest == DIGEST
        assert body.instances[1].instance.type == common_pb2.COMPONENT
        assert wire.instance_statuses_from_proto(body, node="n") == statuses

    @given(
        item=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1),
        subject=st.text(st.characters(blacklist_categories=("Cs",))),
        index=st.integers(0, 2**64 - 1),
        state=st.sampled_from(list(InstanceState)),
        code=st.integers(-(2**31), 2**31 - 1).filter(bool) | st.none(),
        exit_code=st.integers(-(2**31), 2**31 - 1),
    )
    def test_any_status_survives_the_wire(self, item, subject, index, state, code, exit_code):
        error = None if code is None else ErrorInfo(code, exit_code, "why")
        status = InstanceStatus(InstanceKey(item, subject, index), "v", "n", state, error, "rt")
        assert (
            wire.instance_status_from_proto(reread(wire.instance_status(status)), node="n")
            == status
        )


class TestErrorInfo:
    def test_round_trip(self):
        error = ErrorInfo(aos_code=5, exit_code=-9, message="not found")
        assert wire.error_from_proto(reread(wire.error_info(error))) == error

    def test_code_zero_is_no_error_whatever_the_message(self):
        assert wire.error_from_proto(common_pb2.ErrorInfo(aos_code=0, message="x")) is None
        assert wire.error_from_proto(common_pb2.ErrorInfo()) is None


class TestSMInfo:
    def test_round_trip(self):
        runtime = RuntimeInfo(
            identity=Identity(codename="docker"),
            runtime_type="docker",
            arch_info=ArchInfo("arm64", "v8"),
            os_info=OsInfo("linux", "6.1", ("cgroup2",)),
            max_dmips=10_000,
            allowed_dmips=5_000,
            total_ram=2**33,
            allowed_ram=2**32,
            max_instances=20,
        )
        gpu = ResourceInfo("gpu", 1)
        message = reread(wire.sm_info("node-1", [runtime], [gpu]))
        assert message.WhichOneof("SMOutgoingMessage") == "sm_info"
        assert message.sm_info.runtimes[0].runtime_id == "docker"
        assert wire.node_runtimes(message.sm_info) == wire.NodeRuntimes(
            "node-1", (runtime,), (gpu,)
        )

    def test_not_given_is_zero_on_the_wire(self):
        runtime = RuntimeInfo(identity=Identity(codename="docker"), runtime_type="docker")
        message = reread(wire.sm_info("node-1", [runtime]))
        sent = message.sm_info.runtimes[0]
        assert (sent.max_dmips, sent.total_ram, sent.max_instances) == (0, 0, 0)
        assert not sent.HasField("os_info")
        assert wire.node_runtimes(message.sm_info).runtimes == (runtime,)

    def test_aoscores_empty_os_and_arch_read_as_not_given(self):
        """AosCore's SM always writes os_info and arch_info, empty when it knows nothing."""
        runtime = sm_pb2.RuntimeInfo(
            runtime_id="runc",
            type="runc",
            os_info=common_pb2.OSInfo(),
            arch_info=common_pb2.ArchInfo(),
        )
        read = wire.node_runtimes(sm_pb2.SMInfo(node_id="n", runtimes=[runtime])).runtimes[0]
        assert (read.os_info, read.arch_info, read.max_instances) == (None, None, None)
        assert read.identity == Identity(codename="runc")

    def test_refusals(self):
        with pytest.raises(ProtocolError, match=r"SMInfo\.node_id: is empty"):
            wire.node_runtimes(sm_pb2.SMInfo())
        nameless = sm_pb2.SMInfo(node_id="n", runtimes=[sm_pb2.RuntimeInfo(type="docker")])
        with pytest.raises(ProtocolError, match=r"runtimes\[0\]\.runtime_id: is empty"):
            wire.node_runtimes(nameless)


class TestNodeConfigStatus:
    @pytest.mark.parametrize("state", list(UnitConfigState))
    def test_round_trip(self, state):
        error = ErrorInfo(aos_code=9, message="wrong state") if state == "failed" else None
        status = UnitConfigStatus("2.0.0", state, error)
        message = reread(wire.node_config_status(status))
        assert message.node_config_status.state == state.value
        assert wire.node_config_status_from_proto(message.node_config_status) == status

    def test_unknown_state_is_refused(self):
        with pytest.raises(ProtocolError, match="unknown node config state 'applied'") as caught:
            wire.node_config_status_from_proto(sm_pb2.NodeConfigStatus(state="applied"))
        assert caught.value.path == "NodeConfigStatus.state"


class TestSmallMessages:
    def test_instance_alert(self):
        at = datetime(2026, 5, 7, 5, 44, 11, 60000, tzinfo=UTC)
        message = reread(wire.instance_alert(KEY, "1.2.0", "crashed: exit 1", at=at))
        alert = message.alert
        assert alert.WhichOneof("AlertItem") == "instance_alert"
        assert wire.instance_key(alert.instance_alert.instance) == KEY
        assert alert.instance_alert.service_version == "1.2.0"
        assert alert.instance_alert.message == "crashed: exit 1"
        assert alert.timestamp.ToDatetime(tzinfo=UTC) == at

    @pytest.mark.parametrize("connected", [True, False])
    def test_connection_status(self, connected):
        message = reread(wire.connection_status(connected))
        expected = sm_pb2.CONNECTED if connected else sm_pb2.DISCONNECTED
        assert message.connection_status.cloud_status == expected
