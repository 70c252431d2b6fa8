"""The power-cut matrix's unit and desired statuses: three nodes, two items spread over them.

The nodes offer different RAM and each item asks for RAM in its item config (`aosItemConfig`,
`requestedResources.ram`), so placement by AosCore's rules (most free RAM first, then the node
id) spreads the four instances over all three nodes and puts two of them, one of each item, on
`SM_NODE`, the node whose SM the SM-side rows kill:

    node-1 (1 GiB)   svc-alpha 1
    node-2 (2 GiB)   svc-alpha 0, svc-beta 0
    node-3 (1 GiB)   svc-beta 1

`FIRST_PLACEMENT` says so, and a unit test checks it against the real balancer. After a kill
an instance may land elsewhere (an SM away takes no new instance), so convergence asks for
nodes that qualify (`qualifying_problems`), not for this exact placement.

Pure: desired statuses and the numbers behind them; the images are published by the matrix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import orjson

from ..cloud.oci import OciImage
from ..nodes.itemconfig import ItemConfig, parse_item_config
from ..protocol import (
    DesiredInstance,
    DesiredItem,
    DesiredNodeState,
    DesiredNodeStatus,
    DesiredStatus,
    DesiredSubject,
    Identity,
    NodeConfig,
    SubjectType,
    UnitConfig,
)

MIB = 1 << 20

NODE_RAM: dict[str, int] = {"node-1": 1024 * MIB, "node-2": 2048 * MIB, "node-3": 1024 * MIB}
"""Each node's RAM, as its SM reports it (`aoscore sm --total-ram`)."""

NODES = tuple(NODE_RAM)
SM_NODE = "node-2"
"""The node whose SM the SM-side rows arm: it runs one instance of each item."""

ALPHA, BETA = "svc-alpha", "svc-beta"
ITEM_RAM: dict[str, int] = {ALPHA: 1024 * MIB, BETA: 512 * MIB}
"""RAM one instance of each item asks for (its item config's requestedResources.ram)."""

INSTANCES = 2
"""Instances of each item."""

SUBJECT = "subj1"
UNIT_CONFIG_VERSION = "1.0.0"
BUMPED_UNIT_CONFIG_VERSION = "1.1.0"

FIRST_PLACEMENT: dict[tuple[str, int], str] = {
    (ALPHA, 0): "node-2",  # the most free RAM (2 GiB)
    (ALPHA, 1): "node-1",  # 1 GiB free everywhere: the first node by id
    (BETA, 0): "node-2",  # node-1 is full; node-2 and node-3 tie at 1 GiB
    (BETA, 1): "node-3",  # 1 GiB free against node-2's 512 MiB
}
"""Where the first launch on a fresh unit puts each (item, instance)."""


def item_config(item_id: str) -> ItemConfig:
    """The item config an item's image carries: the RAM one instance asks for."""
    config = parse_item_config(orjson.dumps({"requestedResources": {"ram": ITEM_RAM[item_id]}}))
    assert config is not None
    return config


def unit_config(version: str = UNIT_CONFIG_VERSION) -> UnitConfig:
    """The unit config naming the three nodes, of equal priority; the bumped version labels
    them too, so that its node configs differ in content as well as in version."""
    labels = ("powercut",) if version != UNIT_CONFIG_VERSION else ()
    return UnitConfig(
        version=version,
        format_version="1",
        nodes=tuple(
            NodeConfig(
                node=Identity(codename=node),
                node_group_subject=Identity(codename="main"),
                labels=labels,
                priority=10,
            )
            for node in NODES
        ),
    )


def desired(images: Mapping[str, OciImage], *, version: str = "1.0.0") -> DesiredStatus:
    """Both items at `version` (svc-alpha's image is `images[ALPHA]`), two instances each,
    on the three provisioned nodes."""
    return DesiredStatus(
        nodes=tuple(
            DesiredNodeStatus(Identity(codename=node), DesiredNodeState.PROVISIONED)
            for node in NODES
        ),
        unit_config=unit_config(),
        items=tuple(
            DesiredItem(
                Identity(id=item_id, type="service"),
                version if item_id == ALPHA else "1.0.0",
                images[item_id].index_digest,
                Identity(id="owner1"),
            )
            for item_id in (ALPHA, BETA)
        ),
        instances=tuple(
            DesiredInstance(Identity(id=item_id), Identity(id=SUBJECT), 10, INSTANCES)
            for item_id in (ALPHA, BETA)
        ),
        subjects=(DesiredSubject(Identity(id=SUBJECT), SubjectType.GROUP),),
    )


def upgraded(images: Mapping[str, OciImage], alpha2: OciImage) -> DesiredStatus:
    """svc-alpha at 2.0.0 with its new image: both its instances are replaced blue-green, on
    node-1 and on node-2."""
    return desired({**images, ALPHA: alpha2}, version="2.0.0")


def with_bumped_unit_config(ds: DesiredStatus) -> DesiredStatus:
    """`ds` with a unit config of a greater version: the CM checks and sets each node's config
    again (CheckNodeConfig, SetNodeConfig), and each SM stores it."""
    return replace(ds, unit_config=unit_config(BUMPED_UNIT_CONFIG_VERSION))


def qualifying_problems(placement: Mapping[tuple[str, int], str]) -> list[str]:
    """Why a placement ((item, instance) -> node) is not one the unit's rules allow: a node
    that is not the unit's, or one booked beyond its RAM."""
    problems = []
    booked: dict[str, int] = {}
    for (item_id, index), node in sorted(placement.items()):
        if node not in NODE_RAM:
            problems.append(f"{item_id} {index} runs on {node!r}, not a node of the unit")
            continue
        booked[node] = booked.get(node, 0) + ITEM_RAM.get(item_id, 0)
    for node, ram in sorted(booked.items()):
        if ram > NODE_RAM[node]:
            problems.append(f"{node} runs {ram // MIB} MiB of instances, more than its RAM")
    return problems
