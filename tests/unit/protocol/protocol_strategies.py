"""Hypothesis strategies for every protocol message, valid by construction.

"Valid" means what the reader requires: identities carry the key their context needs, node
configs stay within the label limits, integers fit in 64 bits, correlation ids are None or
non-empty (an empty one is written as absent), timestamps are UTC, headers are of version 7 and
digests follow our rule (`check_digest`).
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from hypothesis import strategies as st

from aoscore_py.protocol import (
    DIGEST_HEX_LENGTHS,
    MAX_LABEL_LENGTH,
    MAX_NODE_LABELS,
    PROTOCOL_VERSION,
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
    DesiredNodeState,
    DesiredNodeStatus,
    DesiredStatus,
    DesiredSubject,
    Envelope,
    ErrorInfo,
    Header,
    Identity,
    InstancesStatus,
    InstanceState,
    InstanceStatusInfo,
    ItemState,
    ItemStatus,
    ItemType,
    Nack,
    NodeConfig,
    NodeInfo,
    NodeState,
    OsInfo,
    PartitionAlertRule,
    PartitionInfo,
    RequestBlobUrls,
    ResourceInfo,
    ResourceRatios,
    RuntimeInfo,
    SignInfo,
    SubjectType,
    UnitConfig,
    UnitConfigState,
    UnitConfigStatus,
    UnitStatus,
    UpdateState,
)

text = st.text(max_size=12)
ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
counts = st.integers(min_value=0, max_value=2**63 - 1)
numbers = st.floats(allow_nan=False, allow_infinity=False)
timeouts = st.floats(min_value=0.0, max_value=1e9, allow_nan=False)
stamps = st.datetimes(timezones=st.just(UTC))
correlation_ids = st.none() | st.text(min_size=1, max_size=12)
digests = st.sampled_from(sorted(DIGEST_HEX_LENGTHS.items())).flatmap(
    lambda pair: st.binary(min_size=pair[1] // 2, max_size=pair[1] // 2).map(
        lambda raw: f"{pair[0]}:{raw.hex()}"
    )
)


def small(
    strategy: st.SearchStrategy[Any], max_size: int = 3
) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.lists(strategy, max_size=max_size).map(tuple)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def identities(need: str = "key", need_type: bool = False) -> st.SearchStrategy[Identity]:
    """Identities with the key `need` asks for ("id", "codename" or "key": either or both)."""
    types = st.sampled_from(ItemType) if need_type else maybe(st.sampled_from(ItemType))

    def build(ident_id: str | None, codename: str | None, kind: Any, title: str | None) -> Identity:
        return Identity(id=ident_id, codename=codename, type=kind, title=title)

    if need == "id":
        return st.builds(build, text, maybe(text), types, maybe(text))
    if need == "codename":
        return st.builds(build, maybe(text), text, types, maybe(text))
    with_id = st.builds(build, text, maybe(text), types, maybe(text))
    with_codename = st.builds(build, st.none(), text, types, maybe(text))
    return with_id | with_codename


error_infos = st.builds(ErrorInfo, counts, ints, text)
headers = st.builds(Header, st.just(PROTOCOL_VERSION), text, text, maybe(stamps))

# --- desiredStatus --------------------------------------------------------------------------------

alert_rules_one = st.builds(AlertRule, timeouts, numbers, numbers)
alert_rules = st.builds(
    AlertRules,
    maybe(alert_rules_one),
    maybe(alert_rules_one),
    small(st.builds(PartitionAlertRule, text, timeouts, numbers, numbers)),
    maybe(alert_rules_one),
    maybe(alert_rules_one),
)
node_labels = st.lists(st.text(max_size=MAX_LABEL_LENGTH), max_size=MAX_NODE_LABELS).map(tuple)
node_configs = st.builds(
    NodeConfig,
    identities("codename"),
    maybe(identities()),
    maybe(text),
    maybe(alert_rules),
    maybe(st.builds(ResourceRatios, maybe(ints), maybe(ints), maybe(ints), maybe(ints))),
    node_labels,
    ints,
)
unit_configs = st.builds(UnitConfig, text, text, small(node_configs))
desired_statuses = st.builds(
    DesiredStatus,
    correlation_ids,
    small(st.builds(DesiredNodeStatus, identities("codename"), st.sampled_from(DesiredNodeState))),
    maybe(unit_configs),
    small(st.builds(DesiredItem, identities("id", True), text, digests, maybe(identities("id")))),
    small(
        st.builds(DesiredInstance, identities("id"), identities("id"), ints, counts, small(text))
    ),
    small(st.builds(DesiredSubject, identities("id"), st.sampled_from(SubjectType), st.booleans())),
    small(st.builds(Certificate, st.binary(max_size=16), text)),
    small(st.builds(CertificateChain, text, small(text))),
)

# --- unitStatus -----------------------------------------------------------------------------------

os_infos = st.builds(OsInfo, text, maybe(text), small(text))
arch_infos = st.builds(ArchInfo, text, maybe(text))
attrs = st.lists(st.tuples(text, text), max_size=3, unique_by=lambda pair: pair[0]).map(tuple)
node_infos = st.builds(
    NodeInfo,
    identities("codename"),
    st.sampled_from(NodeState),
    st.booleans(),
    maybe(identities()),
    maybe(counts),
    maybe(counts),
    maybe(counts),
    maybe(os_infos),
    maybe(small(st.builds(CpuInfo, text, maybe(counts), maybe(counts), maybe(arch_infos)))),
    maybe(attrs),
    maybe(small(st.builds(PartitionInfo, text, small(text), maybe(counts)))),
    maybe(
        small(
            st.builds(
                RuntimeInfo,
                identities("codename"),
                text,
                maybe(arch_infos),
                maybe(os_infos),
                maybe(counts),
                maybe(counts),
                maybe(counts),
                maybe(counts),
                maybe(counts),
            )
        )
    ),
    maybe(small(st.builds(ResourceInfo, text, ints))),
    maybe(error_infos),
)
instance_infos = st.builds(
    InstanceStatusInfo,
    identities("codename"),
    identities("codename"),
    counts,
    st.sampled_from(InstanceState),
    maybe(text),
    maybe(error_infos),
)
unit_statuses = st.builds(
    UnitStatus,
    correlation_ids,
    st.booleans(),
    maybe(
        small(
            st.builds(UnitConfigStatus, text, st.sampled_from(UnitConfigState), maybe(error_infos))
        )
    ),
    maybe(small(node_infos, 2)),
    maybe(
        small(
            st.builds(
                ItemStatus, identities(), text, st.sampled_from(ItemState), maybe(error_infos)
            )
        )
    ),
    maybe(
        small(st.builds(InstancesStatus, identities(), identities(), text, small(instance_infos)))
    ),
    maybe(small(identities())),
    maybe(text),
    maybe(counts),
)

# --- the rest -------------------------------------------------------------------------------------

blob_infos = st.builds(
    BlobUrlInfo,
    digests,
    small(text),
    st.binary(max_size=32),
    counts,
    maybe(st.builds(DecryptInfo, text, st.binary(max_size=16), st.binary(max_size=16))),
    maybe(st.builds(SignInfo, text, text, st.binary(max_size=16), stamps, small(text))),
)

messages = st.one_of(
    desired_statuses,
    unit_statuses,
    st.builds(Ack, correlation_ids),
    st.builds(Nack, correlation_ids, counts, maybe(error_infos)),
    st.builds(RequestBlobUrls, correlation_ids, small(digests)),
    st.builds(BlobUrls, correlation_ids, small(blob_infos)),
    st.builds(UpdateState, identities(), identities(), counts, text, maybe(text)),
)
envelopes = st.builds(Envelope, headers, messages)

json_values = st.recursive(
    st.none() | st.booleans() | ints | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
"""Any JSON-ish value (NaN and infinities included, as a caller's dict might hold)."""
