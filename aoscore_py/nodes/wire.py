"""Between the SM link's messages (AosCore's `servicemanager.v5`) and our types: pure functions.

The CM and the SM never fill or read a protobuf message field by field; they call these, so the
rules AosCore applies on the wire live in one place (docs/sm-protocol.md):

- An instance is a `common.v2.InstanceIdent`: item id, subject id and index, which are our
  `InstanceKey`, plus the item type (`service` or `component`, the only two the link knows) and
  AosCore's preinstalled flag, which the key leaves out.
- A state is AosCore's string, the same words as our enums. A state we do not know is refused
  with a `ProtocolError` naming the field, never guessed.
- An error is a `common.v2.ErrorInfo`. AosCore writes one on every status, with aos_code 0 for
  "no error", so aos_code 0 reads as no error whatever the message says, and we write none.
- proto3 cannot tell 0 from "not set" for a number: 0 DMIPS, RAM or max instances reads as not
  given (None), as AosCore's CM reads them, and None is written as 0.

A function that makes a whole stream message (`sm_info`, `update_instances`...) returns it in its
envelope, `SMOutgoingMessages` or `SMIncomingMessages`, ready for `write`.

What the other side sent that we cannot accept raises `ProtocolError` (a `RemoteError`); a value
of ours that the wire cannot carry raises `LocalError` with the code to report it under.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from ..errors import AosCode, LocalError, ProtocolError
from ..protocol import (
    ArchInfo,
    ErrorInfo,
    Identity,
    InstanceState,
    OsInfo,
    ResourceInfo,
    RuntimeInfo,
    UnitConfigState,
    UnitConfigStatus,
    parse_node_config,
)
from .contract import ImageLayout, InstanceKey, InstanceSpec, InstanceStatus
from .proto import common_pb2, sm_pb2

DOCKER_RUNTIME = "docker"
"""The id (and type) of the one runtime our SM offers: Docker on its node."""

_ITEM_TYPES = {"service": common_pb2.SERVICE, "component": common_pb2.COMPONENT}
_ITEM_TYPE_NAMES = {number: name for name, number in _ITEM_TYPES.items()}
_UINT64_MAX = 2**64 - 1


@dataclass(frozen=True)
class InstanceRequest:
    """One instance an `UpdateInstances` asks the SM to run, in our types.

    The wire names the image by its manifest digest alone: the SM fetches that manifest from the
    CM's blob server and then makes the contract's `InstanceSpec` with `spec`.
    """

    key: InstanceKey
    item_type: str
    version: str
    manifest_digest: str
    runtime_id: str
    priority: int = 0
    preinstalled: bool = False
    owner_id: str = ""
    uid: int = 0
    gid: int = 0
    storage_path: str = ""
    state_path: str = ""
    env_vars: tuple[tuple[str, str], ...] = ()

    def spec(self, image: ImageLayout) -> InstanceSpec:
        """The contract's spec for this instance, once its image layout is known.

        Raises:
            LocalError: `image` is another manifest's layout (a bug of the caller).
        """
        if image.manifest_digest != self.manifest_digest:
            raise LocalError(
                f"instance {self.key}: layout of {image.manifest_digest}, "
                f"but the CM asked for {self.manifest_digest}"
            )
        return InstanceSpec(self.key, self.item_type, self.version, image, self.priority)


@dataclass(frozen=True)
class NodeConfigRequest:
    """What a `CheckNodeConfig` or `SetNodeConfig` carries: AosCore's node config JSON (the unit
    config's entry for the node) and the unit config's version, which becomes the node's."""

    version: str
    config_json: str


@dataclass(frozen=True)
class NodeRuntimes:
    """What an SM says about its node in `SMInfo`: who it is and what it can run."""

    node_id: str
    runtimes: tuple[RuntimeInfo, ...]
    resources: tuple[ResourceInfo, ...] = ()


# -- instance identities ---------------------------------------------------------------------


def instance_ident(
    key: InstanceKey, *, item_type: str = "service", preinstalled: bool = False
) -> common_pb2.InstanceIdent:
    """The wire identity of instance `key`.

    Raises:
        LocalError: the item type is neither service nor component (notSupported), or the
            index is negative (invalidArgument).
    """
    if item_type not in _ITEM_TYPES:
        raise LocalError(
            f"instance {key}: item type {item_type!r} cannot run on a node "
            f"(the SM link knows {', '.join(_ITEM_TYPES)})",
            code=AosCode.NOT_SUPPORTED,
        )
    _check_uint64(key.instance, f"instance {key}: index")
    return common_pb2.InstanceIdent(
        item_id=key.item_id,
        subject_id=key.subject_id,
        instance=key.instance,
        type=_ITEM_TYPES[item_type],
        preinstalled=preinstalled,
    )


