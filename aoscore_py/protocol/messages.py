"""Typed AosCloud v7 messages: frozen dataclasses, one per JSON object of the protocol.

Values are immutable (tuples, not lists) so that a parsed message can be compared, hashed, stored
and handed between components without anyone changing it underneath the others. Attribute names
are snake_case; `codec` maps them to the camelCase keys of the wire, in AosCore's key order.

Conventions: `None` means "absent on the wire"; an empty tuple means "absent or empty" where the
protocol does not tell the two apart. Binary fields (certificates, keys, signatures, sha256) hold
the decoded bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, TypeAlias

from aoscore_py.errors import AosCode, AosError
from aoscore_py.protocol.enums import (
    DesiredNodeState,
    InstanceState,
    ItemState,
    NodeState,
    SubjectType,
    UnitConfigState,
)

PROTOCOL_VERSION = 7
"""The `header.version` this implementation speaks; frames of any other version are refused when
read, and the link drops them."""


# --- shared ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """Names an item, subject, node or runtime.

    Cloud items and subjects carry an `id`; nodes, runtimes and preinstalled items a `codename`.
    Both are kept as given, because the cloud matches the status we report by the same key.
    """

    id: str | None = None
    codename: str | None = None
    type: str | None = None
    title: str | None = None

    @property
    def key(self) -> str:
        """The id, else the codename: what the unit uses to tell items apart.

        Empty only for an identity built by hand with neither; parsing never yields one.
        """
        if self.id is not None:
            return self.id
        return self.codename or ""


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why something failed; `aos_code` is an `AosCode` value (1 = failed)."""

    aos_code: int = 1
    exit_code: int = 0
    message: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        """The errorInfo that reports `exc`: its own code and message for our errors, `failed`
        with the exception's type and text for anything else."""
        if isinstance(exc, AosError):
            return cls(aos_code=int(exc.code), exit_code=0, message=exc.message)
        return cls(
            aos_code=int(AosCode.FAILED), exit_code=0, message=f"{type(exc).__name__}: {exc}"
        )


@dataclass(frozen=True, slots=True)
class Header:
    """The envelope header: the reader checks the version, the link the system id; acks by `txn`."""

    version: int
    system_id: str
    txn: str
    created_at: datetime | None = None


# --- desiredStatus: unit configuration ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertRule:
    """Raise an alert when a value stays outside [min, max] for at least `min_timeout` seconds."""

    min_timeout: float
    min_threshold: float
    max_threshold: float


@dataclass(frozen=True, slots=True)
class PartitionAlertRule:
    """An `AlertRule` for one named disk partition."""

    name: str
    min_timeout: float
    min_threshold: float
    max_threshold: float


@dataclass(frozen=True, slots=True)
class AlertRules:
    """Per-node alert thresholds; a rule left out means no alert for that resource."""

    cpu: AlertRule | None = None
    ram: AlertRule | None = None
    partitions: tuple[PartitionAlertRule, ...] = ()
    download: AlertRule | None = None
    upload: AlertRule | None = None


@dataclass(frozen=True, slots=True)
class ResourceRatios:
    """Percentages of a node's resources that instances may share; None keeps the default."""

    cpu: int | None = None
    ram: int | None = None
    storage: int | None = None
    state: int | None = None


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """The configuration of one node inside `UnitConfig`."""

    node: Identity
    node_group_subject: Identity | None = None
    version: str | None = None
    alert_rules: AlertRules | None = None
    resource_ratios: ResourceRatios | None = None
    labels: tuple[str, ...] = ()
    priority: int = 0


@dataclass(frozen=True, slots=True)
class UnitConfig:
    """The versioned unit configuration carried by a desired status."""

    version: str
    format_version: str
    nodes: tuple[NodeConfig, ...] = ()


# --- desiredStatus --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DesiredNodeStatus:
    """Whether the cloud wants a node provisioned or paused."""

    item: Identity
    state: DesiredNodeState


@dataclass(frozen=True, slots=True)
class DesiredItem:
    """An update item (an OCI image) the unit must hold, named by its image index digest."""

    item: Identity
    version: str
    index_digest: str
    owner: Identity | None = None


