"""AosCore v7 conformance: every file is read with the facts INDEX.md lists for it.

One test per file, named after it, so a new file without a test fails `test_every_file_has_a_test`.
Unit-to-cloud files must also be written back: the same JSON value, and the same bytes.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from protocol_support import conformance_names, conformance_params, read_conformance

from aoscore_py.errors import AosCode, ProtocolError
from aoscore_py.protocol import (
    Ack,
    AlertRule,
    ArchInfo,
    BlobUrls,
    CpuInfo,
    DesiredNodeState,
    DesiredStatus,
    Envelope,
    ErrorInfo,
    Identity,
    InstanceState,
    ItemState,
    ItemType,
    Nack,
    NodeState,
    OsInfo,
    PartitionInfo,
    RequestBlobUrls,
    ResourceInfo,
    ResourceRatios,
    SubjectType,
    UnitConfig,
    UnitConfigState,
    UnitStatus,
    UpdateState,
    dump_frame,
    dump_message,
    parse_any,
    parse_message,
    parse_node_config,
    parse_unit_config,
    to_json,
)

DIGEST_1 = "sha256:3c3a4604a545cdc127456d94e421cd355bca5b528f4a9c1905b15da2eb4a4c6b"
DIGEST_2 = "sha256:1c3a4604a545cdc127456d94e421cd355bca5b528f4a9c1905b15da2eb4a4c6b"
SHA_HEX = "36f028580bb02cc8272a9a020f4200e346e276ae664e45ee80745574e2f5ab80"
DER = b"der\0certificate\0example\0"
PLACEHOLDER_DIGESTS = "cloud-to-unit-desiredStatus-toFromJSON.json"
"""AosCore's FromJSON accepts its placeholder digests ("sha256:abcdef"); our rule refuses them,
so this file is read with `strict_digests=False`, and the strict refusal is asserted too."""


def parsed(name: str, **kwargs: Any) -> Any:
    return parse_any(read_conformance(name), **kwargs)


def desired(name: str) -> DesiredStatus:
    msg = parsed(name)
    assert isinstance(msg, DesiredStatus)
    return msg


def unit_status(name: str) -> UnitStatus:
    msg = parsed(name)
    assert isinstance(msg, UnitStatus)
    return msg


# --- every file -----------------------------------------------------------------------------------


def test_every_file_has_a_test() -> None:
    names = conformance_names()
    if not names:
        pytest.fail("conformance folder missing")
    module = sys.modules[__name__]
    tested = {
        name[len("test_") :]
        for name in dir(module)
        if name.startswith("test_") and callable(getattr(module, name))
    }
    expected = {name.removesuffix(".json").replace("-", "_") for name in names}
    assert expected - tested == set()


@pytest.mark.parametrize("name", conformance_params("unit-to-cloud-"))
def test_unit_to_cloud_written_back_byte_for_byte(name: str) -> None:
    raw = read_conformance(name)
    msg = parse_any(raw)
    out = dump_frame(msg) if isinstance(msg, Envelope) else dump_message(msg)
    assert orjson.loads(out) == orjson.loads(raw)
    assert out == raw  # all of them are compact, in AosCore's key order


@pytest.mark.parametrize("name", conformance_params("cloud-to-unit-"))
def test_cloud_to_unit_survives_a_round_trip(name: str) -> None:
    hint = "desiredStatus" if name == PLACEHOLDER_DIGESTS else None
    strict = name != PLACEHOLDER_DIGESTS
    msg = parse_any(read_conformance(name), message_type=hint, strict_digests=strict)
    raw = dump_frame(msg) if isinstance(msg, Envelope) else dump_message(msg)
    assert parse_any(raw, strict_digests=strict) == msg


# --- cloud to unit: desiredStatus -----------------------------------------------------------------


def test_cloud_to_unit_desiredStatus_nodes() -> None:
    msg = desired("cloud-to-unit-desiredStatus-nodes.json")
    assert msg.correlation_id == "id"
    assert [(n.item.codename, n.state) for n in msg.nodes] == [
        ("node-1", DesiredNodeState.PROVISIONED),
        ("node-2", DesiredNodeState.PAUSED),
    ]
    assert msg.nodes[0].item.key == "node-1"


def test_cloud_to_unit_desiredStatus_unitConfig() -> None:
    msg = desired("cloud-to-unit-desiredStatus-unitConfig.json")
    config = msg.unit_config
    assert config is not None
    assert (config.version, config.format_version, len(config.nodes)) == ("v1.0.0", "1.0", 2)
    node0, node1 = config.nodes
    assert node0.node.codename == "node-1"
    assert node0.node_group_subject == Identity(codename="main")
    rules = node0.alert_rules
    assert rules is not None
    assert rules.cpu == AlertRule(min_timeout=10.0, min_threshold=10.0, max_threshold=90.0)
    assert rules.ram == AlertRule(min_timeout=5.0, min_threshold=20.0, max_threshold=80.0)
    assert [
        (p.name, p.min_threshold, p.max_threshold, p.min_timeout) for p in rules.partitions
    ] == [
        ("state", 15.0, 85.0, 5.0),
        ("storage", 25.0, 75.0, 5.0),
    ]
    assert rules.download == AlertRule(10.0, 100.0, 100000.0)
    assert rules.upload == AlertRule(5.0, 50.0, 50000.0)
    assert node0.resource_ratios == ResourceRatios(cpu=10, ram=20, storage=30, state=40)
    assert node0.labels == ("label1", "label2")
    assert node0.priority == 10
    assert node1.node.codename == "node-2"
    assert node1.node_group_subject == Identity(codename="secondary")
    assert node1.alert_rules is None
    assert node1.resource_ratios is None
    assert node1.labels == ()
    assert node1.priority == 20


def test_cloud_to_unit_desiredStatus_items() -> None:
    msg = desired("cloud-to-unit-desiredStatus-items.json")
    assert msg.correlation_id is None
    assert len(msg.items) == 2
    first, second = msg.items
    assert (first.item.id, first.item.type) == ("item1", ItemType.SERVICE)
    assert first.owner == Identity(id="owner1")
    assert first.version == "0.0.1"
    assert first.index_digest == "sha256:" + SHA_HEX
    assert (second.item.id, second.item.type) == ("item2", ItemType.COMPONENT)
    assert second.owner == Identity(id="owner2")
    assert second.version == "1.2.3"
    assert second.index_digest == "sha256:" + "abcdef" * 10 + "abcd"


def test_cloud_to_unit_desiredStatus_instances() -> None:
    msg = desired("cloud-to-unit-desiredStatus-instances.json")
    first, second = msg.instances
    assert (first.item.id, first.subject.id) == ("itemId1", "subjectId1")
    assert (first.priority, first.num_instances, first.labels) == (1, 2, ("main",))
    assert (second.item.id, second.subject.id) == ("itemId2", "subjectId2")
    assert (second.priority, second.num_instances, second.labels) == (0, 0, ())


def test_cloud_to_unit_desiredStatus_subjects() -> None:
    msg = desired("cloud-to-unit-desiredStatus-subjects.json")
    assert [(s.identity.id, s.type, s.is_reported_from_unit) for s in msg.subjects] == [
        ("subjectId1", SubjectType.GROUP, False),
        ("subjectId2", SubjectType.USER, False),
    ]


def test_cloud_to_unit_desiredStatus_certificates() -> None:
    msg = desired("cloud-to-unit-desiredStatus-certificates.json")
    (cert,) = msg.certificates
    assert cert.certificate == DER
    assert len(cert.certificate) == 24
    assert cert.fingerprint == "fingerprint"


def test_cloud_to_unit_desiredStatus_certificateChains() -> None:
    msg = desired("cloud-to-unit-desiredStatus-certificateChains.json")
    assert [(c.name, c.fingerprints) for c in msg.certificate_chains] == [
        ("name1", ("fingerprint1", "fingerprint2")),
        ("name2", ("fingerprint3",)),
    ]


def test_cloud_to_unit_desiredStatus_toFromJSON() -> None:
    raw = read_conformance(PLACEHOLDER_DIGESTS)
    with pytest.raises(ProtocolError) as info:
        parse_message(raw)  # stored without messageType: the caller must say what it is
    assert (info.value.path, info.value.reason) == ("$.messageType", "missing required field")

    # Our rule refuses AosCore's placeholder digest, naming the first one.
    with pytest.raises(ProtocolError) as info:
        parse_message(raw, message_type="desiredStatus")
    assert info.value.path == "$.items[0].indexDigest"
    assert info.value.reason == "invalid digest 'sha256:abcdef': sha256 needs 64 hex digits, got 6"
    assert info.value.code == AosCode.INVALID_ARGUMENT

    msg = parse_message(raw, message_type="desiredStatus", strict_digests=False)
    assert isinstance(msg, DesiredStatus)
    assert parse_message(dump_message(msg), strict_digests=False) == msg
    # Our writer adds messageType in front and otherwise matches AosCore's ToJSON byte for byte.
    assert dump_message(msg) == b'{"messageType":"desiredStatus",' + raw[1:]

    assert msg.correlation_id is None
    assert [(n.item.codename, n.state) for n in msg.nodes] == [
        ("node1", DesiredNodeState.PROVISIONED),
        ("node2", DesiredNodeState.PAUSED),
    ]
    config = msg.unit_config
    assert config is not None
    assert (config.format_version, config.version) == ("1.0.0", "2.0.0")
    assert [(n.node.codename, n.node_group_subject, n.priority) for n in config.nodes] == [
        ("node1", Identity(codename="main"), 5),
        ("node2", Identity(codename="secondary"), 10),
    ]
    assert [(i.item.id, i.item.type, i.version, i.owner, i.index_digest) for i in msg.items] == [
        ("item1", ItemType.SERVICE, "1.0.0", Identity(id="owner1"), "sha256:abcdef"),
        ("item2", ItemType.COMPONENT, "2.0.0", Identity(id="owner2"), "sha256:123456"),
    ]
    assert [
        (i.item.id, i.subject.id, i.priority, i.num_instances, i.labels) for i in msg.instances
    ] == [
        ("item1", "subject1", 1, 2, ("main",)),
        ("item2", "subject2", 5, 0, ()),
    ]
    assert [(s.identity.id, s.type, s.is_reported_from_unit) for s in msg.subjects] == [
        ("subject1", SubjectType.USER, True),
        ("subject2", SubjectType.GROUP, False),
    ]
    assert [(c.certificate, c.fingerprint) for c in msg.certificates] == [
        (b"der certificate example", "fingerprint1"),
        (b"another der certificate", "fingerprint2"),
    ]
    assert [(c.name, c.fingerprints) for c in msg.certificate_chains] == [
        ("chain1", ("fingerprint1", "fingerprint2")),
        ("chain2", ("fingerprint3",)),
    ]


# --- cloud to unit: the rest ----------------------------------------------------------------------


def test_cloud_to_unit_ack_fromJSON() -> None:
    assert parsed("cloud-to-unit-ack-fromJSON.json") == Ack(correlation_id="id")


def test_cloud_to_unit_nack_defaultRetryAfter() -> None:
    msg = parsed("cloud-to-unit-nack-defaultRetryAfter.json")
    assert msg == Nack(correlation_id="id", retry_after=500)


def test_cloud_to_unit_nack_customRetryAfter() -> None:
    msg = parsed("cloud-to-unit-nack-customRetryAfter.json")
    assert msg == Nack(correlation_id="id", retry_after=224)


def test_cloud_to_unit_blobUrls_basic() -> None:
    msg = parsed("cloud-to-unit-blobUrls-basic.json")
    assert isinstance(msg, BlobUrls)
    assert msg.correlation_id == "id"
    (blob,) = msg.items
    assert blob.digest == DIGEST_1
    assert blob.urls == ("http://example.com/image1.bin", "http://backup.example.com/image1.bin")
    assert blob.sha256 == bytes.fromhex(SHA_HEX)
    assert len(blob.sha256) == 32
    assert blob.size == 1000
    assert blob.decrypt_info is not None
    assert blob.decrypt_info.block_alg == "AES256/CBC/pkcs7"
    assert blob.decrypt_info.block_iv == b"16 bytes iv  str"
    assert blob.decrypt_info.block_key == b"16 bytes key str"
    sign = blob.sign_info
    assert sign is not None
    assert (sign.chain_name, sign.alg, sign.value) == ("chainName", "RSA/SHA256", DER)
    assert sign.trusted_timestamp == datetime(2023, 10, 1, 12, 0, 0, tzinfo=UTC)
    assert sign.ocsp_values == ("ocspValue1", "ocspValue2")


def test_cloud_to_unit_ack_envelope() -> None:
    env = parsed("cloud-to-unit-ack-envelope.json")
    assert isinstance(env, Envelope)
    assert env.header.version == 7
    assert env.header.system_id == "test_system_id"
    assert env.header.txn == "fb6e8461-2601-4f9a-8957-7ab4e52f304c"
    assert env.header.created_at is None
    assert env.data == Ack()


def test_cloud_to_unit_blobUrls_envelope() -> None:
    env = parsed("cloud-to-unit-blobUrls-envelope.json")
    assert isinstance(env, Envelope)
    assert env.header.txn == "f2df3016-de31-46e6-9ce8-9cde4ed7849f"
    msg = env.data
    assert isinstance(msg, BlobUrls)
    assert msg.correlation_id == "2a05b9cc-32fb-41b6-a099-0fca3bb39ce2"
    (blob,) = msg.items
    assert blob.digest == DIGEST_1
    assert len(blob.urls) == 2
    assert blob.decrypt_info is not None
    assert blob.decrypt_info.block_iv == b"blockIv"  # 7 bytes: the IV length is not checked
    assert blob.sign_info is not None
    assert blob.sign_info.value == b"value"


def test_cloud_to_unit_updateState_envelope() -> None:
    env = parsed("cloud-to-unit-updateState-envelope.json")
    assert isinstance(env, Envelope)
    assert env.header.system_id == "test_system_id"  # the key is "systemID"
    assert env.header.created_at is None
    assert env.data == UpdateState(
        item=Identity(id="itemID"),
        subject=Identity(id="subjectID"),
        instance=0,
        state="test_state",
        state_checksum="746573745f636865636b73756d",
    )
    assert bytes.fromhex(env.data.state_checksum or "") == b"test_checksum"


# --- fragments ------------------------------------------------------------------------------------


def test_fragment_unitConfig_full() -> None:
    raw = read_conformance("fragment-unitConfig-full.json")
    config = parse_any(raw, message_type="unitConfig")
    assert isinstance(config, UnitConfig)
    assert config == parse_unit_config(raw)
    assert (config.version, config.format_version, len(config.nodes)) == ("2.0.0", "7", 2)
    node1, node2 = config.nodes
    assert (node1.node.codename, node1.version) == ("node-1", "1.0.0")
    assert node1.node_group_subject == Identity(codename="mainType")
    rules = node1.alert_rules
    assert rules is not None
    assert rules.ram == AlertRule(1.0, 0.1, 0.2)
    assert rules.cpu == AlertRule(2.0, 0.3, 0.4)
    assert [
        (p.name, p.min_timeout, p.min_threshold, p.max_threshold) for p in rules.partitions
    ] == [
        ("partition1", 3.0, 0.5, 0.6),
        ("partition2", 4.0, 0.6, 0.7),
    ]
    assert rules.download == AlertRule(5.0, 100.0, 200.0)
    assert rules.upload == AlertRule(6.0, 300.0, 400.0)
    assert node1.resource_ratios == ResourceRatios(cpu=50, ram=51, storage=52, state=53)
    assert (node1.labels, node1.priority) == (("mainNode",), 1)
    assert (node2.node.codename, node2.version) == ("node-2", "1.0.0")
    assert node2.node_group_subject == Identity(codename="secondaryType")
    assert (node2.labels, node2.priority) == (("secondaryNode",), 2)
    assert (node2.alert_rules, node2.resource_ratios) == (None, None)
    assert parse_unit_config(to_json(config)) == config


def test_invalid_nodeConfig_labelOverflow() -> None:
    raw = read_conformance("invalid-nodeConfig-labelOverflow.json")
    for parse in (parse_node_config, lambda r: parse_any(r, message_type="nodeConfig")):
        with pytest.raises(ProtocolError) as info:
            parse(raw)
        assert info.value.code == AosCode.NO_MEMORY
        assert info.value.path == "$.labels[0]"
        assert info.value.reason == "label too long (67 characters, limit 64)"


# --- unit to cloud --------------------------------------------------------------------------------


def test_unit_to_cloud_unitStatus_unitConfig() -> None:
    msg = unit_status("unit-to-cloud-unitStatus-unitConfig.json")
    assert (msg.correlation_id, msg.is_delta_info) == ("id", False)
    assert msg.unit_config is not None
    assert [(u.version, u.state, u.error_info) for u in msg.unit_config] == [
        ("0.0.1", UnitConfigState.FAILED, ErrorInfo(1, 0, "error message")),
        ("0.0.2", UnitConfigState.INSTALLED, None),
    ]
    assert (msg.nodes, msg.items, msg.instances, msg.subjects) == (None, None, None, None)


def test_unit_to_cloud_unitStatus_nodes() -> None:
    msg = unit_status("unit-to-cloud-unitStatus-nodes.json")
    assert msg.nodes is not None
    node1, node2 = msg.nodes
    linux = OsInfo(os="Linux", version="5.10", features=("feature1", "feature2"))
    x86 = ArchInfo(architecture="x86_64", variant="variant1")
    assert node1.identity == Identity(codename="nodeID1", title="title1")
    assert node1.node_group_subject == Identity(codename="type1")
    assert (node1.max_dmips, node1.physical_ram, node1.total_ram) == (10000, 8096, 16384)
    assert node1.os_info == linux
    assert node1.cpus == (CpuInfo("Intel Xeon", 8, 16, x86, 5000),)
    assert node1.attrs == (("attr1", "value1"), ("attr2", "value2"))
    assert node1.partitions == (PartitionInfo("part1", ("type1", "type2"), 1073741824),)
    assert (node1.state, node1.is_connected) == (NodeState.PROVISIONED, True)
    assert node1.runtimes is not None
    (runtime,) = node1.runtimes
    assert (runtime.identity.codename, runtime.runtime_type) == ("runtimeID1", "type1")
    assert (runtime.arch_info, runtime.os_info) == (x86, linux)
    assert (runtime.max_dmips, runtime.allowed_dmips) == (2000, 1000)
    assert (runtime.total_ram, runtime.allowed_ram, runtime.max_instances) == (4096, 2048, 10)
    assert node1.resources == (ResourceInfo("resourceID1", 1), ResourceInfo("resourceID2", 2))
    assert node1.error_info is None
    assert node2.identity == Identity(codename="nodeID2", title="title2")
    assert node2.node_group_subject == Identity(codename="type2")
    assert (node2.physical_ram, node2.cpus, node2.attrs, node2.partitions) == (None,) * 4
    assert (node2.state, node2.is_connected) == (NodeState.ERROR, False)
    assert node2.error_info == ErrorInfo(1, 0, "")
    assert to_json(msg)["nodes"][0]["attrs"] == {"attr1": "value1", "attr2": "value2"}


def test_unit_to_cloud_unitStatus_items() -> None:
    msg = unit_status("unit-to-cloud-unitStatus-items.json")
    assert msg.items is not None
    assert [(i.item, i.version, i.state, i.error_info) for i in msg.items] == [
        (Identity(id="itemID1", type="service"), "version1", ItemState.DOWNLOADING, None),
        (Identity(id="itemID2", type="service"), "version1", ItemState.INSTALLED, None),
        (
            Identity(id="itemID3", type="component"),
            "version1",
            ItemState.FAILED,
            ErrorInfo(1, 0, "test error"),
        ),
    ]


def test_unit_to_cloud_unitStatus_preinstalledItems() -> None:
    msg = unit_status("unit-to-cloud-unitStatus-preinstalledItems.json")
    assert msg.items is not None
    third = msg.items[2]
    assert third.item == Identity(codename="itemID3", type="component")
    assert third.item.id is None
    assert third.item.key == "itemID3"
    assert (third.state, third.error_info) == (ItemState.FAILED, None)


def test_unit_to_cloud_unitStatus_instances() -> None:
    msg = unit_status("unit-to-cloud-unitStatus-instances.json")
    assert msg.instances is not None
    group1, group2 = msg.instances
    assert (group1.item, group1.subject, group1.version) == (
        Identity(id="itemID1", type="service"),
        Identity(id="subjectID1"),
        "version1",
    )
    first, second = group1.instances
    assert (first.node.codename, first.runtime.codename, first.instance) == (
        "nodeID1",
        "runtimeID1",
        1,
    )
    assert (first.state_checksum, first.state, first.error_info) == (
        "12345678",
        InstanceState.ACTIVE,
        None,
    )
    assert bytes.fromhex(first.state_checksum or "") == b"\x12\x34\x56\x78"
    assert (second.instance, second.state, second.state_checksum) == (
        2,
        InstanceState.FAILED,
        None,
    )
    assert second.error_info == ErrorInfo(1, 0, "")
    assert (group2.item, group2.subject, group2.version) == (
        Identity(id="itemID2", type="component"),
        Identity(id="subjectID2"),
        "version2",
    )
    (only,) = group2.instances
    assert (only.node.codename, only.runtime.codename, only.instance, only.state) == (
        "nodeID2",
        "runtimeID2",
        1,
        InstanceState.ACTIVATING,
    )


def test_unit_to_cloud_unitStatus_preinstalledInstances() -> None:
    msg = unit_status("unit-to-cloud-unitStatus-preinstalledInstances.json")
    assert msg.instances is not None
    group2 = msg.instances[1]
    assert group2.item == Identity(codename="itemID2", type="component")
    assert group2.subject == Identity(codename="subjectID2")
    assert (group2.item.key, group2.subject.key) == ("itemID2", "subjectID2")


def test_unit_to_cloud_unitStatus_subjects() -> None:
    msg = unit_status("unit-to-cloud-unitStatus-subjects.json")
    assert msg.subjects == (Identity(codename="subject1"), Identity(codename="subject2"))


def test_unit_to_cloud_unitStatus_deltaItems() -> None:
    msg = unit_status("unit-to-cloud-unitStatus-deltaItems.json")
    assert (msg.correlation_id, msg.is_delta_info) == (None, True)
    assert msg.items is not None
    assert [(i.item.id, i.item.type, i.version, i.state) for i in msg.items] == [
        ("item3", ItemType.SERVICE, "1.0.0", ItemState.INSTALLED),
        ("item4", ItemType.SERVICE, "1.0.0", ItemState.INSTALLED),
    ]
    assert (msg.unit_config, msg.nodes, msg.instances, msg.subjects) == (None,) * 4


def test_unit_to_cloud_unitStatus_deltaSubjects() -> None:
    msg = unit_status("unit-to-cloud-unitStatus-deltaSubjects.json")
    assert msg == UnitStatus(
        is_delta_info=True,
        subjects=(Identity(codename="subject4"), Identity(codename="subject5")),
    )


def test_unit_to_cloud_requestBlobUrls_basic() -> None:
    msg = parsed("unit-to-cloud-requestBlobUrls-basic.json")
    assert msg == RequestBlobUrls(correlation_id="id", digests=(DIGEST_1, DIGEST_2))


def test_unit_to_cloud_requestBlobUrls_envelope() -> None:
    raw = read_conformance("unit-to-cloud-requestBlobUrls-envelope.json")
    env = parse_any(raw)
    assert isinstance(env, Envelope)
    assert env.header.txn == "fb6e8461-2601-4f9a-8957-7ab4e52f304c"
    assert env.header.created_at == datetime(2026, 5, 7, 5, 44, 11, 61622, tzinfo=UTC)
    assert env.data == RequestBlobUrls(
        correlation_id="2a05b9cc-32fb-41b6-a099-0fca3bb39ce2", digests=(DIGEST_1,)
    )
    assert list(orjson.loads(raw)["header"]) == ["version", "systemId", "createdAt", "txn"]


def test_unit_to_cloud_ack_toJSON() -> None:
    assert dump_message(Ack(correlation_id="id")) == read_conformance(
        "unit-to-cloud-ack-toJSON.json"
    )


def test_unit_to_cloud_nack_toJSON() -> None:
    raw = read_conformance("unit-to-cloud-nack-toJSON.json")
    assert parse_any(raw) == Nack(correlation_id="id", retry_after=100)
    assert dump_message(Nack(correlation_id="id", retry_after=100)) == raw


def test_unit_to_cloud_ack_envelope() -> None:
    env = parsed("unit-to-cloud-ack-envelope.json")
    assert isinstance(env, Envelope)
    assert env.data == Ack()
    assert env.header.txn == "f2df3016-de31-46e6-9ce8-9cde4ed7849f"
    assert to_json(env.data) == {"messageType": "ack"}