def instance_key(ident: common_pb2.InstanceIdent, *, path: str = "InstanceIdent") -> InstanceKey:
    """Our key for a wire identity; its type and preinstalled flag are not part of it.

    Raises:
        ProtocolError: the item id is empty.
    """
    if not ident.item_id:
        raise ProtocolError(f"{path}.item_id", "is empty")
    return InstanceKey(ident.item_id, ident.subject_id, ident.instance)


def item_type_of(ident: common_pb2.InstanceIdent, *, path: str = "InstanceIdent") -> str:
    """The item type an identity carries: `service` or `component`.

    Raises:
        ProtocolError: a type number this version of the link does not define.
    """
    try:
        return _ITEM_TYPE_NAMES[ident.type]
    except KeyError:
        raise ProtocolError(f"{path}.type", f"unknown item type {ident.type}") from None


# -- errors ----------------------------------------------------------------------------------


def error_info(error: ErrorInfo) -> common_pb2.ErrorInfo:
    """The wire form of an errorInfo."""
    return common_pb2.ErrorInfo(
        aos_code=error.aos_code, exit_code=error.exit_code, message=error.message
    )


def error_from_proto(error: common_pb2.ErrorInfo) -> ErrorInfo | None:
    """Our errorInfo for a wire one; None when it says no error (aos_code 0), as AosCore reads
    it. An absent field reads as the default message, aos_code 0, so it is None too."""
    if error.aos_code == AosCode.NONE:
        return None
    return ErrorInfo(aos_code=error.aos_code, exit_code=error.exit_code, message=error.message)


# -- CM -> SM: what to run -------------------------------------------------------------------


def instance_info(
    spec: InstanceSpec,
    *,
    runtime_id: str = DOCKER_RUNTIME,
    preinstalled: bool = False,
    owner_id: str = "",
    uid: int = 0,
    gid: int = 0,
    storage_path: str = "",
    state_path: str = "",
    env_vars: Sequence[tuple[str, str]] = (),
) -> sm_pb2.InstanceInfo:
    """The `InstanceInfo` that asks a node to run `spec` on runtime `runtime_id`.

    Our specs carry no owner, uid/gid, storage or state paths, env vars or monitoring rules:
    AosCore's SM reads the defaults (empty, 0) as "none".

    Raises:
        LocalError: the item type cannot run on a node, or the index or priority is negative.
    """
    _check_uint64(spec.priority, f"instance {spec.key}: priority")
    return sm_pb2.InstanceInfo(
        instance=instance_ident(spec.key, item_type=spec.item_type, preinstalled=preinstalled),
        version=spec.version,
        manifest_digest=spec.image.manifest_digest,
        owner_id=owner_id,
        runtime_id=runtime_id,
        uid=uid,
        gid=gid,
        priority=spec.priority,
        storage_path=storage_path,
        state_path=state_path,
        env_vars=[sm_pb2.EnvVarInfo(name=name, value=value) for name, value in env_vars],
    )


def update_instances(
    start: Iterable[InstanceSpec],
    stop: Iterable[InstanceKey],
    *,
    runtime_id: str = DOCKER_RUNTIME,
    item_types: Mapping[InstanceKey, str] | None = None,
) -> sm_pb2.SMIncomingMessages:
    """The `UpdateInstances` that makes a node run exactly `start`, and stop `stop`.

    `start` is every instance the node should run, not only the new ones: AosCore's CM sends
    it so, and our SM treats it as the whole wanted set (level-triggered). `item_types` gives
    the item type of a stopped instance when it is not `service`.
    """
    types = item_types or {}
    return sm_pb2.SMIncomingMessages(
        update_instances=sm_pb2.UpdateInstances(
            start_instances=[instance_info(spec, runtime_id=runtime_id) for spec in start],
            stop_instances=[
                instance_ident(key, item_type=types.get(key, "service")) for key in stop
            ],
        )
    )


