"""Reading decoded JSON into the message dataclasses, following AosCore's reading rules.

Each reader takes a decoded value and its JSON path. What a field requires is decided here, per
context: an identity inside `items` needs an id and a type, a node identity needs a codename, and
so on. Any failure raises `ProtocolError` naming the path. Beyond AosCore, the header version
and every digest are checked where they are read (`rules`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from aoscore_py.errors import AosCode, ProtocolError
from aoscore_py.protocol._json import JsonObject, array_of, as_int, as_str, shorten
from aoscore_py.protocol._values import (
    parse_base64,
    parse_duration,
    parse_hex,
    parse_timestamp,
)
from aoscore_py.protocol.enums import (
    DesiredNodeState,
    InstanceState,
    ItemState,
    ItemType,
    NodeState,
    SubjectType,
    UnitConfigState,
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
from aoscore_py.protocol.rules import check_digest, check_version

MAX_NODE_LABELS = 4
"""AosCore's cMaxNumNodeLabels: more labels on a node config is a noMemory error."""
MAX_LABEL_LENGTH = 64
"""AosCore's cLabelNameLen: a longer node label is a noMemory error."""

_STRICT_DIGESTS: ContextVar[bool] = ContextVar("strict_digests", default=True)
"""Whether digests must follow our rule. A context variable rather than an argument of every
reader: only AosCore's own test data needs it off, and the readers form a deep tree of plain
functions that would otherwise all pass it along."""


@contextmanager
def digest_rule(strict: bool) -> Iterator[None]:
    """Read digests strictly (our rule) or as AosCore does (any string) within the block."""
    token = _STRICT_DIGESTS.set(strict)
    try:
        yield
    finally:
        _STRICT_DIGESTS.reset(token)


def _objects(read: Callable[[JsonObject], Any]) -> Callable[[Any, str], Any]:
    """Adapt a reader of `JsonObject` to the (value, path) converters arrays take."""
    return lambda value, path: read(JsonObject.of(value, path))


def _correlation_id(o: JsonObject) -> str | None:
    # Empty means absent: AosCore never writes an empty correlationId.
    return o.opt_str("correlationId") or None


# --- shared ---------------------------------------------------------------------------------------


def identity(value: Any, path: str, *, need: str = "key", need_type: bool = False) -> Identity:
    """An identity; `need` is "id", "codename" or "key" (either of the two).

    A `type`, when present, must be an `ItemType`: AosCore refuses unknown types too.
    """
    o = JsonObject.of(value, path)
    ident = Identity(
        id=o.opt_str("id"),
        codename=o.opt_str("codename"),
        type=o.req_enum(ItemType, "type") if o.has("type") else None,
        title=o.opt_str("title"),
    )
    if need == "key" and ident.id is None and ident.codename is None:
        raise ProtocolError(o.child("id"), "missing required field (id or codename)")
    if need == "id" and ident.id is None:
        raise ProtocolError(o.child("id"), "missing required field")
    if need == "codename" and ident.codename is None:
        raise ProtocolError(o.child("codename"), "missing required field")
    if need_type and ident.type is None:
        raise ProtocolError(o.child("type"), "missing required field")
    return ident


def _by_id(value: Any, path: str) -> Identity:
    return identity(value, path, need="id")


def _by_codename(value: Any, path: str) -> Identity:
    return identity(value, path, need="codename")


def error_info(o: JsonObject) -> ErrorInfo:
    aos_code = o.opt_int("aosCode", minimum=0)
    return ErrorInfo(
        aos_code=1 if aos_code is None else aos_code,
        exit_code=o.opt_int("exitCode") or 0,
        message=o.opt_str("message") or "",
    )


def _opt_error(o: JsonObject) -> ErrorInfo | None:
    return o.opt("errorInfo", _objects(error_info))


def digest(value: Any, path: str) -> str:
    """A digest: by our rule unless reading AosCore's placeholders (see `digest_rule`)."""
    text = as_str(value, path)
    if _STRICT_DIGESTS.get():
        try:
            check_digest(text)
        except ValueError as exc:
            raise ProtocolError(path, str(exc)) from None
    return text


def header(o: JsonObject) -> Header:
    """The header. Its version is checked first, so that a frame of another version is refused
    for that rather than for whatever else differs; the system id is the caller's to check."""
    version = check_version(o.req_int("version"), o.child("version"))
    return Header(
        version=version,
        system_id=o.req_str("systemId"),
        txn=o.req_str("txn"),
        created_at=o.opt("createdAt", parse_timestamp),
    )


# --- unit configuration ---------------------------------------------------------------------------


