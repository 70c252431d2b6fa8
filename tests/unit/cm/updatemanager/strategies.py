"""Hypothesis strategies for desired statuses that `validate` accepts, and for single edits of them.

"Valid" means what the handler lets through to `compare`: every list has unique keys (nodes by
codename, items by id, instances by (item, subject), subjects by id, certificates by fingerprint,
chains by name, unit config nodes by codename), and every identity carries the key its place in
the protocol asks for, so a value also survives a dump and parse round trip.

Keys are drawn from a tiny alphabet that includes "/" on purpose: the comparison joins keys into
display strings, and two different instances must never be mistaken for one.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from hypothesis import assume
from hypothesis import strategies as st

from aoscore_py.protocol import (
    AlertRule,
    AlertRules,
    Certificate,
    CertificateChain,
    DesiredInstance,
    DesiredItem,
    DesiredNodeState,
    DesiredNodeStatus,
    DesiredStatus,
    DesiredSubject,
    Identity,
    ItemType,
    NodeConfig,
    PartitionAlertRule,
    ResourceRatios,
    SubjectType,
    UnitConfig,
)

keys = st.text(alphabet="ab/", min_size=1, max_size=3)
versions = st.sampled_from(["1.0.0", "1.0.1", "2.0.0"])
digests = st.sampled_from(["sha256:" + c * 64 for c in "0123"])
priorities = st.integers(min_value=0, max_value=3)
LABELS = ("gpu", "edge", "cam", "x", "y")
labels = st.lists(st.sampled_from(LABELS), unique=True, max_size=3).map(tuple)
ITEM_TYPES = (ItemType.SERVICE, ItemType.COMPONENT, ItemType.LAYER)


def unique(
    strategy: st.SearchStrategy[Any], key: Callable[[Any], Hashable], min_size: int = 0
) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.lists(strategy, min_size=min_size, max_size=4, unique_by=key).map(tuple)


def by_id(kind: str | None = None) -> st.SearchStrategy[Identity]:
    return keys.map(lambda k: Identity(id=k, type=kind))


by_codename = keys.map(lambda k: Identity(codename=k))

node_statuses = st.builds(DesiredNodeStatus, by_codename, st.sampled_from(DesiredNodeState))

# Every field `compare` looks at in a unit config varies here, so a comparison that forgot one
# would be caught by the single edits below. Values survive a dump and parse round trip:
# durations in whole or half seconds, thresholds that are exact floats.
format_versions = st.sampled_from(["1", "2"])
node_group_subjects = st.none() | by_id()
_timeouts = st.sampled_from([0.0, 1.5, 60.0])
_thresholds = st.sampled_from([0.0, 0.5, 75.0, 90.0])
alert_rule = st.builds(AlertRule, _timeouts, _thresholds, _thresholds)
partition_alert_rules = st.lists(
    st.builds(
        PartitionAlertRule, st.sampled_from(["root", "data"]), _timeouts, _thresholds, _thresholds
    ),
    max_size=2,
    unique_by=lambda r: r.name,
).map(tuple)
alert_rules = st.none() | st.builds(
    AlertRules,
    cpu=st.none() | alert_rule,
    ram=st.none() | alert_rule,
    partitions=partition_alert_rules,
    download=st.none() | alert_rule,
    upload=st.none() | alert_rule,
)
_percents = st.none() | st.sampled_from([0, 50, 100])
resource_ratios = st.none() | st.builds(
    ResourceRatios, cpu=_percents, ram=_percents, storage=_percents, state=_percents
)
node_configs = st.builds(
    NodeConfig,
    node=by_codename,
    node_group_subject=node_group_subjects,
    version=st.none() | versions,
    alert_rules=alert_rules,
    resource_ratios=resource_ratios,
    labels=labels,
    priority=priorities,
)
unit_configs = st.builds(
    UnitConfig,
    versions,
    format_versions,
    unique(node_configs, lambda n: n.node.key),
)
items = st.builds(
    DesiredItem,
    st.builds(Identity, id=keys, type=st.sampled_from(ITEM_TYPES)),
    versions,
    digests,
    st.none() | by_id(),
)
instances = st.builds(
    DesiredInstance,
    by_id(),
    by_id(),
    priorities,
    st.integers(min_value=0, max_value=3),
    labels,
)
subjects = st.builds(DesiredSubject, by_id(), st.sampled_from(SubjectType), st.booleans())
certificates = st.builds(Certificate, st.binary(min_size=1, max_size=4), keys)
chains = st.builds(CertificateChain, keys, st.lists(keys, min_size=1, max_size=3).map(tuple))

desired_statuses = st.builds(
    DesiredStatus,
    st.none() | st.text(min_size=1, max_size=8),
    unique(node_statuses, lambda n: n.item.key),
    st.none() | unit_configs,
    unique(items, lambda i: i.item.key),
    unique(instances, lambda i: (i.item.key, i.subject.key)),
    unique(subjects, lambda s: s.identity.key),
    unique(certificates, lambda c: c.fingerprint),
    unique(chains, lambda c: c.name),
)

# every section present, so that every kind of edit has something to work on
full_desired_statuses = st.builds(
    DesiredStatus,
    st.none() | st.text(min_size=1, max_size=8),
    unique(node_statuses, lambda n: n.item.key, 1),
    st.builds(UnitConfig, versions, format_versions, unique(node_configs, lambda n: n.node.key, 1)),
    unique(items, lambda i: i.item.key, 1),
    unique(instances, lambda i: (i.item.key, i.subject.key), 1),
    unique(subjects, lambda s: s.identity.key, 1),
    unique(certificates, lambda c: c.fingerprint, 1),
    unique(chains, lambda c: c.name, 1),
)


def reordered(ds: DesiredStatus, rnd: random.Random, correlation_id: str | None) -> DesiredStatus:
    """The same desired status with every list (and label list) shuffled.

    Partition alert rules keep their order: `compare` takes a node's alert rules as given.
    """

    def shuffle(values: tuple[Any, ...]) -> tuple[Any, ...]:
        out = list(values)
        rnd.shuffle(out)
        return tuple(out)

    uc = ds.unit_config
    if uc is not None:
        nodes = tuple(dataclasses.replace(n, labels=shuffle(n.labels)) for n in uc.nodes)
        uc = dataclasses.replace(uc, nodes=shuffle(nodes))
    return DesiredStatus(
        correlation_id=correlation_id,
        nodes=shuffle(ds.nodes),
        unit_config=uc,
        items=shuffle(ds.items),
        instances=shuffle(
            tuple(dataclasses.replace(i, labels=shuffle(i.labels)) for i in ds.instances)
        ),
        subjects=shuffle(ds.subjects),
        certificates=shuffle(ds.certificates),
        certificate_chains=shuffle(ds.certificate_chains),
    )


# --- single mutations -----------------------------------------------------------------------------
#
# Each edit is a plain function (draw, ds) -> Mutation, or None when `ds` has nothing to edit
# (no subjects to remove...). Tests run every edit by name, so none is left to chance.


@dataclass(frozen=True)
class Mutation:
    """One edit of a desired status, and the change `compare` must report for it."""

    name: str
    desired: DesiredStatus
    kind: str
    key: str


Draw = Callable[[st.SearchStrategy[Any]], Any]
Edit = Callable[[Draw, DesiredStatus], "Mutation | None"]
MUTATIONS: dict[str, Edit] = {}
rep = dataclasses.replace


def edit(name: str) -> Callable[[Edit], Edit]:
    def register(fn: Edit) -> Edit:
        MUTATIONS[name] = fn
        return fn

    return register


def _replace_at(values: tuple[Any, ...], index: int, value: Any) -> tuple[Any, ...]:
    return (*values[:index], value, *values[index + 1 :])


def _drop_at(values: tuple[Any, ...], index: int) -> tuple[Any, ...]:
    return values[:index] + values[index + 1 :]


def _index(draw: Draw, values: tuple[Any, ...]) -> int:
    return draw(st.integers(0, len(values) - 1))


def _fresh(draw: Draw, taken: set[str]) -> str:
    return draw(keys.filter(lambda k: k not in taken))


def _other(draw: Draw, strategy: st.SearchStrategy[Any], old: Any) -> Any:
    return draw(strategy.filter(lambda v: v != old))


def _toggle_label(draw: Draw, current: tuple[str, ...]) -> tuple[str, ...]:
    """Add a label the list lacks, or drop one it has."""
    if current and draw(st.booleans()):
        return _drop_at(current, _index(draw, current))
    return (*current, draw(st.sampled_from([x for x in LABELS if x not in current])))


# nodes


@edit("node.state")
def _node_state(draw: Draw, ds: DesiredStatus) -> Mutation | None:
    if not ds.nodes:
        return None
    i = _index(draw, ds.nodes)
    n = ds.nodes[i]
    other = next(s for s in DesiredNodeState if s != n.state)
    nodes = _replace_at(ds.nodes, i, rep(n, state=other))
    return Mutation("node.state", rep(ds, nodes=nodes), "node", n.item.key)


@edit("node.add")
def _node_add(draw: Draw, ds: DesiredStatus) -> Mutation | None:
    name = _fresh(draw, {n.item.key for n in ds.nodes})
    node = DesiredNodeStatus(Identity(codename=name), draw(st.sampled_from(DesiredNodeState)))
    return Mutation("node.add", rep(ds, nodes=(*ds.nodes, node)), "node", name)


@edit("node.remove")
def _node_remove(draw: Draw, ds: DesiredStatus) -> Mutation | None:
    if not ds.nodes:
        return None
    i = _index(draw, ds.nodes)
    return Mutation(
        "node.remove", rep(ds, nodes=_drop_at(ds.nodes, i)), "node", ds.nodes[i].item.key
    )


# unit config


def _with_config(name: str, ds: DesiredStatus, config: UnitConfig | None) -> Mutation:
    return Mutation(name, rep(ds, unit_config=config), "unitConfig", "")


@edit("unitConfig.presence")
def _uc_presence(draw: Draw, ds: DesiredStatus) -> Mutation | None:
    new = None if ds.unit_config is not None else draw(unit_configs)
    return _with_config("unitConfig.presence", ds, new)


@edit("unitConfig.version")
def _uc_version(draw: Draw, ds: DesiredStatus) -> Mutation | None:
    uc = ds.unit_config
    if uc is None:
        return None
    return _with_config(
        "unitConfig.version", ds, rep(uc, version=_other(draw, versions, uc.version))
    )


@edit("unitConfig.formatVersion")
def _uc_format_version(draw: Draw, ds: DesiredStatus) -> Mutation | None:
    uc = ds.unit_config
    if uc is None:
        return None
    new = rep(uc, format_version=_other(draw, format_versions, uc.format_version))
    return _with_config("unitConfig.formatVersion", ds, new)


@edit("unitConfig.nodes.add")
def _uc_node_add(draw: Draw, ds: DesiredStatus) -> Mutation | None:
    uc = ds.unit_config
    if uc is None:
        return None
    name = _fresh(draw, {n.node.key for n in uc.nodes})
    node = rep(draw(node_configs), node=Identity(codename=name))
    return _with_config("unitConfig.nodes.add", ds, rep(uc, nodes=(*uc.nodes, node)))


@edit("unitConfig.nodes.remove")
def _uc_node_remove(draw: Draw, ds: DesiredStatus) -> Mutation | None:
    uc = ds.unit_config
    if uc is None or not uc.nodes:
        return None
    nodes = _drop_at(uc.nodes, _index(draw, uc.nodes))
    return _with_config("unitConfig.nodes.remove", ds, rep(uc, nodes=nodes))


def _uc_node_edit(name: str, change: Callable[[Draw, NodeConfig], NodeConfig]) -> None:
    @edit(name)
    def run(draw: Draw, ds: DesiredStatus) -> Mutation | None:
        uc = ds.unit_config
        if uc is None or not uc.nodes:
            return None
        i = _index(draw, uc.nodes)
        nodes = _replace_at(uc.nodes, i, change(draw, uc.nodes[i]))
        return _with_config(name, ds, rep(uc, nodes=nodes))


_uc_node_edit("unitConfig.node.labels", lambda d, n: rep(n, labels=_toggle_label(d, n.labels)))
_uc_node_edit("unitConfig.node.priority", lambda d, n: rep(n, priority=n.priority + 1))
_uc_node_edit(
    "unitConfig.node.version", lambda d, n: rep(n, version=_other(d, versions, n.version))
)
_uc_node_edit(
    "unitConfig.node.nodeGroupSubject",
    lambda d, n: rep(n, node_group_subject=_other(d, node_group_subjects, n.node_group_subject)),
)
_uc_node_edit(
    "unitConfig.node.alertRules",
    lambda d, n: rep(n, alert_rules=_other(d, alert_rules, n.alert_rules)),
)
_uc_node_edit(
    "unitConfig.node.resourceRatios",
    lambda d, n: rep(n, resource_ratios=_other(d, resource_ratios, n.resource_ratios)),
)


# items


@edit("item.add")
def _item_add(draw: Draw, ds: DesiredStatus) -> Mutation | None:
    ident = Identity(id=_fresh(draw, {i.item.key for i in ds.items}), type=ItemType.SERVICE)
    new = rep(draw(items), item=ident)
    return Mutation("item.add", rep(ds, items=(*ds.items, new)), "item", ident.key)


@edit("item.remove")
def _item_remove(draw: Draw, ds: DesiredStatus) -> Mutation | None:
    if not ds.items:
        return None
    i = _index(draw, ds.items)
    return Mutation(
        "item.remove", rep(ds, items=_drop_at(ds.items, i)), "item", ds.items[i].item.key
    )


def _item_edit(
    name: str, change: Callable[[Draw, DesiredStatus, DesiredItem], DesiredItem]
) -> None:
    @edit(name)
    def run(draw: Draw, ds: DesiredStatus) -> Mutation | None:
        if not ds.items:
            return None
        i = _index(draw, ds.items)
        new = change(draw, ds, ds.items[i])
        return Mutation(name, rep(ds, items=_replace_at(ds.items, i, new)), "item", new.item.key)


_item_edit(
    "item.id",
    lambda d, ds, i: rep(i, item=rep(i.item, id=_fresh(d, {x.item.key for x in ds.items}))),
)
_item_edit(
    "item.type",
    lambda d, ds, i: rep(
        i, item=rep(i.item, type=_other(d, st.sampled_from(ITEM_TYPES), i.item.type))
    ),
)
_item_edit("item.version", lambda d, ds, i: rep(i, version=_other(d, versions, i.version)))
_item_edit(
    "item.indexDigest", lambda d, ds, i: rep(i, index_digest=_other(d, digests, i.index_digest))
)
_item_edit("item.owner", lambda d, ds, i: rep(i, owner=_other(d, st.none() | by_id(), i.owner)))


# instances


@edit("instance.add")
def _instance_add(draw: Draw, ds: DesiredStatus) -> Mutation | None:
    if not ds.instances:
        return None
    i = _index(draw, ds.instances)
    old = ds.instances[i]
    new = rep(old, num_instances=old.num_instances + 1)
    key = f"{old.item.key}/{old.subject.key}/{old.num_instances}"
    return Mutation(
        "instance.add", rep(ds, instances=_replace_at(ds.instances, i, new)), "instance", key
    )


@edit("instance.remove")
def _instance_remove(draw: Draw, ds: DesiredStatus) -> Mutation | None:
    running = [n for n, i in enumerate(ds.instances) if i.num_instances]
    if not running:
        return None
    i = draw(st.sampled_from(running))
    old = ds.instances[i]
    new = rep(old, num_instances=old.num_instances - 1)
    key = f"{old.item.key}/{old.subject.key}/{old.num_instances - 1}"
    values = _replace_at(ds.instances, i, new)
    return Mutation("instance.remove", rep(ds, instances=values), "instance", key)


def _instance_edit(name: str, change: Callable[[Draw, DesiredInstance], DesiredInstance]) -> None:
    @edit(name)
    def run(draw: Draw, ds: DesiredStatus) -> Mutation | None:
        if not ds.instances:
            return None
        i = _index(draw, ds.instances)
        old = ds.instances[i]
        values = _replace_at(ds.instances, i, change(draw, old))
        return Mutation(name, rep(ds, instances=values), name, f"{old.item.key}/{old.subject.key}")


_instance_edit("instance.priority", lambda d, i: rep(i, priority=i.priority + 1))
_instance_edit("instance.labels", lambda d, i: rep(i, labels=_toggle_label(d, i.labels)))


# subjects


@edit("subject.add")
def _subject_add(draw: Draw, ds: DesiredStatus) -> Mutation | None:
    ident = Identity(id=_fresh(draw, {s.identity.key for s in ds.subjects}))
    new = rep(draw(subjects), identity=ident)
    return Mutation("subject.add", rep(ds, subjects=(*ds.subjects, new)), "subject", ident.key)


def _subject_edit(name: str, change: Callable[[DesiredSubject], DesiredSubject | None]) -> None:
    @edit(name)
    def run(draw: Draw, ds: DesiredStatus) -> Mutation | None:
        if not ds.subjects:
            return None
        i = _index(draw, ds.subjects)
        new = change(ds.subjects[i])
        values = _drop_at(ds.subjects, i) if new is None else _replace_at(ds.subjects, i, new)
        return Mutation(name, rep(ds, subjects=values), "subject", ds.subjects[i].identity.key)


_subject_edit("subject.remove", lambda s: None)
_subject_edit("subject.type", lambda s: rep(s, type=next(t for t in SubjectType if t != s.type)))
_subject_edit(
    "subject.isReportedFromUnit",
    lambda s: rep(s, is_reported_from_unit=not s.is_reported_from_unit),
)


# certificates and chains


@edit("certificate.add")
def _cert_add(draw: Draw, ds: DesiredStatus) -> Mutation | None:
    fingerprint = _fresh(draw, {c.fingerprint for c in ds.certificates})
    new = Certificate(draw(st.binary(min_size=1, max_size=4)), fingerprint)
    values = (*ds.certificates, new)
    return Mutation("certificate.add", rep(ds, certificates=values), "certificate", fingerprint)


def _cert_edit(name: str, change: Callable[[Certificate], Certificate | None]) -> None:
    @edit(name)
    def run(draw: Draw, ds: DesiredStatus) -> Mutation | None:
        if not ds.certificates:
            return None
        i = _index(draw, ds.certificates)
        old = ds.certificates
        new = change(old[i])
        values = _drop_at(old, i) if new is None else _replace_at(old, i, new)
        return Mutation(name, rep(ds, certificates=values), "certificate", old[i].fingerprint)


_cert_edit("certificate.remove", lambda c: None)
_cert_edit("certificate.bytes", lambda c: rep(c, certificate=c.certificate + b"\x00"))


@edit("chain.add")
def _chain_add(draw: Draw, ds: DesiredStatus) -> Mutation | None:
    new = CertificateChain(_fresh(draw, {c.name for c in ds.certificate_chains}), (draw(keys),))
    values = (*ds.certificate_chains, new)
    return Mutation("chain.add", rep(ds, certificate_chains=values), "certificateChain", new.name)


def _chain_edit(name: str, change: Callable[[CertificateChain], CertificateChain | None]) -> None:
    @edit(name)
    def run(draw: Draw, ds: DesiredStatus) -> Mutation | None:
        old = ds.certificate_chains
        # an edit that leaves the chain as it was (rotating ("a", "a")) is no edit
        candidates = [n for n, c in enumerate(old) if change(c) != c]
        if not candidates:
            return None
        i = draw(st.sampled_from(candidates))
        new = change(old[i])
        values = _drop_at(old, i) if new is None else _replace_at(old, i, new)
        return Mutation(name, rep(ds, certificate_chains=values), "certificateChain", old[i].name)


_chain_edit("chain.remove", lambda c: None)
_chain_edit("chain.fingerprints", lambda c: rep(c, fingerprints=(*c.fingerprints, "extra")))
# the signing certificate comes first: the order of a chain is part of it
_chain_edit("chain.order", lambda c: rep(c, fingerprints=(*c.fingerprints[1:], c.fingerprints[0])))


@st.composite
def mutations(draw: Draw, ds: DesiredStatus, name: str) -> Mutation:
    """The edit `name` applied to `ds`; rejected (hypothesis `assume`) when it does not apply."""
    mutation = MUTATIONS[name](draw, ds)
    assume(mutation is not None)
    assert mutation is not None
    return mutation