def instance_request(info: sm_pb2.InstanceInfo, *, path: str = "InstanceInfo") -> InstanceRequest:
    """What an `InstanceInfo` asks of the SM, in our types.

    Raises:
        ProtocolError: no item id, an unknown item type, or no manifest digest.
    """
    if not info.manifest_digest:
        raise ProtocolError(f"{path}.manifest_digest", "is empty")
    return InstanceRequest(
        key=instance_key(info.instance, path=f"{path}.instance"),
        item_type=item_type_of(info.instance, path=f"{path}.instance"),
        version=info.version,
        manifest_digest=info.manifest_digest,
        runtime_id=info.runtime_id,
        priority=info.priority,
        preinstalled=info.instance.preinstalled,
        owner_id=info.owner_id,
        uid=info.uid,
        gid=info.gid,
        storage_path=info.storage_path,
        state_path=info.state_path,
        env_vars=tuple((env.name, env.value) for env in info.env_vars),
    )


def update_request(
    update: sm_pb2.UpdateInstances,
) -> tuple[list[InstanceRequest], list[InstanceKey]]:
    """The instances an `UpdateInstances` wants running, and those it names to stop.

    Raises:
        ProtocolError: any entry is unreadable; the whole message is refused, so that a node
            never runs half of what the CM wants.
    """
    start = [
        instance_request(info, path=f"UpdateInstances.start_instances[{i}]")
        for i, info in enumerate(update.start_instances)
    ]
    stop = [
        instance_key(ident, path=f"UpdateInstances.stop_instances[{i}]")
        for i, ident in enumerate(update.stop_instances)
    ]
    return start, stop


# -- SM -> CM: how instances run -------------------------------------------------------------


def instance_status(
    status: InstanceStatus,
    *,
    manifest_digest: str = "",
    item_type: str = "service",
    preinstalled: bool = False,
) -> sm_pb2.InstanceStatus:
    """The wire status of one instance; the node is the link's, so it is not written."""
    message = sm_pb2.InstanceStatus(
        instance=instance_ident(status.key, item_type=item_type, preinstalled=preinstalled),
        version=status.version,
        runtime_id=status.runtime,
        manifest_digest=manifest_digest,
        state=str(status.state),
    )
    if status.error is not None:
        message.error.CopyFrom(error_info(status.error))
    return message


def instance_status_from_proto(
    message: sm_pb2.InstanceStatus, *, node: str, path: str = "InstanceStatus"
) -> InstanceStatus:
    """Our status of one instance that node `node` reports.

    Its manifest digest, env var statuses, item type and preinstalled flag have no place in
    our status and are dropped.

    Raises:
        ProtocolError: no item id, or a state AosCore does not define.
    """
    try:
        state = InstanceState(message.state)
    except ValueError:
        raise ProtocolError(
            f"{path}.state",
            f"unknown instance state {message.state!r} "
            f"(expected one of {', '.join(s.value for s in InstanceState)})",
        ) from None
    return InstanceStatus(
        key=instance_key(message.instance, path=f"{path}.instance"),
        version=message.version,
        node=node,
        state=state,
        error=error_from_proto(message.error),
        runtime=message.runtime_id,
    )


def instance_statuses_from_proto(
    message: sm_pb2.NodeInstancesStatus | sm_pb2.UpdateInstancesStatus, *, node: str
) -> list[InstanceStatus]:
    """Every status in a `NodeInstancesStatus` or `UpdateInstancesStatus` from node `node`.

    Raises:
        ProtocolError: any status is unreadable (the whole message is refused).
    """
    name = message.DESCRIPTOR.name
    return [
        instance_status_from_proto(status, node=node, path=f"{name}.instances[{i}]")
        for i, status in enumerate(message.instances)
    ]


def node_instances_status(
    statuses: Iterable[InstanceStatus],
    *,
    manifest_digests: Mapping[InstanceKey, str] | None = None,
    item_types: Mapping[InstanceKey, str] | None = None,
) -> sm_pb2.SMOutgoingMessages:
    """`NodeInstancesStatus`: every instance the node runs (after SMInfo, and on any change)."""
    instances = _instance_statuses(statuses, manifest_digests, item_types)
    return sm_pb2.SMOutgoingMessages(
        node_instances_status=sm_pb2.NodeInstancesStatus(instances=instances)
    )


