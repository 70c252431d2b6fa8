"""The placement dry run: a scenario file in, the instances section of a v7 unitStatus out.

A scenario is `{"nodes": [v7 unitStatus node objects], "desiredStatus": {...}, "itemConfigs":
{"<item id>": {item config}}, "imagePlatforms": {"<item id>": {"os", "architecture",
"variant"}}, "current": [{"item": {"id"}, "subject": {"id"}, "instance": N, "node":
{"codename"}}]}`; only `nodes`, `desiredStatus` are required. The node states the desired status
asks for (paused, provisioned) are applied first, as the installing phase would before
launching. Digests are read leniently: a dry run does not fetch anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...errors import ProtocolError
from ...nodes import InstanceKey
from ...nodes.itemconfig import ItemConfig, parse_item_config
from ...protocol import (
    DesiredStatus,
    ErrorInfo,
    Identity,
    InstancesStatus,
    InstanceState,
    InstanceStatusInfo,
    NodeInfo,
    UnitStatus,
    parse_message,
    to_json,
)
from ...protocol._json import JsonObject, as_list, child, decode
from .balancer import balance
from .shapes import Platform, demands, node_specs, with_desired_states

MAX_SCENARIO_BYTES = 64 * 1024 * 1024
"""Largest scenario file read: room for thousands of nodes, instances."""


@dataclass(frozen=True)
class Scenario:
    """A unit as the dry run sees it."""

    nodes: tuple[NodeInfo, ...]
    desired: DesiredStatus
    item_configs: Mapping[str, ItemConfig] = field(default_factory=dict)
    image_platforms: Mapping[str, Platform] = field(default_factory=dict)
    current: Mapping[InstanceKey, str] = field(default_factory=dict)


def _within(path: str, exc: ProtocolError) -> ProtocolError:
    """`exc`, its path moved under `path` (the reader saw the part as a whole message)."""
    return ProtocolError(path + exc.path[1:], exc.reason, code=exc.code)


def _platform(value: Any, path: str) -> Platform:
    o = JsonObject.of(value, path)
    return Platform(o.opt_str("os"), o.opt_str("architecture"), o.opt_str("variant"))


def _by_item(o: JsonObject, key: str, read) -> dict[str, Any]:
    """An object keyed by item id, each entry read at its own path."""
    value = o.get(key)
    if value is None:
        return {}
    path = JsonObject.of(value, o.child(key)).path
    return {name: read(entry, child(path, name)) for name, entry in value.items()}


def _current(value: Any, path: str) -> tuple[InstanceKey, str]:
    o = JsonObject.of(value, path)
    item = JsonObject.of(o.require("item"), o.child("item")).req_str("id")
    subject = JsonObject.of(o.require("subject"), o.child("subject")).req_str("id")
    node = JsonObject.of(o.require("node"), o.child("node")).req_str("codename")
    return InstanceKey(item, subject, o.req_int("instance", minimum=0)), node


def read_scenario(raw: bytes | str) -> Scenario:
    """Read a scenario file's text.

    Raises:
        ProtocolError: malformed; the path names the bad value from the file's root, e.g.
            `$.desiredStatus.instances[0].numInstances` or `$.itemConfigs["svc"].quotas`.
    """
    o = JsonObject.of(decode(raw, max_bytes=MAX_SCENARIO_BYTES), "$")
    nodes = as_list(o.require("nodes"), "$.nodes")
    status = parse_message({"messageType": "unitStatus", "nodes": nodes})
    assert isinstance(status, UnitStatus)
    raw_desired = o.require("desiredStatus")
    try:
        desired = parse_message(raw_desired, message_type="desiredStatus", strict_digests=False)
    except ProtocolError as exc:
        raise _within("$.desiredStatus", exc) from None
    assert isinstance(desired, DesiredStatus)
    return Scenario(
        nodes=status.nodes or (),
        desired=desired,
        item_configs=_by_item(o, "itemConfigs", parse_item_config),
        image_platforms=_by_item(o, "imagePlatforms", _platform),
        current=dict(o.array("current", _current)),
    )


def plan(scenario: Scenario) -> tuple[InstancesStatus, ...]:
    """Place the scenario's instances: placed ones `activating` with node, runtime; others
    `failed` with the reason. One entry per (item, subject) group, sorted by ids."""
    desired = scenario.desired
    states = {n.item.key or "": str(n.state) for n in desired.nodes}
    nodes = with_desired_states(node_specs(scenario.nodes, desired.unit_config), states)
    wanted = demands(desired, scenario.item_configs, scenario.image_platforms)
    versions = {item.item.key: item.version for item in desired.items}
    identities = {(g.item.key, g.subject.key): (g.item, g.subject) for g in desired.instances}
    out = []
    for group in balance(wanted, nodes, scenario.current):
        if not group.slots:
            continue
        item, subject = identities[(group.item, group.subject)]
        instances = []
        for index, slot in enumerate(group.slots):
            placed = slot.node is not None
            instances.append(
                InstanceStatusInfo(
                    node=Identity(codename=slot.node or ""),
                    runtime=Identity(codename=slot.runtime or ""),
                    instance=index,
                    state=InstanceState.ACTIVATING if placed else InstanceState.FAILED,
                    error_info=None if placed else ErrorInfo(slot.code, 0, slot.reason),
                )
            )
        version = versions.get(group.item, "")
        out.append(InstancesStatus(item, subject, version, tuple(instances)))
    return tuple(out)


def instances_json(statuses: tuple[InstancesStatus, ...]) -> dict[str, Any]:
    """`{"instances": [...]}` as a v7 unitStatus writes its instances section."""
    return {"instances": to_json(UnitStatus(instances=statuses))["instances"]}
