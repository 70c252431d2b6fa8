"""Our `.proto` files against AosCore's: the same bytes on the wire.

The tables below were derived by reading AosCore's own definitions, repository
`aosedge/aos_core_api` at commit af3552a0a5eb0237eff7f5f183780ca46c339cd3 (tag "Release 9.1.0",
2026-06-07; the two files last changed in f98a4abef137e7861f7ddd2e76d5042a3ac259a6), files
`proto/servicemanager/v5/servicemanager.proto` and `proto/common/v2/common.proto`. They hold,
for every message we keep, each field we keep: name, number, type (a scalar, or the full name of
a message or enum, "repeated " before it for a list) and the oneof it belongs to. What we leave
out of a message we keep is listed in AOSCORE_OMITTED, and its numbers must be reserved in ours
so that nobody reuses them for something else. When AosCore's file changes, read it again, update
these tables and the `.proto` files together, and say which commit you read.

CI has no network, and AosCore's files are theirs, not ours to commit: this test data is the
record of what we read.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor_pb2 import FieldDescriptorProto

from aoscore_py.nodes.proto import common_pb2, sm_pb2, sm_pb2_grpc

AOSCORE_FIELDS = {
    "common.v2.ErrorInfo": (
        ("aos_code", 1, "int32", None),
        ("exit_code", 2, "int32", None),
        ("message", 3, "string", None),
    ),
    "common.v2.InstanceIdent": (
        ("item_id", 1, "string", None),
        ("subject_id", 2, "string", None),
        ("instance", 3, "uint64", None),
        ("type", 4, "common.v2.ItemType", None),
        ("preinstalled", 5, "bool", None),
    ),
    "common.v2.ArchInfo": (
        ("architecture", 1, "string", None),
        ("variant", 2, "string", None),
    ),
    "common.v2.OSInfo": (
        ("os", 1, "string", None),
        ("version", 2, "string", None),
        ("features", 3, "repeated string", None),
    ),
    "servicemanager.v5.SMIncomingMessages": (
        ("get_node_config_status", 1, "servicemanager.v5.GetNodeConfigStatus", "SMIncomingMessage"),
        ("check_node_config", 2, "servicemanager.v5.CheckNodeConfig", "SMIncomingMessage"),
        ("set_node_config", 3, "servicemanager.v5.SetNodeConfig", "SMIncomingMessage"),
        ("update_instances", 4, "servicemanager.v5.UpdateInstances", "SMIncomingMessage"),
        ("connection_status", 9, "servicemanager.v5.ConnectionStatus", "SMIncomingMessage"),
    ),
    "servicemanager.v5.SMOutgoingMessages": (
        ("sm_info", 1, "servicemanager.v5.SMInfo", "SMOutgoingMessage"),
        ("node_config_status", 2, "servicemanager.v5.NodeConfigStatus", "SMOutgoingMessage"),
        (
            "update_instances_status",
            3,
            "servicemanager.v5.UpdateInstancesStatus",
            "SMOutgoingMessage",
        ),
        ("node_instances_status", 4, "servicemanager.v5.NodeInstancesStatus", "SMOutgoingMessage"),
        ("alert", 8, "servicemanager.v5.Alert", "SMOutgoingMessage"),
    ),
    "servicemanager.v5.BlobsInfosRequest": (("digests", 1, "repeated string", None),),
    "servicemanager.v5.BlobsInfos": (("urls", 1, "repeated string", None),),
    "servicemanager.v5.GetNodeConfigStatus": (),
    "servicemanager.v5.CheckNodeConfig": (
        ("node_config", 1, "string", None),
        ("version", 2, "string", None),
    ),
    "servicemanager.v5.SetNodeConfig": (
        ("node_config", 1, "string", None),
        ("version", 2, "string", None),
    ),
    "servicemanager.v5.EnvVarInfo": (
        ("name", 1, "string", None),
        ("value", 2, "string", None),
    ),
    "servicemanager.v5.InstanceInfo": (
        ("instance", 1, "common.v2.InstanceIdent", None),
        ("version", 2, "string", None),
        ("manifest_digest", 3, "string", None),
        ("owner_id", 4, "string", None),
        ("runtime_id", 5, "string", None),
        ("uid", 6, "uint32", None),
        ("gid", 7, "uint32", None),
        ("priority", 8, "uint64", None),
        ("storage_path", 9, "string", None),
        ("state_path", 10, "string", None),
        ("env_vars", 11, "repeated servicemanager.v5.EnvVarInfo", None),
        ("monitoring_parameters", 12, "servicemanager.v5.MonitoringParameters", None),
    ),
    "servicemanager.v5.UpdateInstances": (
        ("start_instances", 1, "repeated servicemanager.v5.InstanceInfo", None),
        ("stop_instances", 2, "repeated common.v2.InstanceIdent", None),
    ),
    "servicemanager.v5.AlertRulePercents": (
        ("duration", 1, "google.protobuf.Duration", None),
        ("min_threshold", 2, "double", None),
        ("max_threshold", 3, "double", None),
    ),
    "servicemanager.v5.AlertRulePoints": (
        ("duration", 1, "google.protobuf.Duration", None),
        ("min_threshold", 2, "uint64", None),
        ("max_threshold", 3, "uint64", None),
    ),
    "servicemanager.v5.PartitionAlertRule": (
        ("name", 1, "string", None),
        ("duration", 2, "google.protobuf.Duration", None),
        ("min_threshold", 3, "double", None),
        ("max_threshold", 4, "double", None),
    ),
    "servicemanager.v5.AlertRules": (
        ("ram", 1, "servicemanager.v5.AlertRulePercents", None),
        ("cpu", 2, "servicemanager.v5.AlertRulePercents", None),
        ("partitions", 3, "repeated servicemanager.v5.PartitionAlertRule", None),
        ("download", 4, "servicemanager.v5.AlertRulePoints", None),
        ("upload", 5, "servicemanager.v5.AlertRulePoints", None),
    ),
    "servicemanager.v5.MonitoringParameters": (
        ("alert_rules", 1, "servicemanager.v5.AlertRules", None),
    ),
    "servicemanager.v5.ConnectionStatus": (
        ("cloud_status", 1, "servicemanager.v5.ConnectionEnum", None),
    ),
    "servicemanager.v5.ResourceInfo": (
        ("name", 1, "string", None),
        ("shared_count", 2, "uint64", None),
    ),
    "servicemanager.v5.RuntimeInfo": (
        ("runtime_id", 1, "string", None),
        ("type", 2, "string", None),
        ("max_dmips", 3, "uint64", None),
        ("allowed_dmips", 4, "uint64", None),
        ("total_ram", 5, "uint64", None),
        ("allowed_ram", 6, "uint64", None),
        ("max_instances", 7, "uint64", None),
        ("os_info", 8, "common.v2.OSInfo", None),
        ("arch_info", 9, "common.v2.ArchInfo", None),
    ),
    "servicemanager.v5.SMInfo": (
        ("node_id", 1, "string", None),
        ("runtimes", 2, "repeated servicemanager.v5.RuntimeInfo", None),
        ("resources", 3, "repeated servicemanager.v5.ResourceInfo", None),
    ),
    "servicemanager.v5.NodeConfigStatus": (
        ("state", 1, "string", None),
        ("version", 2, "string", None),
        ("error", 3, "common.v2.ErrorInfo", None),
    ),
    "servicemanager.v5.EnvVarStatus": (
        ("name", 1, "string", None),
        ("error", 2, "common.v2.ErrorInfo", None),
    ),
    "servicemanager.v5.InstanceStatus": (
        ("instance", 1, "common.v2.InstanceIdent", None),
        ("version", 2, "string", None),
        ("runtime_id", 3, "string", None),
        ("manifest_digest", 4, "string", None),
        ("env_vars", 5, "repeated servicemanager.v5.EnvVarStatus", None),
        ("state", 6, "string", None),
        ("error", 7, "common.v2.ErrorInfo", None),
    ),
    "servicemanager.v5.UpdateInstancesStatus": (
        ("instances", 1, "repeated servicemanager.v5.InstanceStatus", None),
    ),
    "servicemanager.v5.NodeInstancesStatus": (
        ("instances", 1, "repeated servicemanager.v5.InstanceStatus", None),
    ),
    "servicemanager.v5.SystemQuotaAlert": (
        ("parameter", 1, "string", None),
        ("value", 2, "uint64", None),
        ("status", 3, "string", None),
    ),
    "servicemanager.v5.InstanceQuotaAlert": (
        ("instance", 1, "common.v2.InstanceIdent", None),
        ("parameter", 2, "string", None),
        ("value", 3, "uint64", None),
        ("status", 4, "string", None),
    ),
    "servicemanager.v5.ResourceAllocateAlert": (
        ("instance", 1, "common.v2.InstanceIdent", None),
        ("resource", 2, "string", None),
        ("message", 3, "string", None),
    ),
    "servicemanager.v5.SystemAlert": (("message", 1, "string", None),),
    "servicemanager.v5.CoreAlert": (
        ("core_component", 1, "string", None),
        ("message", 2, "string", None),
    ),
    "servicemanager.v5.InstanceAlert": (
        ("instance", 1, "common.v2.InstanceIdent", None),
        ("service_version", 2, "string", None),
        ("message", 3, "string", None),
    ),
    "servicemanager.v5.Alert": (
        ("timestamp", 1, "google.protobuf.Timestamp", None),
        ("system_quota_alert", 2, "servicemanager.v5.SystemQuotaAlert", "AlertItem"),
        ("instance_quota_alert", 3, "servicemanager.v5.InstanceQuotaAlert", "AlertItem"),
        ("resource_allocate_alert", 4, "servicemanager.v5.ResourceAllocateAlert", "AlertItem"),
        ("system_alert", 5, "servicemanager.v5.SystemAlert", "AlertItem"),
        ("core_alert", 6, "servicemanager.v5.CoreAlert", "AlertItem"),
        ("instance_alert", 7, "servicemanager.v5.InstanceAlert", "AlertItem"),
    ),
}

AOSCORE_OMITTED = {
    "servicemanager.v5.SMIncomingMessages": {
        5: "system_log_request",
        6: "instance_log_request",
        7: "instance_crash_log_request",
        8: "get_average_monitoring",
    },
    "servicemanager.v5.SMOutgoingMessages": {
        5: "log",
        6: "instant_monitoring",
        7: "average_monitoring",
    },
}

AOSCORE_ENUMS = {
    "common.v2.ItemType": {"SERVICE": 0, "COMPONENT": 1},
    "servicemanager.v5.ConnectionEnum": {"DISCONNECTED": 0, "CONNECTED": 1},
}

# service.method: (request, response, client streams, server streams)
AOSCORE_METHODS = {
    "servicemanager.v5.SMService.RegisterSM": (
        "servicemanager.v5.SMOutgoingMessages",
        "servicemanager.v5.SMIncomingMessages",
        True,
        True,
    ),
    "servicemanager.v5.SMService.GetBlobsInfos": (
        "servicemanager.v5.BlobsInfosRequest",
        "servicemanager.v5.BlobsInfos",
        False,
        False,
    ),
}

_SCALARS = {
    number: name.removeprefix("TYPE_").lower() for name, number in FieldDescriptorProto.Type.items()
}


def _files() -> list[descriptor_pb2.FileDescriptorProto]:
    return [
        descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        for module in (common_pb2, sm_pb2)
    ]


def _messages() -> dict[str, descriptor_pb2.DescriptorProto]:
    return {f"{f.package}.{m.name}": m for f in _files() for m in f.message_type}


def _row(message: descriptor_pb2.DescriptorProto, field: FieldDescriptorProto) -> tuple:
    kind = field.type_name.lstrip(".") if field.type_name else _SCALARS[field.type]
    if field.label == FieldDescriptorProto.LABEL_REPEATED:
        kind = f"repeated {kind}"
    oneof = message.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None
    return (field.name, field.number, kind, oneof)


class TestDescriptorsMatchAosCore:
    def test_packages_are_aoscores(self):
        assert sorted(f.package for f in _files()) == ["common.v2", "servicemanager.v5"]
        assert all(f.syntax == "proto3" for f in _files())

    def test_every_message_we_define_is_one_of_aoscores(self):
        assert sorted(_messages()) == sorted(AOSCORE_FIELDS)

    @pytest.mark.parametrize("name", sorted(AOSCORE_FIELDS))
    def test_fields(self, name):
        message = _messages()[name]
        ours = sorted((_row(message, f) for f in message.field), key=lambda r: r[1])
        assert ours == sorted(AOSCORE_FIELDS[name], key=lambda r: r[1])

    @pytest.mark.parametrize("name", sorted(AOSCORE_OMITTED))
    def test_omitted_numbers_are_reserved_not_reused(self, name):
        message = _messages()[name]
        reserved = {n for r in message.reserved_range for n in range(r.start, r.end)}
        omitted = AOSCORE_OMITTED[name]
        assert set(omitted) <= reserved
        assert not {f.number for f in message.field} & set(omitted)
        assert not {f.name for f in message.field} & set(omitted.values())

    def test_enums(self):
        ours = {
            f"{f.package}.{e.name}": {v.name: v.number for v in e.value}
            for f in _files()
            for e in f.enum_type
        }
        assert ours == AOSCORE_ENUMS

    def test_service(self):
        ours = {
            f"{f.package}.{s.name}.{m.name}": (
                m.input_type.lstrip("."),
                m.output_type.lstrip("."),
                m.client_streaming,
                m.server_streaming,
            )
            for f in _files()
            for s in f.service
            for m in s.method
        }
        assert ours == AOSCORE_METHODS

    def test_grpc_method_paths(self):
        """The HTTP/2 path is what a peer calls: package, service and method names only."""
        calls = []

        class Channel:
            def __getattr__(self, kind):
                return lambda path, **_: calls.append((kind, path))

        sm_pb2_grpc.SMServiceStub(Channel())
        assert sorted(calls) == [
            ("stream_stream", "/servicemanager.v5.SMService/RegisterSM"),
            ("unary_unary", "/servicemanager.v5.SMService/GetBlobsInfos"),
        ]


class TestBytes:
    """A few encodings worked out by hand from the wire format: field number, wire type, value."""

    def test_instance_ident(self):
        ident = common_pb2.InstanceIdent(
            item_id="a", subject_id="s", instance=1, type=common_pb2.COMPONENT, preinstalled=True
        )
        assert ident.SerializeToString() == b"\x0a\x01a\x12\x01s\x18\x01\x20\x01\x28\x01"

    def test_connection_status_is_case_nine(self):
        message = sm_pb2.SMIncomingMessages(
            connection_status=sm_pb2.ConnectionStatus(cloud_status=sm_pb2.CONNECTED)
        )
        assert message.SerializeToString() == b"\x4a\x02\x08\x01"

    def test_alert_is_case_eight(self):
        message = sm_pb2.SMOutgoingMessages(alert=sm_pb2.Alert())
        assert message.SerializeToString() == b"\x42\x00"

    def test_a_case_we_left_out_is_skipped(self):
        """AosCore's CM may send a system_log_request (5): it parses, with no case set."""
        foreign = b"\x2a\x03\x0a\x01x"  # field 5, length 3: {correlation_id: "x"}
        message = sm_pb2.SMIncomingMessages.FromString(foreign)
        assert message.WhichOneof("SMIncomingMessage") is None
        outgoing = sm_pb2.SMOutgoingMessages.FromString(b"\x32\x00")  # instant_monitoring (6)
        assert outgoing.WhichOneof("SMOutgoingMessage") is None