def update_instances_status(
    statuses: Iterable[InstanceStatus],
    *,
    manifest_digests: Mapping[InstanceKey, str] | None = None,
    item_types: Mapping[InstanceKey, str] | None = None,
) -> sm_pb2.SMOutgoingMessages:
    """`UpdateInstancesStatus`: the answer to one UpdateInstances."""
    instances = _instance_statuses(statuses, manifest_digests, item_types)
    return sm_pb2.SMOutgoingMessages(
        update_instances_status=sm_pb2.UpdateInstancesStatus(instances=instances)
    )


def instance_alert(
    key: InstanceKey, version: str, message: str, *, at: datetime, item_type: str = "service"
) -> sm_pb2.SMOutgoingMessages:
    """An `InstanceAlert` about instance `key` (a crash, a restart with backoff) raised `at`."""
    alert = sm_pb2.Alert(
        instance_alert=sm_pb2.InstanceAlert(
            instance=instance_ident(key, item_type=item_type),
            service_version=version,
            message=message,
        )
    )
    alert.timestamp.FromDatetime(at)
    return sm_pb2.SMOutgoingMessages(alert=alert)


def connection_status(connected: bool) -> sm_pb2.SMIncomingMessages:
    """`ConnectionStatus`: whether the CM is connected to the cloud."""
    cloud = sm_pb2.CONNECTED if connected else sm_pb2.DISCONNECTED
    return sm_pb2.SMIncomingMessages(connection_status=sm_pb2.ConnectionStatus(cloud_status=cloud))


# -- SM -> CM: the node ----------------------------------------------------------------------


def sm_info(
    node_id: str, runtimes: Iterable[RuntimeInfo], resources: Iterable[ResourceInfo] = ()
) -> sm_pb2.SMOutgoingMessages:
    """The `SMInfo` an SM sends first on every connection."""
    return sm_pb2.SMOutgoingMessages(
        sm_info=sm_pb2.SMInfo(
            node_id=node_id,
            runtimes=[_runtime_info(runtime) for runtime in runtimes],
            resources=[
                sm_pb2.ResourceInfo(name=r.name, shared_count=r.shared_count) for r in resources
            ],
        )
    )


def node_runtimes(info: sm_pb2.SMInfo) -> NodeRuntimes:
    """What an `SMInfo` says, in our types; a runtime's id becomes its identity's codename.

    Raises:
        ProtocolError: no node id, or a runtime without an id.
    """
    if not info.node_id:
        raise ProtocolError("SMInfo.node_id", "is empty")
    runtimes = []
    for i, runtime in enumerate(info.runtimes):
        if not runtime.runtime_id:
            raise ProtocolError(f"SMInfo.runtimes[{i}].runtime_id", "is empty")
        runtimes.append(_runtime_from_proto(runtime))
    resources = tuple(ResourceInfo(r.name, r.shared_count) for r in info.resources)
    return NodeRuntimes(info.node_id, tuple(runtimes), resources)


def get_node_config_status() -> sm_pb2.SMIncomingMessages:
    """`GetNodeConfigStatus`: which node config the node has (it answers `NodeConfigStatus`)."""
    return sm_pb2.SMIncomingMessages(get_node_config_status=sm_pb2.GetNodeConfigStatus())


def check_node_config(node_id: str, version: str, config_json: bytes) -> sm_pb2.SMIncomingMessages:
    """`CheckNodeConfig`: may node `node_id` take this node config at unit config `version`?
    The node answers `NodeConfigStatus` with the version checked and, if it refuses, the error.

    Raises:
        LocalError: invalidArgument: `config_json` is no UTF-8 node config naming `node_id`
            (a bug of the caller: the node would only refuse it).
    """
    text = _node_config_text(node_id, config_json)
    return sm_pb2.SMIncomingMessages(
        check_node_config=sm_pb2.CheckNodeConfig(node_config=text, version=version)
    )


def set_node_config(node_id: str, version: str, config_json: bytes) -> sm_pb2.SMIncomingMessages:
    """`SetNodeConfig`: node `node_id` installs this node config at unit config `version`, and
    answers `NodeConfigStatus` (`installed`, or the error).

    Raises:
        LocalError: as `check_node_config`.
    """
    text = _node_config_text(node_id, config_json)
    return sm_pb2.SMIncomingMessages(
        set_node_config=sm_pb2.SetNodeConfig(node_config=text, version=version)
    )


def node_config_request(
    message: sm_pb2.CheckNodeConfig | sm_pb2.SetNodeConfig,
) -> NodeConfigRequest:
    """What a check or set asks of the SM; the SM itself decides whether the JSON is valid."""
    return NodeConfigRequest(message.version, message.node_config)


