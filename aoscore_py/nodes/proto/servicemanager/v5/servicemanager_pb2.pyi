import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from aoscore_py.nodes.proto.common.v2 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConnectionEnum(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISCONNECTED: _ClassVar[ConnectionEnum]
    CONNECTED: _ClassVar[ConnectionEnum]
DISCONNECTED: ConnectionEnum
CONNECTED: ConnectionEnum

class SMIncomingMessages(_message.Message):
    __slots__ = ("get_node_config_status", "check_node_config", "set_node_config", "update_instances", "connection_status")
    GET_NODE_CONFIG_STATUS_FIELD_NUMBER: _ClassVar[int]
    CHECK_NODE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    SET_NODE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    UPDATE_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_STATUS_FIELD_NUMBER: _ClassVar[int]
    get_node_config_status: GetNodeConfigStatus
    check_node_config: CheckNodeConfig
    set_node_config: SetNodeConfig
    update_instances: UpdateInstances
    connection_status: ConnectionStatus
    def __init__(self, get_node_config_status: _Optional[_Union[GetNodeConfigStatus, _Mapping]] = ..., check_node_config: _Optional[_Union[CheckNodeConfig, _Mapping]] = ..., set_node_config: _Optional[_Union[SetNodeConfig, _Mapping]] = ..., update_instances: _Optional[_Union[UpdateInstances, _Mapping]] = ..., connection_status: _Optional[_Union[ConnectionStatus, _Mapping]] = ...) -> None: ...

class SMOutgoingMessages(_message.Message):
    __slots__ = ("sm_info", "node_config_status", "update_instances_status", "node_instances_status", "alert")
    SM_INFO_FIELD_NUMBER: _ClassVar[int]
    NODE_CONFIG_STATUS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_INSTANCES_STATUS_FIELD_NUMBER: _ClassVar[int]
    NODE_INSTANCES_STATUS_FIELD_NUMBER: _ClassVar[int]
    ALERT_FIELD_NUMBER: _ClassVar[int]
    sm_info: SMInfo
    node_config_status: NodeConfigStatus
    update_instances_status: UpdateInstancesStatus
    node_instances_status: NodeInstancesStatus
    alert: Alert
    def __init__(self, sm_info: _Optional[_Union[SMInfo, _Mapping]] = ..., node_config_status: _Optional[_Union[NodeConfigStatus, _Mapping]] = ..., update_instances_status: _Optional[_Union[UpdateInstancesStatus, _Mapping]] = ..., node_instances_status: _Optional[_Union[NodeInstancesStatus, _Mapping]] = ..., alert: _Optional[_Union[Alert, _Mapping]] = ...) -> None: ...

class BlobsInfosRequest(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, digests: _Optional[_Iterable[str]] = ...) -> None: ...

class BlobsInfos(_message.Message):
    __slots__ = ("urls",)
    URLS_FIELD_NUMBER: _ClassVar[int]
    urls: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, urls: _Optional[_Iterable[str]] = ...) -> None: ...