@dataclass(frozen=True, slots=True)
class DesiredInstance:
    """How many instances of an item to run for a subject (instance indexes 0..n-1)."""

    item: Identity
    subject: Identity
    priority: int = 0
    num_instances: int = 0
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DesiredSubject:
    """A user or group the unit serves."""

    identity: Identity
    type: SubjectType
    is_reported_from_unit: bool = False


@dataclass(frozen=True, slots=True)
class Certificate:
    """An intermediate or signing certificate (DER), found by its fingerprint."""

    certificate: bytes
    fingerprint: str


@dataclass(frozen=True, slots=True)
class CertificateChain:
    """A named chain: the signing certificate's fingerprint first, then intermediates."""

    name: str
    fingerprints: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DesiredStatus:
    """The whole state the cloud wants the unit in; the unit converges on it."""

    MESSAGE_TYPE: ClassVar[str] = "desiredStatus"

    correlation_id: str | None = None
    nodes: tuple[DesiredNodeStatus, ...] = ()
    unit_config: UnitConfig | None = None
    items: tuple[DesiredItem, ...] = ()
    instances: tuple[DesiredInstance, ...] = ()
    subjects: tuple[DesiredSubject, ...] = ()
    certificates: tuple[Certificate, ...] = ()
    certificate_chains: tuple[CertificateChain, ...] = ()
    seq: int | None = None
    """Our addition (unknown to AosCore): the cloud's per-unit order of desired statuses; a
    unit keeps the newer of two, whatever order they arrive in."""


# --- unitStatus -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnitConfigStatus:
    """Whether one unit configuration version is applied, and why not if it failed."""

    version: str
    state: UnitConfigState
    error_info: ErrorInfo | None = None


@dataclass(frozen=True, slots=True)
class OsInfo:
    """The operating system of a node or runtime."""

    os: str
    version: str | None = None
    features: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ArchInfo:
    """A CPU architecture, such as x86_64 or arm64 with a variant."""

    architecture: str
    variant: str | None = None


@dataclass(frozen=True, slots=True)
class CpuInfo:
    """One CPU of a node."""

    model_name: str
    total_num_cores: int | None = None
    total_num_threads: int | None = None
    arch_info: ArchInfo | None = None
    max_dmips: int | None = None


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """A disk partition of a node; `total_size` in bytes."""

    name: str
    types: tuple[str, ...] = ()
    total_size: int | None = None


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """A container runtime on a node and the share of the node it may use."""

    identity: Identity
    runtime_type: str
    arch_info: ArchInfo | None = None
    os_info: OsInfo | None = None
    max_dmips: int | None = None
    allowed_dmips: int | None = None
    total_ram: int | None = None
    allowed_ram: int | None = None
    max_instances: int | None = None


