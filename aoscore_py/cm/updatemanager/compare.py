"""Compare two desired statuses: a pure function, the one rule for "identical or not".

A new desired status that compares empty against the one in progress is ignored; any change
cancels the running phase and restarts the cycle. Compared: node states, the unit config,
items (id, type, version, index digest, owner), instances (item, subject, index) with their
priority and labels, subjects, certificates and chains. Order of entries does not matter.
Not compared: correlationId and anything the protocol ignores.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from ...nodes import InstanceKey, expand_instances
from ...protocol import DesiredStatus, UnitConfig


@dataclass(frozen=True, order=True)
class Change:
    """One difference: what kind of entry, which one, and how."""

    kind: str
    key: str
    detail: str

    def __str__(self) -> str:
        return (
            f"{self.kind} {self.key}: {self.detail}" if self.key else f"{self.kind}: {self.detail}"
        )


@dataclass(frozen=True)
class Changes:
    """Every difference between two desired statuses, sorted."""

    changes: tuple[Change, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.changes

    def summary(self, limit: int = 5) -> str:
        head = "; ".join(str(c) for c in self.changes[:limit])
        more = len(self.changes) - limit
        return head + (f"; and {more} more" if more > 0 else "") if self.changes else "none"


def _diff_maps(kind: str, old: Mapping[Any, Hashable], new: Mapping[Any, Hashable]) -> list[Change]:
    """Differences between two maps; a tuple key (instances) is shown joined by "/".

    Instances are keyed by tuples, not by joined strings: ("a/b", "c") and ("a", "b/c") are two
    instances, and must not collide into one entry.
    """
    out = []
    for key in sorted(old.keys() | new.keys()):
        name = "/".join(str(part) for part in key) if isinstance(key, tuple) else str(key)
        if key not in old:
            out.append(Change(kind, name, "added"))
        elif key not in new:
            out.append(Change(kind, name, "removed"))
        elif old[key] != new[key]:
            out.append(Change(kind, name, f"{old[key]!r} -> {new[key]!r}"))
    return out


def _unit_config_key(config: UnitConfig | None) -> Hashable:
    if config is None:
        return None
    nodes = tuple(
        sorted(
            (
                n.node.key or "",
                n.node_group_subject,
                n.version,
                n.alert_rules,
                n.resource_ratios,
                tuple(sorted(n.labels)),
                n.priority,
            )
            for n in config.nodes
        )
    )
    return (config.version, config.format_version, nodes)


def _instance_indexes(ds: DesiredStatus) -> dict[InstanceKey, Hashable]:
    return dict.fromkeys((key for key, _ in expand_instances(ds.instances)), True)


def compare(current: DesiredStatus | None, new: DesiredStatus) -> Changes:
    """What differs between the desired status in progress (`current`) and `new`.

    With no current status everything is new: the first desired status is never ignored.
    """
    if current is None:
        return Changes((Change("desiredStatus", "", "first one"),))
    changes: list[Change] = []
    changes += _diff_maps(
        "node",
        {n.item.key or "": n.state.value for n in current.nodes},
        {n.item.key or "": n.state.value for n in new.nodes},
    )
    old_uc, new_uc = _unit_config_key(current.unit_config), _unit_config_key(new.unit_config)
    if old_uc != new_uc:
        old_v = current.unit_config.version if current.unit_config else None
        new_v = new.unit_config.version if new.unit_config else None
        detail = f"{old_v!r} -> {new_v!r}" if old_v != new_v else f"{new_v!r}, content changed"
        changes.append(Change("unitConfig", "", detail))
    changes += _diff_maps(
        "item",
        {
            i.item.key or "": (i.item.type, i.version, i.index_digest, i.owner)
            for i in current.items
        },
        {i.item.key or "": (i.item.type, i.version, i.index_digest, i.owner) for i in new.items},
    )
    changes += _diff_maps("instance", _instance_indexes(current), _instance_indexes(new))
    for field in ("priority", "labels"):
        changes += _diff_maps(
            f"instance.{field}",
            {(i.item.key, i.subject.key): _norm(getattr(i, field)) for i in current.instances},
            {(i.item.key, i.subject.key): _norm(getattr(i, field)) for i in new.instances},
        )
    changes += _diff_maps(
        "subject",
        {s.identity.key or "": (s.type.value, s.is_reported_from_unit) for s in current.subjects},
        {s.identity.key or "": (s.type.value, s.is_reported_from_unit) for s in new.subjects},
    )
    changes += _diff_maps(
        "certificate",
        {c.fingerprint: c.certificate for c in current.certificates},
        {c.fingerprint: c.certificate for c in new.certificates},
    )
    changes += _diff_maps(
        "certificateChain",
        {c.name: c.fingerprints for c in current.certificate_chains},
        {c.name: c.fingerprints for c in new.certificate_chains},
    )
    return Changes(tuple(sorted(changes)))


def _norm(value: object) -> Hashable:
    if isinstance(value, tuple):
        return tuple(sorted(value))
    return value  # type: ignore[return-value]
