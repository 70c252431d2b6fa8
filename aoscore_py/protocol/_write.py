"""Writing the message dataclasses as JSON objects, in the key order AosCore writes.

AosCore's tests compare the exact bytes of what it sends, key order included, so every writer
builds its dict in wire order. Absent optional values are left out; the few keys AosCore always
writes (`isDeltaInfo`, the three errorInfo keys, `retryAfter`) are always written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from aoscore_py.protocol._values import (
    format_base64,
    format_duration,
    format_hex,
    format_timestamp,
)
from aoscore_py.protocol.messages import (
    Ack,
    AlertRule,
    AlertRules,
    ArchInfo,
    BlobUrlInfo,
    BlobUrls,
    Certificate,
    CertificateChain,
    CpuInfo,
    DecryptInfo,
    DesiredInstance,
    DesiredItem,
    DesiredNodeStatus,
    DesiredStatus,
    DesiredSubject,
    ErrorInfo,
    Header,
    Identity,
    InstancesStatus,
    InstanceStatusInfo,
    ItemStatus,
    Message,
    Nack,
    NodeConfig,
    NodeInfo,
    OsInfo,
    PartitionAlertRule,
    PartitionInfo,
    RequestBlobUrls,
    ResourceInfo,
    ResourceRatios,
    RuntimeInfo,
    SignInfo,
    UnitConfig,
    UnitConfigStatus,
    UnitStatus,
    UpdateState,
)

JsonDict = dict[str, Any]
T = TypeVar("T")


def _put(out: JsonDict, key: str, value: Any) -> None:
    """Set `key` unless the value is absent (None)."""
    if value is not None:
        out[key] = value


def _each(write: Callable[[T], Any], values: Iterable[T]) -> list[Any]:
    return [write(value) for value in values]


def _opt(write: Callable[[T], Any], value: T | None) -> Any:
    return None if value is None else write(value)


def _strs(values: Iterable[str]) -> list[str]:
    return [str(value) for value in values]


def _start(message_type: str, correlation_id: str | None) -> JsonDict:
    out: JsonDict = {"messageType": message_type}
    if correlation_id:
        out["correlationId"] = correlation_id
    return out


# --- shared ---------------------------------------------------------------------------------------


def identity(ident: Identity) -> JsonDict:
    out: JsonDict = {}
    _put(out, "id", ident.id)
    _put(out, "codename", ident.codename)
    _put(out, "type", None if ident.type is None else str(ident.type))
    _put(out, "title", ident.title)
    return out


def error_info(info: ErrorInfo) -> JsonDict:
    return {"aosCode": int(info.aos_code), "exitCode": info.exit_code, "message": info.message}


def header(head: Header) -> JsonDict:
    out: JsonDict = {"version": head.version, "systemId": head.system_id}
    _put(out, "createdAt", _opt(format_timestamp, head.created_at))
    out["txn"] = head.txn
    return out


# --- unit configuration ---------------------------------------------------------------------------


def _rule_body(out: JsonDict, min_timeout: float, low: float, high: float) -> JsonDict:
    if min_timeout > 0:  # AosCore leaves a zero timeout out
        out["minTimeout"] = format_duration(min_timeout)
    out["minThreshold"] = low
    out["maxThreshold"] = high
    return out


def _alert_rule(rule: AlertRule) -> JsonDict:
    return _rule_body({}, rule.min_timeout, rule.min_threshold, rule.max_threshold)


def _partition_alert_rule(rule: PartitionAlertRule) -> JsonDict:
    out = {"name": rule.name}
    return _rule_body(out, rule.min_timeout, rule.min_threshold, rule.max_threshold)


def _alert_rules(rules: AlertRules) -> JsonDict:
    out: JsonDict = {}
    _put(out, "cpu", _opt(_alert_rule, rules.cpu))
    _put(out, "ram", _opt(_alert_rule, rules.ram))
    if rules.partitions:
        out["partitions"] = _each(_partition_alert_rule, rules.partitions)
    _put(out, "download", _opt(_alert_rule, rules.download))
    _put(out, "upload", _opt(_alert_rule, rules.upload))
    return out


def _resource_ratios(ratios: ResourceRatios) -> JsonDict:
    out: JsonDict = {}
    _put(out, "cpu", ratios.cpu)
    _put(out, "ram", ratios.ram)
    _put(out, "storage", ratios.storage)
    _put(out, "state", ratios.state)
    return out


def node_config(config: NodeConfig) -> JsonDict:
    out: JsonDict = {}
    _put(out, "version", config.version)
    out["node"] = identity(config.node)
    _put(out, "nodeGroupSubject", _opt(identity, config.node_group_subject))
    _put(out, "alertRules", _opt(_alert_rules, config.alert_rules))
    _put(out, "resourceRatios", _opt(_resource_ratios, config.resource_ratios))
    if config.labels:
        out["labels"] = _strs(config.labels)
    out["priority"] = config.priority
    return out


def unit_config(config: UnitConfig) -> JsonDict:
    return {
        "formatVersion": config.format_version,
        "version": config.version,
        "nodes": _each(node_config, config.nodes),
    }


# --- desiredStatus --------------------------------------------------------------------------------


def _desired_node(node: DesiredNodeStatus) -> JsonDict:
    return {"item": identity(node.item), "state": str(node.state)}


def _desired_item(item: DesiredItem) -> JsonDict:
    out: JsonDict = {"item": identity(item.item), "version": item.version}
    _put(out, "owner", _opt(identity, item.owner))
    out["indexDigest"] = item.index_digest
    return out


def _desired_instance(instance: DesiredInstance) -> JsonDict:
    return {
        "item": identity(instance.item),
        "subject": identity(instance.subject),
        "priority": instance.priority,
        "numInstances": instance.num_instances,
        "labels": _strs(instance.labels),
    }


def _desired_subject(subject: DesiredSubject) -> JsonDict:
    return {
        "identity": identity(subject.identity),
        "type": str(subject.type),
        "isReportedFromUnit": subject.is_reported_from_unit,
    }


def _certificate(cert: Certificate) -> JsonDict:
    return {"certificate": format_base64(cert.certificate), "fingerprint": cert.fingerprint}


def _certificate_chain(chain: CertificateChain) -> JsonDict:
    return {"name": chain.name, "fingerprints": _strs(chain.fingerprints)}


def desired_status(msg: DesiredStatus) -> JsonDict:
    """As the reference cloud sends it: empty sections are left out."""
    out = _start(msg.MESSAGE_TYPE, msg.correlation_id)
    if msg.nodes:
        out["nodes"] = _each(_desired_node, msg.nodes)
    _put(out, "unitConfig", _opt(unit_config, msg.unit_config))
    if msg.items:
        out["items"] = _each(_desired_item, msg.items)
    if msg.instances:
        out["instances"] = _each(_desired_instance, msg.instances)
    if msg.subjects:
        out["subjects"] = _each(_desired_subject, msg.subjects)
    if msg.certificates:
        out["certificates"] = _each(_certificate, msg.certificates)
    if msg.certificate_chains:
        out["certificateChains"] = _each(_certificate_chain, msg.certificate_chains)
    _put(out, "seq", msg.seq)
    return out


# --- unitStatus -----------------------------------------------------------------------------------


def _unit_config_status(status: UnitConfigStatus) -> JsonDict:
    out: JsonDict = {"version": status.version, "state": str(status.state)}
    _put(out, "errorInfo", _opt(error_info, status.error_info))
    return out


def _os_info(info: OsInfo) -> JsonDict:
    out: JsonDict = {"os": info.os}
    _put(out, "version", info.version)
    if info.features:
        out["features"] = _strs(info.features)
    return out


def _arch_info(info: ArchInfo) -> JsonDict:
    out: JsonDict = {"architecture": info.architecture}
    _put(out, "variant", info.variant)
    return out


def _cpu_info(cpu: CpuInfo) -> JsonDict:
    out: JsonDict = {"modelName": cpu.model_name}
    _put(out, "totalNumCores", cpu.total_num_cores)
    _put(out, "totalNumThreads", cpu.total_num_threads)
    _put(out, "archInfo", _opt(_arch_info, cpu.arch_info))
    _put(out, "maxDmips", cpu.max_dmips)
    return out


def _partition_info(part: PartitionInfo) -> JsonDict:
    out: JsonDict = {"name": part.name}
    if part.types:
        out["types"] = _strs(part.types)
    _put(out, "totalSize", part.total_size)
    return out


def _runtime_info(runtime: RuntimeInfo) -> JsonDict:
    out: JsonDict = {"identity": identity(runtime.identity), "runtimeType": runtime.runtime_type}
    _put(out, "archInfo", _opt(_arch_info, runtime.arch_info))
    _put(out, "osInfo", _opt(_os_info, runtime.os_info))
    _put(out, "maxDmips", runtime.max_dmips)
    _put(out, "allowedDmips", runtime.allowed_dmips)
    _put(out, "totalRam", runtime.total_ram)
    _put(out, "allowedRam", runtime.allowed_ram)
    _put(out, "maxInstances", runtime.max_instances)
    return out


def _resource_info(resource: ResourceInfo) -> JsonDict:
    return {"name": resource.name, "sharedCount": resource.shared_count}


def _node_info(node: NodeInfo) -> JsonDict:
    out: JsonDict = {"identity": identity(node.identity)}
    _put(out, "nodeGroupSubject", _opt(identity, node.node_group_subject))
    _put(out, "maxDmips", node.max_dmips)
    _put(out, "physicalRam", node.physical_ram)
    _put(out, "totalRam", node.total_ram)
    _put(out, "osInfo", _opt(_os_info, node.os_info))
    _put(out, "cpus", _opt(lambda cpus: _each(_cpu_info, cpus), node.cpus))
    _put(out, "attrs", _opt(dict, node.attrs))
    _put(out, "partitions", _opt(lambda parts: _each(_partition_info, parts), node.partitions))
    out["state"] = str(node.state)
    out["isConnected"] = node.is_connected
    _put(out, "runtimes", _opt(lambda runtimes: _each(_runtime_info, runtimes), node.runtimes))
    _put(out, "resources", _opt(lambda res: _each(_resource_info, res), node.resources))
    _put(out, "errorInfo", _opt(error_info, node.error_info))
    return out


def _item_status(status: ItemStatus) -> JsonDict:
    out: JsonDict = {
        "item": identity(status.item),
        "version": status.version,
        "state": str(status.state),
    }
    _put(out, "errorInfo", _opt(error_info, status.error_info))
    return out


def _instance_status(status: InstanceStatusInfo) -> JsonDict:
    out: JsonDict = {
        "node": identity(status.node),
        "runtime": identity(status.runtime),
        "instance": status.instance,
    }
    _put(out, "stateChecksum", status.state_checksum)
    out["state"] = str(status.state)
    _put(out, "errorInfo", _opt(error_info, status.error_info))
    return out


def _instances_status(status: InstancesStatus) -> JsonDict:
    return {
        "item": identity(status.item),
        "subject": identity(status.subject),
        "version": status.version,
        "instances": _each(_instance_status, status.instances),
    }


def unit_status(msg: UnitStatus) -> JsonDict:
    """Sections set to None are left out; `isDeltaInfo` is always written."""
    out = _start(msg.MESSAGE_TYPE, msg.correlation_id)
    out["isDeltaInfo"] = msg.is_delta_info
    sections: tuple[tuple[str, Callable[[Any], JsonDict], tuple[Any, ...] | None], ...] = (
        ("unitConfig", _unit_config_status, msg.unit_config),
        ("nodes", _node_info, msg.nodes),
        ("items", _item_status, msg.items),
        ("instances", _instances_status, msg.instances),
        ("subjects", identity, msg.subjects),
    )
    for key, write, values in sections:
        if values is not None:
            out[key] = _each(write, values)
    _put(out, "bootId", msg.boot_id)
    _put(out, "seq", msg.seq)
    if msg.folded_seqs:
        out["foldedSeqs"] = [[first, last] for first, last in msg.folded_seqs]
    return out


# --- acknowledgements, blobs, instance state ------------------------------------------------------


def ack(msg: Ack) -> JsonDict:
    return _start(msg.MESSAGE_TYPE, msg.correlation_id)


def nack(msg: Nack) -> JsonDict:
    out = _start(msg.MESSAGE_TYPE, msg.correlation_id)
    out["retryAfter"] = msg.retry_after
    _put(out, "errorInfo", _opt(error_info, msg.error_info))
    return out


def request_blob_urls(msg: RequestBlobUrls) -> JsonDict:
    out = _start(msg.MESSAGE_TYPE, msg.correlation_id)
    out["digests"] = _strs(msg.digests)
    _put(out, "bootId", msg.boot_id)
    _put(out, "seq", msg.seq)
    return out


def _decrypt_info(info: DecryptInfo) -> JsonDict:
    return {
        "blockAlg": info.block_alg,
        "blockIv": format_base64(info.block_iv),
        "blockKey": format_base64(info.block_key),
    }


def _sign_info(info: SignInfo) -> JsonDict:
    out: JsonDict = {
        "chainName": info.chain_name,
        "alg": info.alg,
        "value": format_base64(info.value),
        "trustedTimestamp": format_timestamp(info.trusted_timestamp),
    }
    if info.ocsp_values:
        out["ocspValues"] = _strs(info.ocsp_values)
    return out


def _blob_url_info(info: BlobUrlInfo) -> JsonDict:
    out: JsonDict = {
        "digest": info.digest,
        "urls": _strs(info.urls),
        "sha256": format_hex(info.sha256),
        "size": info.size,
    }
    _put(out, "decryptInfo", _opt(_decrypt_info, info.decrypt_info))
    _put(out, "signInfo", _opt(_sign_info, info.sign_info))
    return out


def blob_urls(msg: BlobUrls) -> JsonDict:
    out = _start(msg.MESSAGE_TYPE, msg.correlation_id)
    out["items"] = _each(_blob_url_info, msg.items)
    return out


def update_state(msg: UpdateState) -> JsonDict:
    out: JsonDict = {
        "messageType": msg.MESSAGE_TYPE,
        "item": identity(msg.item),
        "subject": identity(msg.subject),
        "instance": msg.instance,
    }
    _put(out, "stateChecksum", msg.state_checksum)
    out["state"] = msg.state
    return out


WRITERS: dict[type, Callable[[Any], JsonDict]] = {
    DesiredStatus: desired_status,
    UnitStatus: unit_status,
    Ack: ack,
    Nack: nack,
    RequestBlobUrls: request_blob_urls,
    BlobUrls: blob_urls,
    UpdateState: update_state,
    UnitConfig: unit_config,
    NodeConfig: node_config,
}
"""Writers by class, for messages and the two fragments `parse_any` can return."""


def message(msg: Message | UnitConfig | NodeConfig) -> JsonDict:
    write = WRITERS.get(type(msg))
    if write is None:
        raise TypeError(f"not a protocol message: {type(msg).__name__}")
    return write(msg)