def _alert_rule(o: JsonObject) -> AlertRule:
    return AlertRule(
        min_timeout=o.opt("minTimeout", parse_duration) or 0.0,
        min_threshold=o.req_float("minThreshold"),
        max_threshold=o.req_float("maxThreshold"),
    )


def _partition_alert_rule(o: JsonObject) -> PartitionAlertRule:
    return PartitionAlertRule(
        name=o.req_str("name"),
        min_timeout=o.opt("minTimeout", parse_duration) or 0.0,
        min_threshold=o.req_float("minThreshold"),
        max_threshold=o.req_float("maxThreshold"),
    )


def _alert_rules(o: JsonObject) -> AlertRules:
    return AlertRules(
        cpu=o.opt("cpu", _objects(_alert_rule)),
        ram=o.opt("ram", _objects(_alert_rule)),
        partitions=o.array("partitions", _objects(_partition_alert_rule)),
        download=o.opt("download", _objects(_alert_rule)),
        upload=o.opt("upload", _objects(_alert_rule)),
    )


def _resource_ratios(o: JsonObject) -> ResourceRatios:
    return ResourceRatios(
        cpu=o.opt_int("cpu"),
        ram=o.opt_int("ram"),
        storage=o.opt_int("storage"),
        state=o.opt_int("state"),
    )


def _node_labels(o: JsonObject) -> tuple[str, ...]:
    """Node labels within AosCore's static limits, which it reports as noMemory."""
    labels = o.str_array("labels")
    path = o.child("labels")
    if len(labels) > MAX_NODE_LABELS:
        reason = f"too many labels ({len(labels)}, limit {MAX_NODE_LABELS})"
        raise ProtocolError(path, reason, code=AosCode.NO_MEMORY)
    for index, label in enumerate(labels):
        if len(label) > MAX_LABEL_LENGTH:
            reason = f"label too long ({len(label)} characters, limit {MAX_LABEL_LENGTH})"
            raise ProtocolError(f"{path}[{index}]", reason, code=AosCode.NO_MEMORY)
    return labels


def node_config(o: JsonObject) -> NodeConfig:
    return NodeConfig(
        node=o.req("node", _by_codename),
        node_group_subject=o.opt("nodeGroupSubject", identity),
        version=o.opt_str("version"),
        alert_rules=o.opt("alertRules", _objects(_alert_rules)),
        resource_ratios=o.opt("resourceRatios", _objects(_resource_ratios)),
        labels=_node_labels(o),
        priority=o.opt_int("priority") or 0,
    )


def unit_config(o: JsonObject) -> UnitConfig:
    return UnitConfig(
        version=o.req_str("version"),
        format_version=o.req_str("formatVersion"),
        nodes=o.array("nodes", _objects(node_config)),
    )


# --- desiredStatus --------------------------------------------------------------------------------


def _desired_node(o: JsonObject) -> DesiredNodeStatus:
    return DesiredNodeStatus(
        item=o.req("item", _by_codename),
        state=o.req_enum(DesiredNodeState, "state"),
    )


def _desired_item(o: JsonObject) -> DesiredItem:
    return DesiredItem(
        item=o.req("item", lambda v, p: identity(v, p, need="id", need_type=True)),
        version=o.req_str("version"),
        index_digest=o.req("indexDigest", digest),
        owner=o.opt("owner", _by_id),
    )


def _desired_instance(o: JsonObject) -> DesiredInstance:
    return DesiredInstance(
        item=o.req("item", _by_id),
        subject=o.req("subject", _by_id),
        priority=o.opt_int("priority") or 0,
        num_instances=o.opt_int("numInstances", minimum=0) or 0,
        labels=o.str_array("labels"),
    )


def _desired_subject(o: JsonObject) -> DesiredSubject:
    return DesiredSubject(
        identity=o.req("identity", _by_id),
        type=o.req_enum(SubjectType, "type"),
        is_reported_from_unit=o.opt_bool("isReportedFromUnit", False),
    )


def _certificate(o: JsonObject) -> Certificate:
    return Certificate(
        certificate=o.req("certificate", parse_base64),
        fingerprint=o.req_str("fingerprint"),
    )


def _certificate_chain(o: JsonObject) -> CertificateChain:
    return CertificateChain(name=o.req_str("name"), fingerprints=o.str_array("fingerprints"))


def desired_status(o: JsonObject) -> DesiredStatus:
    return DesiredStatus(
        correlation_id=_correlation_id(o),
        nodes=o.array("nodes", _objects(_desired_node)),
        unit_config=o.opt("unitConfig", _objects(unit_config)),
        items=o.array("items", _objects(_desired_item)),
        instances=o.array("instances", _objects(_desired_instance)),
        subjects=o.array("subjects", _objects(_desired_subject)),
        certificates=o.array("certificates", _objects(_certificate)),
        certificate_chains=o.array("certificateChains", _objects(_certificate_chain)),
        seq=o.opt_int("seq", minimum=0),
    )