class GetNodeConfigStatus(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CheckNodeConfig(_message.Message):
    __slots__ = ("node_config", "version")
    NODE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    node_config: str
    version: str
    def __init__(self, node_config: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class SetNodeConfig(_message.Message):
    __slots__ = ("node_config", "version")
    NODE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    node_config: str
    version: str
    def __init__(self, node_config: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class EnvVarInfo(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class InstanceInfo(_message.Message):
    __slots__ = ("instance", "version", "manifest_digest", "owner_id", "runtime_id", "uid", "gid", "priority", "storage_path", "state_path", "env_vars", "monitoring_parameters")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_ID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    STORAGE_PATH_FIELD_NUMBER: _ClassVar[int]
    STATE_PATH_FIELD_NUMBER: _ClassVar[int]
    ENV_VARS_FIELD_NUMBER: _ClassVar[int]
    MONITORING_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    instance: _common_pb2.InstanceIdent
    version: str
    manifest_digest: str
    owner_id: str
    runtime_id: str
    uid: int
    gid: int
    priority: int
    storage_path: str
    state_path: str
    env_vars: _containers.RepeatedCompositeFieldContainer[EnvVarInfo]
    monitoring_parameters: MonitoringParameters
    def __init__(self, instance: _Optional[_Union[_common_pb2.InstanceIdent, _Mapping]] = ..., version: _Optional[str] = ..., manifest_digest: _Optional[str] = ..., owner_id: _Optional[str] = ..., runtime_id: _Optional[str] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., priority: _Optional[int] = ..., storage_path: _Optional[str] = ..., state_path: _Optional[str] = ..., env_vars: _Optional[_Iterable[_Union[EnvVarInfo, _Mapping]]] = ..., monitoring_parameters: _Optional[_Union[MonitoringParameters, _Mapping]] = ...) -> None: ...

class UpdateInstances(_message.Message):
    __slots__ = ("start_instances", "stop_instances")
    START_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    STOP_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    start_instances: _containers.RepeatedCompositeFieldContainer[InstanceInfo]
    stop_instances: _containers.RepeatedCompositeFieldContainer[_common_pb2.InstanceIdent]
    def __init__(self, start_instances: _Optional[_Iterable[_Union[InstanceInfo, _Mapping]]] = ..., stop_instances: _Optional[_Iterable[_Union[_common_pb2.InstanceIdent, _Mapping]]] = ...) -> None: ...

class AlertRulePercents(_message.Message):
    __slots__ = ("duration", "min_threshold", "max_threshold")
    DURATION_FIELD_NUMBER: _ClassVar[int]
    MIN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    duration: _duration_pb2.Duration
    min_threshold: float
    max_threshold: float
    def __init__(self, duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., min_threshold: _Optional[float] = ..., max_threshold: _Optional[float] = ...) -> None: ...

class AlertRulePoints(_message.Message):
    __slots__ = ("duration", "min_threshold", "max_threshold")
    DURATION_FIELD_NUMBER: _ClassVar[int]
    MIN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    duration: _duration_pb2.Duration
    min_threshold: int
    max_threshold: int
    def __init__(self, duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., min_threshold: _Optional[int] = ..., max_threshold: _Optional[int] = ...) -> None: ...

class PartitionAlertRule(_message.Message):
    __slots__ = ("name", "duration", "min_threshold", "max_threshold")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    MIN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    name: str
    duration: _duration_pb2.Duration
    min_threshold: float
    max_threshold: float
    def __init__(self, name: _Optional[str] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., min_threshold: _Optional[float] = ..., max_threshold: _Optional[float] = ...) -> None: ...

class AlertRules(_message.Message):
    __slots__ = ("ram", "cpu", "partitions", "download", "upload")
    RAM_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_FIELD_NUMBER: _ClassVar[int]
    ram: AlertRulePercents
    cpu: AlertRulePercents
    partitions: _containers.RepeatedCompositeFieldContainer[PartitionAlertRule]
    download: AlertRulePoints
    upload: AlertRulePoints
    def __init__(self, ram: _Optional[_Union[AlertRulePercents, _Mapping]] = ..., cpu: _Optional[_Union[AlertRulePercents, _Mapping]] = ..., partitions: _Optional[_Iterable[_Union[PartitionAlertRule, _Mapping]]] = ..., download: _Optional[_Union[AlertRulePoints, _Mapping]] = ..., upload: _Optional[_Union[AlertRulePoints, _Mapping]] = ...) -> None: ...

class MonitoringParameters(_message.Message):
    __slots__ = ("alert_rules",)
    ALERT_RULES_FIELD_NUMBER: _ClassVar[int]
    alert_rules: AlertRules
    def __init__(self, alert_rules: _Optional[_Union[AlertRules, _Mapping]] = ...) -> None: ...

class ConnectionStatus(_message.Message):
    __slots__ = ("cloud_status",)
    CLOUD_STATUS_FIELD_NUMBER: _ClassVar[int]
    cloud_status: ConnectionEnum
    def __init__(self, cloud_status: _Optional[_Union[ConnectionEnum, str]] = ...) -> None: ...

class ResourceInfo(_message.Message):
    __slots__ = ("name", "shared_count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHARED_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    shared_count: int
    def __init__(self, name: _Optional[str] = ..., shared_count: _Optional[int] = ...) -> None: ...

class RuntimeInfo(_message.Message):
    __slots__ = ("runtime_id", "type", "max_dmips", "allowed_dmips", "total_ram", "allowed_ram", "max_instances", "os_info", "arch_info")
    RUNTIME_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_DMIPS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_DMIPS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_RAM_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_RAM_FIELD_NUMBER: _ClassVar[int]
    MAX_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    OS_INFO_FIELD_NUMBER: _ClassVar[int]
    ARCH_INFO_FIELD_NUMBER: _ClassVar[int]
    runtime_id: str
    type: str
    max_dmips: int
    allowed_dmips: int
    total_ram: int
    allowed_ram: int
    max_instances: int
    os_info: _common_pb2.OSInfo
    arch_info: _common_pb2.ArchInfo
    def __init__(self, runtime_id: _Optional[str] = ..., type: _Optional[str] = ..., max_dmips: _Optional[int] = ..., allowed_dmips: _Optional[int] = ..., total_ram: _Optional[int] = ..., allowed_ram: _Optional[int] = ..., max_instances: _Optional[int] = ..., os_info: _Optional[_Union[_common_pb2.OSInfo, _Mapping]] = ..., arch_info: _Optional[_Union[_common_pb2.ArchInfo, _Mapping]] = ...) -> None: ...

class SMInfo(_message.Message):
    __slots__ = ("node_id", "runtimes", "resources")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    runtimes: _containers.RepeatedCompositeFieldContainer[RuntimeInfo]
    resources: _containers.RepeatedCompositeFieldContainer[ResourceInfo]
    def __init__(self, node_id: _Optional[str] = ..., runtimes: _Optional[_Iterable[_Union[RuntimeInfo, _Mapping]]] = ..., resources: _Optional[_Iterable[_Union[ResourceInfo, _Mapping]]] = ...) -> None: ...

class NodeConfigStatus(_message.Message):
    __slots__ = ("state", "version", "error")
    STATE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    state: str
    version: str
    error: _common_pb2.ErrorInfo
    def __init__(self, state: _Optional[str] = ..., version: _Optional[str] = ..., error: _Optional[_Union[_common_pb2.ErrorInfo, _Mapping]] = ...) -> None: ...

class EnvVarStatus(_message.Message):
    __slots__ = ("name", "error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    error: _common_pb2.ErrorInfo
    def __init__(self, name: _Optional[str] = ..., error: _Optional[_Union[_common_pb2.ErrorInfo, _Mapping]] = ...) -> None: ...

class InstanceStatus(_message.Message):
    __slots__ = ("instance", "version", "runtime_id", "manifest_digest", "env_vars", "state", "error")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ENV_VARS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    instance: _common_pb2.InstanceIdent
    version: str
    runtime_id: str
    manifest_digest: str
    env_vars: _containers.RepeatedCompositeFieldContainer[EnvVarStatus]
    state: str
    error: _common_pb2.ErrorInfo
    def __init__(self, instance: _Optional[_Union[_common_pb2.InstanceIdent, _Mapping]] = ..., version: _Optional[str] = ..., runtime_id: _Optional[str] = ..., manifest_digest: _Optional[str] = ..., env_vars: _Optional[_Iterable[_Union[EnvVarStatus, _Mapping]]] = ..., state: _Optional[str] = ..., error: _Optional[_Union[_common_pb2.ErrorInfo, _Mapping]] = ...) -> None: ...

class UpdateInstancesStatus(_message.Message):
    __slots__ = ("instances",)
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[InstanceStatus]
    def __init__(self, instances: _Optional[_Iterable[_Union[InstanceStatus, _Mapping]]] = ...) -> None: ...

class NodeInstancesStatus(_message.Message):
    __slots__ = ("instances",)
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[InstanceStatus]
    def __init__(self, instances: _Optional[_Iterable[_Union[InstanceStatus, _Mapping]]] = ...) -> None: ...

class SystemQuotaAlert(_message.Message):
    __slots__ = ("parameter", "value", "status")
    PARAMETER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    parameter: str
    value: int
    status: str
    def __init__(self, parameter: _Optional[str] = ..., value: _Optional[int] = ..., status: _Optional[str] = ...) -> None: ...

class InstanceQuotaAlert(_message.Message):
    __slots__ = ("instance", "parameter", "value", "status")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    instance: _common_pb2.InstanceIdent
    parameter: str
    value: int
    status: str
    def __init__(self, instance: _Optional[_Union[_common_pb2.InstanceIdent, _Mapping]] = ..., parameter: _Optional[str] = ..., value: _Optional[int] = ..., status: _Optional[str] = ...) -> None: ...

class ResourceAllocateAlert(_message.Message):
    __slots__ = ("instance", "resource", "message")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    instance: _common_pb2.InstanceIdent
    resource: str
    message: str
    def __init__(self, instance: _Optional[_Union[_common_pb2.InstanceIdent, _Mapping]] = ..., resource: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SystemAlert(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class CoreAlert(_message.Message):
    __slots__ = ("core_component", "message")
    CORE_COMPONENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    core_component: str
    message: str
    def __init__(self, core_component: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class InstanceAlert(_message.Message):
    __slots__ = ("instance", "service_version", "message")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    instance: _common_pb2.InstanceIdent
    service_version: str
    message: str
    def __init__(self, instance: _Optional[_Union[_common_pb2.InstanceIdent, _Mapping]] = ..., service_version: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("timestamp", "system_quota_alert", "instance_quota_alert", "resource_allocate_alert", "system_alert", "core_alert", "instance_alert")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_QUOTA_ALERT_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_QUOTA_ALERT_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ALLOCATE_ALERT_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_ALERT_FIELD_NUMBER: _ClassVar[int]
    CORE_ALERT_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ALERT_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    system_quota_alert: SystemQuotaAlert
    instance_quota_alert: InstanceQuotaAlert
    resource_allocate_alert: ResourceAllocateAlert
    system_alert: SystemAlert
    core_alert: CoreAlert
    instance_alert: InstanceAlert
    def __init__(self, timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., system_quota_alert: _Optional[_Union[SystemQuotaAlert, _Mapping]] = ..., instance_quota_alert: _Optional[_Union[InstanceQuotaAlert, _Mapping]] = ..., resource_allocate_alert: _Optional[_Union[ResourceAllocateAlert, _Mapping]] = ..., system_alert: _Optional[_Union[SystemAlert, _Mapping]] = ..., core_alert: _Optional[_Union[CoreAlert, _Mapping]] = ..., instance_alert: _Optional[_Union[InstanceAlert, _Mapping]] = ...) -> None: ...
