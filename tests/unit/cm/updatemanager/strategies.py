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

from hypothesis import strategies as st

from aoscore_py.protocol import (
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


def unique(strategy: st.SearchStrategy[Any], key: Callable[[Any], Hashable], max_size: int = 4):
    return st.lists(strategy, max_size=max_size, unique_by=key).map(tuple)


def by_id(kind: str | None = None) -> st.SearchStrategy[Identity]:
    return keys.map(lambda k: Identity(id=k, type=kind))


by_codename = keys.map(lambda k: Identity(codename=k))

node_statuses = st.builds(DesiredNodeStatus, by_codename, st.sampled_from(DesiredNodeState))
node_configs = st.builds(
    NodeConfig,
    node=by_codename,
    version=st.none() | versions,
    labels=labels,
    priority=priorities,
)
unit_configs = st.builds(
    UnitConfig,
    versions,
    st.just("1"),
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


def reordered(ds: DesiredStatus, rnd: random.Random, correlation_id: str | None) -> DesiredStatus:
    """The same desired status with every list (and label list) shuffled."""

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


@dataclass(frozen=True)
class Mutation:
    """One edit of a desired status, and the change `compare` must report for it."""

    name: str
    desired: DesiredStatus
    kind: str
    key: str


def _replace_at(values: tuple[Any, ...], index: int, value: Any) -> tuple[Any, ...]:
    return values[:index] + (value,) + values[index + 1 :]


def _drop_at(values: tuple[Any, ...], index: int) -> tuple[Any, ...]:
    return values[:index] + values[index + 1 :]


def _fresh(draw: Any, taken: set[str]) -> str:
    return draw(keys.filter(lambda k: k not in taken))


def _other(draw: Any, strategy: st.SearchStrategy[Any], old: Any) -> Any:
    return draw(strategy.filter(lambda v: v != old))


def _toggle_label(draw: Any, current: tuple[str, ...]) -> tuple[str, ...]:
    """Add a label the list lacks, or drop one it has."""
    if current and draw(st.booleans()):
        return _drop_at(current, draw(st.integers(0, len(current) - 1)))
    return (*current, draw(st.sampled_from([x for x in LABELS if x not in current])))


@st.composite
def mutations(draw: Any, ds: DesiredStatus) -> Mutation:  # noqa: C901 - one table of edits
    """A single edit of `ds` in one compared field, keeping the value valid (keys unique)."""
    rep = dataclasses.replace
    options: list[Callable[[], Mutation]] = []

    def pick(values: tuple[Any, ...]) -> int:
        return draw(st.integers(0, len(values) - 1))

    # nodes
    def node_state() -> Mutation:
        i = pick(ds.nodes)
        n = ds.nodes[i]
        other = next(s for s in DesiredNodeState if s != n.state)
        return Mutation(
            "node.state",
            rep(ds, nodes=_replace_at(ds.nodes, i, rep(n, state=other))),
            "node",
            n.item.key,
        )

    def node_remove() -> Mutation:
        i = pick(ds.nodes)
        return Mutation(
            "node.remove", rep(ds, nodes=_drop_at(ds.nodes, i)), "node", ds.nodes[i].item.key
        )

    def node_add() -> Mutation:
        name = _fresh(draw, {n.item.key for n in ds.nodes})
        node = DesiredNodeStatus(Identity(codename=name), draw(st.sampled_from(DesiredNodeState)))
        return Mutation("node.add", rep(ds, nodes=(*ds.nodes, node)), "node", name)

    options.append(node_add)
    if ds.nodes:
        options += [node_state, node_remove]

    # unit config
    uc = ds.unit_config

    def uc_toggle() -> Mutation:
        new = None if uc is not None else draw(unit_configs)
        return Mutation("unitConfig.presence", rep(ds, unit_config=new), "unitConfig", "")

    def uc_with(name: str, new: UnitConfig) -> Mutation:
        return Mutation(name, rep(ds, unit_config=new), "unitConfig", "")

    def uc_version() -> Mutation:
        assert uc is not None
        return uc_with("unitConfig.version", rep(uc, version=_other(draw, versions, uc.version)))

    def uc_node(name: str, edit: Callable[[NodeConfig], NodeConfig]) -> Callable[[], Mutation]:
        def run() -> Mutation:
            assert uc is not None
            i = pick(uc.nodes)
            return uc_with(name, rep(uc, nodes=_replace_at(uc.nodes, i, edit(uc.nodes[i]))))

        return run

    def uc_node_add() -> Mutation:
        assert uc is not None
        name = _fresh(draw, {n.node.key for n in uc.nodes})
        node = NodeConfig(Identity(codename=name), labels=draw(labels), priority=draw(priorities))
        return uc_with("unitConfig.nodes.add", rep(uc, nodes=(*uc.nodes, node)))

    def uc_node_remove() -> Mutation:
        assert uc is not None
        return uc_with("unitConfig.nodes.remove", rep(uc, nodes=_drop_at(uc.nodes, pick(uc.nodes))))

    options.append(uc_toggle)
    if uc is not None:
        options += [uc_version, uc_node_add]
        if uc.nodes:
            options += [
                uc_node(
                    "unitConfig.node.labels", lambda n: rep(n, labels=_toggle_label(draw, n.labels))
                ),
                uc_node("unitConfig.node.priority", lambda n: rep(n, priority=n.priority + 1)),
                uc_node(
                    "unitConfig.node.version",
                    lambda n: rep(n, version=_other(draw, versions, n.version)),
                ),
                uc_node_remove,
            ]

    # items
    def item_edit(name: str, edit: Callable[[DesiredItem], DesiredItem]) -> Callable[[], Mutation]:
        def run() -> Mutation:
            i = pick(ds.items)
            new = edit(ds.items[i])
            return Mutation(
                name, rep(ds, items=_replace_at(ds.items, i, new)), "item", new.item.key
            )

        return run

    taken_items = {i.item.key for i in ds.items}

    def item_add() -> Mutation:
        new = rep(draw(items), item=Identity(id=_fresh(draw, taken_items), type=ItemType.SERVICE))
        return Mutation("item.add", rep(ds, items=(*ds.items, new)), "item", new.item.key)

    def item_remove() -> Mutation:
        i = pick(ds.items)
        return Mutation(
            "item.remove", rep(ds, items=_drop_at(ds.items, i)), "item", ds.items[i].item.key
        )

    options.append(item_add)
    if ds.items:
        options += [
            item_remove,
            item_edit("item.id", lambda i: rep(i, item=rep(i.item, id=_fresh(draw, taken_items)))),
            item_edit(
                "item.type",
                lambda i: rep(
                    i, item=rep(i.item, type=_other(draw, st.sampled_from(ITEM_TYPES), i.item.type))
                ),
            ),
            item_edit("item.version", lambda i: rep(i, version=_other(draw, versions, i.version))),
            item_edit(
                "item.indexDigest",
                lambda i: rep(i, index_digest=_other(draw, digests, i.index_digest)),
            ),
            item_edit(
                "item.owner", lambda i: rep(i, owner=_other(draw, st.none() | by_id(), i.owner))
            ),
        ]

    # instances
    def inst_edit(
        name: str, kind: str, edit: Callable[[DesiredInstance], tuple[DesiredInstance, str]]
    ) -> Callable[[], Mutation]:
        def run() -> Mutation:
            i = pick(ds.instances)
            new, suffix = edit(ds.instances[i])
            key = f"{new.item.key}/{new.subject.key}{suffix}"
            return Mutation(name, rep(ds, instances=_replace_at(ds.instances, i, new)), kind, key)

        return run

    if ds.instances:
        options += [
            inst_edit(
                "instance.add",
                "instance",
                lambda i: (rep(i, num_instances=i.num_instances + 1), f"/{i.num_instances}"),
            ),
            inst_edit(
                "instance.priority",
                "instance.priority",
                lambda i: (rep(i, priority=i.priority + 1), ""),
            ),
            inst_edit(
                "instance.labels",
                "instance.labels",
                lambda i: (rep(i, labels=_toggle_label(draw, i.labels)), ""),
            ),
        ]
        if any(i.num_instances for i in ds.instances):
            running = [n for n, i in enumerate(ds.instances) if i.num_instances]

            def inst_remove() -> Mutation:
                n = draw(st.sampled_from(running))
                old = ds.instances[n]
                new = rep(old, num_instances=old.num_instances - 1)
                key = f"{old.item.key}/{old.subject.key}/{old.num_instances - 1}"
                return Mutation(
                    "instance.remove",
                    rep(ds, instances=_replace_at(ds.instances, n, new)),
                    "instance",
                    key,
                )

            options.append(inst_remove)

    # subjects
    taken_subjects = {s.identity.key for s in ds.subjects}

    def subject_add() -> Mutation:
        new = rep(draw(subjects), identity=Identity(id=_fresh(draw, taken_subjects)))
        return Mutation(
            "subject.add", rep(ds, subjects=(*ds.subjects, new)), "subject", new.identity.key
        )

    def subject_edit(
        name: str, edit: Callable[[DesiredSubject], DesiredSubject | None]
    ) -> Callable[[], Mutation]:
        def run() -> Mutation:
            i = pick(ds.subjects)
            new = edit(ds.subjects[i])
            values = _drop_at(ds.subjects, i) if new is None else _replace_at(ds.subjects, i, new)
            return Mutation(name, rep(ds, subjects=values), "subject", ds.subjects[i].identity.key)

        return run

    options.append(subject_add)
    if ds.subjects:
        options += [
            subject_edit("subject.remove", lambda s: None),
            subject_edit(
                "subject.type", lambda s: rep(s, type=next(t for t in SubjectType if t != s.type))
            ),
            subject_edit(
                "subject.isReportedFromUnit",
                lambda s: rep(s, is_reported_from_unit=not s.is_reported_from_unit),
            ),
        ]

    # certificates and chains
    taken_certs = {c.fingerprint for c in ds.certificates}
    taken_chains = {c.name for c in ds.certificate_chains}

    def cert_add() -> Mutation:
        new = Certificate(draw(st.binary(min_size=1, max_size=4)), _fresh(draw, taken_certs))
        return Mutation(
            "certificate.add",
            rep(ds, certificates=(*ds.certificates, new)),
            "certificate",
            new.fingerprint,
        )

    def cert_edit(
        name: str, edit: Callable[[Certificate], Certificate | None]
    ) -> Callable[[], Mutation]:
        def run() -> Mutation:
            i = pick(ds.certificates)
            new = edit(ds.certificates[i])
            values = (
                _drop_at(ds.certificates, i)
                if new is None
                else _replace_at(ds.certificates, i, new)
            )
            return Mutation(
                name, rep(ds, certificates=values), "certificate", ds.certificates[i].fingerprint
            )

        return run

    def chain_add() -> Mutation:
        new = CertificateChain(_fresh(draw, taken_chains), (draw(keys),))
        return Mutation(
            "chain.add",
            rep(ds, certificate_chains=(*ds.certificate_chains, new)),
            "certificateChain",
            new.name,
        )

    def chain_edit(
        name: str, edit: Callable[[CertificateChain], CertificateChain | None]
    ) -> Callable[[], Mutation]:
        def run() -> Mutation:
            i = pick(ds.certificate_chains)
            new = edit(ds.certificate_chains[i])
            old = ds.certificate_chains
            values = _drop_at(old, i) if new is None else _replace_at(old, i, new)
            return Mutation(
                name, rep(ds, certificate_chains=values), "certificateChain", old[i].name
            )

        return run

    options += [cert_add, chain_add]
    if ds.certificates:
        options += [
            cert_edit("certificate.remove", lambda c: None),
            cert_edit("certificate.bytes", lambda c: rep(c, certificate=c.certificate + b"\x00")),
        ]
    if ds.certificate_chains:
        options += [
            chain_edit("chain.remove", lambda c: None),
            chain_edit(
                "chain.fingerprints", lambda c: rep(c, fingerprints=(*c.fingerprints, "extra"))
            ),
        ]
        reorderable = [
            n for n, c in enumerate(ds.certificate_chains) if len(set(c.fingerprints)) > 1
        ]
        if reorderable:

            def chain_order() -> Mutation:
                n = draw(st.sampled_from(reorderable))
                old = ds.certificate_chains[n]
                # the signing certificate comes first: the order is part of the chain
                new = rep(old, fingerprints=(*old.fingerprints[1:], old.fingerprints[0]))
                values = _replace_at(ds.certificate_chains, n, new)
                return Mutation(
                    "chain.order", rep(ds, certificate_chains=values), "certificateChain", old.name
                )

            options.append(chain_order)

    return draw(st.sampled_from(options))()