# --- unitStatus -----------------------------------------------------------------------------------


def _unit_config_status(o: JsonObject) -> UnitConfigStatus:
    return UnitConfigStatus(
        version=o.req_str("version"),
        state=o.req_enum(UnitConfigState, "state"),
        error_info=_opt_error(o),
    )


def _os_info(o: JsonObject) -> OsInfo:
    return OsInfo(
        os=o.req_str("os"), version=o.opt_str("version"), features=o.str_array("features")
    )


def _arch_info(o: JsonObject) -> ArchInfo:
    return ArchInfo(architecture=o.req_str("architecture"), variant=o.opt_str("variant"))


def _cpu_info(o: JsonObject) -> CpuInfo:
    return CpuInfo(
        model_name=o.req_str("modelName"),
        total_num_cores=o.opt_int("totalNumCores", minimum=0),
        total_num_threads=o.opt_int("totalNumThreads", minimum=0),
        arch_info=o.opt("archInfo", _objects(_arch_info)),
        max_dmips=o.opt_int("maxDmips", minimum=0),
    )


def _partition_info(o: JsonObject) -> PartitionInfo:
    return PartitionInfo(
        name=o.req_str("name"),
        types=o.str_array("types"),
        total_size=o.opt_int("totalSize", minimum=0),
    )


def _runtime_info(o: JsonObject) -> RuntimeInfo:
    return RuntimeInfo(
        identity=o.req("identity", _by_codename),
        runtime_type=o.req_str("runtimeType"),
        arch_info=o.opt("archInfo", _objects(_arch_info)),
        os_info=o.opt("osInfo", _objects(_os_info)),
        max_dmips=o.opt_int("maxDmips", minimum=0),
        allowed_dmips=o.opt_int("allowedDmips", minimum=0),
        total_ram=o.opt_int("totalRam", minimum=0),
        allowed_ram=o.opt_int("allowedRam", minimum=0),
        max_instances=o.opt_int("maxInstances", minimum=0),
    )


def _resource_info(o: JsonObject) -> ResourceInfo:
    return ResourceInfo(name=o.req_str("name"), shared_count=o.opt_int("sharedCount") or 0)


def _attrs(value: Any, path: str) -> tuple[tuple[str, str], ...]:
    """Node attributes: a JSON object of strings, kept as ordered pairs."""
    o = JsonObject.of(value, path)
    pairs = []
    for name, item in value.items():
        if not isinstance(name, str):
            raise ProtocolError(path, f"expected string keys, got {type(name).__name__}")
        pairs.append((name, as_str(item, o.child(name))))
    return tuple(pairs)


def _node_info(o: JsonObject) -> NodeInfo:
    return NodeInfo(
        identity=o.req("identity", _by_codename),
        state=o.req_enum(NodeState, "state"),
        is_connected=o.req_bool("isConnected"),
        node_group_subject=o.opt("nodeGroupSubject", identity),
        max_dmips=o.opt_int("maxDmips", minimum=0),
        physical_ram=o.opt_int("physicalRam", minimum=0),
        total_ram=o.opt_int("totalRam", minimum=0),
        os_info=o.opt("osInfo", _objects(_os_info)),
        cpus=o.opt_array("cpus", _objects(_cpu_info)),
        attrs=o.opt("attrs", _attrs),
        partitions=o.opt_array("partitions", _objects(_partition_info)),
        runtimes=o.opt_array("runtimes", _objects(_runtime_info)),
        resources=o.opt_array("resources", _objects(_resource_info)),
        error_info=_opt_error(o),
    )


def _item_status(o: JsonObject) -> ItemStatus:
    return ItemStatus(
        item=o.req("item", identity),
        version=o.req_str("version"),
        state=o.req_enum(ItemState, "state"),
        error_info=_opt_error(o),
    )


def _instance_status(o: JsonObject) -> InstanceStatusInfo:
    return InstanceStatusInfo(
        node=o.req("node", _by_codename),
        runtime=o.req("runtime", _by_codename),
        instance=o.req_int("instance", minimum=0),
        state=o.req_enum(InstanceState, "state"),
        state_checksum=o.opt_str("stateChecksum"),
        error_info=_opt_error(o),
    )


def _instances_status(o: JsonObject) -> InstancesStatus:
    return InstancesStatus(
        item=o.req("item", identity),
        subject=o.req("subject", identity),
        version=o.req_str("version"),
        instances=o.req_array("instances", _objects(_instance_status)),
    )