def _round_trip(message):
    again = type(message).FromString(message.SerializeToString())
    assert again == message
    return again


class TestRoundTrip:
    def test_update_instances(self):
        ident = common_pb2.InstanceIdent(item_id="item-1", subject_id="subj-1", instance=2)
        info = sm_pb2.InstanceInfo(
            instance=ident,
            version="1.2.0",
            manifest_digest="sha256:" + "ab" * 32,
            owner_id="owner",
            runtime_id="docker",
            uid=5000,
            gid=5000,
            priority=2**40,
            storage_path="/storage",
            state_path="/state",
            env_vars=[sm_pb2.EnvVarInfo(name="A", value="1")],
            monitoring_parameters=sm_pb2.MonitoringParameters(
                alert_rules=sm_pb2.AlertRules(
                    ram=sm_pb2.AlertRulePercents(min_threshold=10.5, max_threshold=90.0),
                    partitions=[sm_pb2.PartitionAlertRule(name="var", max_threshold=80)],
                    download=sm_pb2.AlertRulePoints(max_threshold=2**33),
                )
            ),
        )
        info.monitoring_parameters.alert_rules.ram.duration.FromSeconds(30)
        message = sm_pb2.SMIncomingMessages(
            update_instances=sm_pb2.UpdateInstances(start_instances=[info], stop_instances=[ident])
        )
        again = _round_trip(message)
        assert again.WhichOneof("SMIncomingMessage") == "update_instances"
        started = again.update_instances.start_instances[0]
        assert started.priority == 2**40
        assert started.monitoring_parameters.alert_rules.ram.duration.seconds == 30

    def test_sm_info(self):
        runtime = sm_pb2.RuntimeInfo(
            runtime_id="docker",
            type="docker",
            max_dmips=10_000,
            total_ram=2**34,
            max_instances=20,
            os_info=common_pb2.OSInfo(os="linux", version="6.1", features=["cgroup2"]),
            arch_info=common_pb2.ArchInfo(architecture="arm64", variant="v8"),
        )
        message = sm_pb2.SMOutgoingMessages(
            sm_info=sm_pb2.SMInfo(
                node_id="node-1",
                runtimes=[runtime],
                resources=[sm_pb2.ResourceInfo(name="gpu", shared_count=1)],
            )
        )
        assert _round_trip(message).sm_info.runtimes[0].arch_info.variant == "v8"

    @pytest.mark.parametrize("case", ["node_instances_status", "update_instances_status"])
    def test_instance_statuses(self, case):
        status = sm_pb2.InstanceStatus(
            instance=common_pb2.InstanceIdent(item_id="i", subject_id="s", instance=0),
            version="1.0.0",
            runtime_id="docker",
            manifest_digest="sha256:" + "00" * 32,
            env_vars=[sm_pb2.EnvVarStatus(name="A", error=common_pb2.ErrorInfo(aos_code=6))],
            state="failed",
            error=common_pb2.ErrorInfo(aos_code=2, exit_code=137, message="CrashLoopBackOff"),
        )
        container = getattr(sm_pb2, "".join(p.title() for p in case.split("_")))
        message = sm_pb2.SMOutgoingMessages(**{case: container(instances=[status])})
        again = _round_trip(message)
        assert again.WhichOneof("SMOutgoingMessage") == case
        assert getattr(again, case).instances[0].error.exit_code == 137

    def test_node_config(self):
        for case, kind in [
            ("check_node_config", sm_pb2.CheckNodeConfig),
            ("set_node_config", sm_pb2.SetNodeConfig),
        ]:
            message = sm_pb2.SMIncomingMessages(
                **{case: kind(node_config='{"a": 1}', version="2.0.0")}
            )
            assert _round_trip(message).WhichOneof("SMIncomingMessage") == case
        asked = sm_pb2.SMIncomingMessages(get_node_config_status=sm_pb2.GetNodeConfigStatus())
        assert _round_trip(asked).WhichOneof("SMIncomingMessage") == "get_node_config_status"
        answer = sm_pb2.SMOutgoingMessages(
            node_config_status=sm_pb2.NodeConfigStatus(
                state="failed", version="2.0.0", error=common_pb2.ErrorInfo(aos_code=9)
            )
        )
        assert _round_trip(answer).node_config_status.error.aos_code == 9

    @pytest.mark.parametrize(
        "case, body",
        [
            (
                "system_quota_alert",
                sm_pb2.SystemQuotaAlert(parameter="cpu", value=90, status="raise"),
            ),
            (
                "instance_quota_alert",
                sm_pb2.InstanceQuotaAlert(parameter="ram", value=1, status="fall"),
            ),
            (
                "resource_allocate_alert",
                sm_pb2.ResourceAllocateAlert(resource="gpu", message="busy"),
            ),
            ("system_alert", sm_pb2.SystemAlert(message="disk")),
            ("core_alert", sm_pb2.CoreAlert(core_component="SM", message="restart")),
            ("instance_alert", sm_pb2.InstanceAlert(service_version="1.0.0", message="crashed")),
        ],
    )
    def test_alerts(self, case, body):
        alert = sm_pb2.Alert(**{case: body})
        alert.timestamp.FromDatetime(datetime(2026, 5, 7, 5, 44, 11, tzinfo=UTC))
        again = _round_trip(sm_pb2.SMOutgoingMessages(alert=alert)).alert
        assert again.WhichOneof("AlertItem") == case
        assert again.timestamp.seconds == 1778132651

    def test_blobs_infos(self):
        request = sm_pb2.BlobsInfosRequest(digests=["sha256:" + "11" * 32, "sha256:" + "22" * 32])
        assert list(_round_trip(request).digests) == list(request.digests)
        answer = sm_pb2.BlobsInfos(urls=["https://cm:8443/blobs/sha256:" + "11" * 32])
        assert _round_trip(answer).urls[0].startswith("https://")