@dataclass(frozen=True, slots=True)
class ResourceInfo:
    """A shareable node resource and how many instances may hold it at once."""

    name: str
    shared_count: int = 0


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What the unit reports about one node.

    `attrs` is a tuple of (name, value) pairs, in wire order, so that the record stays hashable;
    it is written as a JSON object.
    """

    identity: Identity
    state: NodeState
    is_connected: bool
    node_group_subject: Identity | None = None
    max_dmips: int | None = None
    physical_ram: int | None = None
    total_ram: int | None = None
    os_info: OsInfo | None = None
    cpus: tuple[CpuInfo, ...] | None = None
    attrs: tuple[tuple[str, str], ...] | None = None
    partitions: tuple[PartitionInfo, ...] | None = None
    runtimes: tuple[RuntimeInfo, ...] | None = None
    resources: tuple[ResourceInfo, ...] | None = None
    error_info: ErrorInfo | None = None


@dataclass(frozen=True, slots=True)
class ItemStatus:
    """Where one update item version stands on the unit."""

    item: Identity
    version: str
    state: ItemState
    error_info: ErrorInfo | None = None


@dataclass(frozen=True, slots=True)
class InstanceStatusInfo:
    """One running (or failed) instance: where it runs and in which state."""

    node: Identity
    runtime: Identity
    instance: int
    state: InstanceState
    state_checksum: str | None = None
    error_info: ErrorInfo | None = None


@dataclass(frozen=True, slots=True)
class InstancesStatus:
    """The instances of one item version for one subject."""

    item: Identity
    subject: Identity
    version: str
    instances: tuple[InstanceStatusInfo, ...]


@dataclass(frozen=True, slots=True)
class UnitStatus:
    """What the unit reports: a full status, or a delta holding only the changed sections.

    A section left as None is absent from the message (in a delta: unchanged). `boot_id` and
    `seq` are our addition, so the cloud side can order reports across restarts; so is
    `folded_seqs`: the (first, last) seq ranges of statuses that a full outbox folded into this
    full one, which therefore never reach the cloud on their own and are not a gap.
    """

    MESSAGE_TYPE: ClassVar[str] = "unitStatus"

    correlation_id: str | None = None
    is_delta_info: bool = False
    unit_config: tuple[UnitConfigStatus, ...] | None = None
    nodes: tuple[NodeInfo, ...] | None = None
    items: tuple[ItemStatus, ...] | None = None
    instances: tuple[InstancesStatus, ...] | None = None
    subjects: tuple[Identity, ...] | None = None
    boot_id: str | None = None
    seq: int | None = None
    folded_seqs: tuple[tuple[int, int], ...] | None = None


# --- acknowledgements and blobs -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    """Confirms receipt of the frame whose header carries the same txn."""

    MESSAGE_TYPE: ClassVar[str] = "ack"

    correlation_id: str | None = None


@dataclass(frozen=True, slots=True)
class Nack:
    """Refuses a frame: send it again after `retry_after` milliseconds.

    `error_info` is our addition: why the frame was refused, for the other side's logs.
    """

    MESSAGE_TYPE: ClassVar[str] = "nack"

    correlation_id: str | None = None
    retry_after: int = 500
    error_info: ErrorInfo | None = None


@dataclass(frozen=True, slots=True)
class RequestBlobUrls:
    """Asks the cloud where to download the named blobs.

    `boot_id` and `seq` are our addition, as on unitStatus: the boot that asked, and the
    request's number within it (requests are numbered apart from statuses, so that a status
    timeline has no gaps for them).
    """

    MESSAGE_TYPE: ClassVar[str] = "requestBlobUrls"

    correlation_id: str | None
    digests: tuple[str, ...]
    boot_id: str | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class DecryptInfo:
    """How to decrypt a blob: algorithm, IV and key inline (support is optional)."""

    block_alg: str
    block_iv: bytes
    block_key: bytes


@dataclass(frozen=True, slots=True)
class SignInfo:
    """A blob's signature, to check with the named chain at `trusted_timestamp`."""

    chain_name: str
    alg: str
    value: bytes
    trusted_timestamp: datetime
    ocsp_values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BlobUrlInfo:
    """Where to fetch one blob and how to check it; `urls` are tried in order."""

    digest: str
    urls: tuple[str, ...]
    sha256: bytes
    size: int
    decrypt_info: DecryptInfo | None = None
    sign_info: SignInfo | None = None


@dataclass(frozen=True, slots=True)
class BlobUrls:
    """The cloud's answer to `RequestBlobUrls`, paired by correlation id."""

    MESSAGE_TYPE: ClassVar[str] = "blobUrls"

    correlation_id: str | None
    items: tuple[BlobUrlInfo, ...]


@dataclass(frozen=True, slots=True)
class UpdateState:
    """A new instance state from the cloud; `state` is opaque to the protocol layer."""

    MESSAGE_TYPE: ClassVar[str] = "updateState"

    item: Identity
    subject: Identity
    instance: int
    state: str
    state_checksum: str | None = None


Message: TypeAlias = (
    DesiredStatus | UnitStatus | Ack | Nack | RequestBlobUrls | BlobUrls | UpdateState
)
"""Any message that can travel as the `data` of a frame."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A whole frame: header and message."""

    header: Header
    data: Message