def unit_status(o: JsonObject) -> UnitStatus:
    return UnitStatus(
        correlation_id=_correlation_id(o),
        is_delta_info=o.opt_bool("isDeltaInfo", False),
        unit_config=o.opt_array("unitConfig", _objects(_unit_config_status)),
        nodes=o.opt_array("nodes", _objects(_node_info)),
        items=o.opt_array("items", _objects(_item_status)),
        instances=o.opt_array("instances", _objects(_instances_status)),
        subjects=o.opt_array("subjects", identity),
        boot_id=o.opt_str("bootId"),
        seq=o.opt_int("seq", minimum=0),
        folded_seqs=o.opt_array("foldedSeqs", _seq_range),
    )


def _seq_range(value: Any, path: str) -> tuple[int, int]:
    """A `[first, last]` pair of seqs, first <= last (our `foldedSeqs` addition)."""
    pair = array_of(lambda v, p: as_int(v, p, minimum=0), value, path)
    if len(pair) != 2 or pair[0] > pair[1]:
        raise ProtocolError(path, "expected [first, last] with first <= last")
    return pair[0], pair[1]


# --- acknowledgements, blobs, instance state ------------------------------------------------------


def ack(o: JsonObject) -> Ack:
    return Ack(correlation_id=_correlation_id(o))


def nack(o: JsonObject) -> Nack:
    retry_after = o.opt_int("retryAfter", minimum=0)
    return Nack(
        correlation_id=_correlation_id(o),
        retry_after=500 if retry_after is None else retry_after,
        error_info=_opt_error(o),
    )


def request_blob_urls(o: JsonObject) -> RequestBlobUrls:
    return RequestBlobUrls(
        correlation_id=_correlation_id(o),
        digests=o.req_array("digests", digest),
        boot_id=o.opt_str("bootId"),
        seq=o.opt_int("seq", minimum=0),
    )


def _decrypt_info(o: JsonObject) -> DecryptInfo:
    return DecryptInfo(
        block_alg=o.req_str("blockAlg"),
        block_iv=o.req("blockIv", parse_base64),
        block_key=o.req("blockKey", parse_base64),
    )


def _sign_info(o: JsonObject) -> SignInfo:
    return SignInfo(
        chain_name=o.req_str("chainName"),
        alg=o.req_str("alg"),
        value=o.req("value", parse_base64),
        trusted_timestamp=o.req("trustedTimestamp", parse_timestamp),
        ocsp_values=o.str_array("ocspValues"),
    )


def _blob_url_info(o: JsonObject) -> BlobUrlInfo:
    return BlobUrlInfo(
        digest=o.req("digest", digest),
        urls=o.req_array("urls", as_str),
        sha256=o.req("sha256", parse_hex),
        size=o.req_int("size", minimum=0),
        decrypt_info=o.opt("decryptInfo", _objects(_decrypt_info)),
        sign_info=o.opt("signInfo", _objects(_sign_info)),
    )


def blob_urls(o: JsonObject) -> BlobUrls:
    return BlobUrls(
        correlation_id=_correlation_id(o),
        items=o.req_array("items", _objects(_blob_url_info)),
    )


def update_state(o: JsonObject) -> UpdateState:
    return UpdateState(
        item=o.req("item", identity),
        subject=o.req("subject", identity),
        instance=o.req_int("instance", minimum=0),
        state=o.req_str("state"),
        state_checksum=o.opt_str("stateChecksum"),
    )


# --- dispatch -------------------------------------------------------------------------------------

READERS: dict[str, Callable[[JsonObject], Message]] = {
    DesiredStatus.MESSAGE_TYPE: desired_status,
    UnitStatus.MESSAGE_TYPE: unit_status,
    Ack.MESSAGE_TYPE: ack,
    Nack.MESSAGE_TYPE: nack,
    RequestBlobUrls.MESSAGE_TYPE: request_blob_urls,
    BlobUrls.MESSAGE_TYPE: blob_urls,
    UpdateState.MESSAGE_TYPE: update_state,
}


def message(o: JsonObject, message_type: str | None) -> Message:
    """A message of the type its `messageType` names, else of `message_type`.

    When both are given they must agree: a stored desired status read back as another type is
    a bug worth failing on.
    """
    path = o.child("messageType")
    found = o.opt_str("messageType")
    if found is not None and message_type is not None and found != message_type:
        raise ProtocolError(path, f"expected {shorten(message_type)}, got {shorten(found)}")
    kind = found if found is not None else message_type
    if kind is None:
        raise ProtocolError(path, "missing required field")
    read = READERS.get(kind)
    if read is None:
        expected = ", ".join(READERS)
        reason = f"unknown message type {shorten(kind)} (expected one of: {expected})"
        raise ProtocolError(path if found is not None else o.path, reason)
    return read(o)