def node_config_status(status: UnitConfigStatus) -> sm_pb2.SMOutgoingMessages:
    """The `NodeConfigStatus` that answers GetNodeConfigStatus, CheckNodeConfig and
    SetNodeConfig."""
    message = sm_pb2.NodeConfigStatus(state=str(status.state), version=status.version)
    if status.error_info is not None:
        message.error.CopyFrom(error_info(status.error_info))
    return sm_pb2.SMOutgoingMessages(node_config_status=message)


def node_config_status_from_proto(message: sm_pb2.NodeConfigStatus) -> UnitConfigStatus:
    """Our unit config status for what a node reports of its node config.

    Raises:
        ProtocolError: a state AosCore does not define.
    """
    try:
        state = UnitConfigState(message.state)
    except ValueError:
        raise ProtocolError(
            "NodeConfigStatus.state",
            f"unknown node config state {message.state!r} "
            f"(expected one of {', '.join(s.value for s in UnitConfigState)})",
        ) from None
    return UnitConfigStatus(message.version, state, error_from_proto(message.error))


# -- helpers ---------------------------------------------------------------------------------


def _node_config_text(node_id: str, config_json: bytes) -> str:
    """The node config as the message's string field, once it reads and names `node_id`."""
    try:
        text = config_json.decode("utf-8")
        config = parse_node_config(text)
    except (UnicodeDecodeError, ProtocolError) as exc:
        reason = exc.message if isinstance(exc, ProtocolError) else f"not UTF-8: {exc}"
        raise LocalError(
            f"node config for node {node_id}: {reason}", code=AosCode.INVALID_ARGUMENT
        ) from None
    if config.node.codename != node_id:
        raise LocalError(
            f"node config for node {node_id} names node {config.node.codename!r}",
            code=AosCode.INVALID_ARGUMENT,
        )
    return text


def _check_uint64(value: int, what: str) -> None:
    if not 0 <= value <= _UINT64_MAX:
        raise LocalError(f"{what} {value} is out of range", code=AosCode.INVALID_ARGUMENT)


def _instance_statuses(
    statuses: Iterable[InstanceStatus],
    manifest_digests: Mapping[InstanceKey, str] | None,
    item_types: Mapping[InstanceKey, str] | None,
) -> list[sm_pb2.InstanceStatus]:
    digests, types = manifest_digests or {}, item_types or {}
    return [
        instance_status(
            s,
            manifest_digest=digests.get(s.key, ""),
            item_type=types.get(s.key, "service"),
        )
        for s in statuses
    ]


def _runtime_info(runtime: RuntimeInfo) -> sm_pb2.RuntimeInfo:
    message = sm_pb2.RuntimeInfo(
        runtime_id=runtime.identity.key,
        type=runtime.runtime_type,
        max_dmips=runtime.max_dmips or 0,
        allowed_dmips=runtime.allowed_dmips or 0,
        total_ram=runtime.total_ram or 0,
        allowed_ram=runtime.allowed_ram or 0,
        max_instances=runtime.max_instances or 0,
    )
    if runtime.os_info is not None:
        os_info = runtime.os_info
        message.os_info.CopyFrom(
            common_pb2.OSInfo(
                os=os_info.os, version=os_info.version or "", features=os_info.features
            )
        )
    if runtime.arch_info is not None:
        arch = runtime.arch_info
        message.arch_info.CopyFrom(
            common_pb2.ArchInfo(architecture=arch.architecture, variant=arch.variant or "")
        )
    return message


def _runtime_from_proto(runtime: sm_pb2.RuntimeInfo) -> RuntimeInfo:
    os_info = runtime.os_info
    arch = runtime.arch_info
    return RuntimeInfo(
        identity=Identity(codename=runtime.runtime_id),
        runtime_type=runtime.type,
        arch_info=ArchInfo(arch.architecture, arch.variant or None) if arch.architecture else None,
        os_info=(
            OsInfo(os_info.os, os_info.version or None, tuple(os_info.features))
            if os_info.os
            else None
        ),
        max_dmips=runtime.max_dmips or None,
        allowed_dmips=runtime.allowed_dmips or None,
        total_ram=runtime.total_ram or None,
        allowed_ram=runtime.allowed_ram or None,
        max_instances=runtime.max_instances or None,
    )
