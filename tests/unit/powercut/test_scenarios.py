"""The matrix's three-node scenario spreads as it says, by the real placement rules.

The matrix's SM rows need node-2 to run one instance of each item (a blob of each fetched, two
containers created and started, svc-alpha's replaced in the upgrade), and every node to get
work; the placement is a pure function of the nodes' RAM and the items' configs, so it is
checked here without an engine.
"""

from __future__ import annotations

from collections import Counter

import pytest

from aoscore_py.cloud.oci import OciImage
from aoscore_py.cm.launcher.scenario import Scenario, plan
from aoscore_py.powercut import scenarios
from aoscore_py.powercut.scenarios import (
    ALPHA,
    BETA,
    FIRST_PLACEMENT,
    ITEM_RAM,
    MIB,
    NODE_RAM,
    SM_NODE,
    desired,
    qualifying_problems,
    upgraded,
    with_bumped_unit_config,
)
from aoscore_py.protocol import (
    ArchInfo,
    Identity,
    NodeInfo,
    NodeState,
    OsInfo,
    RuntimeInfo,
)


def image(n: int) -> OciImage:
    return OciImage(f"pc-{n}", "sha256:" + f"{n:x}" * 64, {})


IMAGES = {ALPHA: image(1), BETA: image(2)}


def nodes() -> tuple[NodeInfo, ...]:
    """The three nodes as their SMs describe them (`aoscore sm --total-ram`): one docker
    runtime each, on linux/amd64."""
    return tuple(
        NodeInfo(
            Identity(codename=node),
            NodeState.PROVISIONED,
            True,
            total_ram=ram,
            runtimes=(
                RuntimeInfo(
                    Identity(codename="docker"),
                    "docker",
                    ArchInfo("amd64"),
                    OsInfo("linux"),
                    total_ram=ram,
                ),
            ),
        )
        for node, ram in NODE_RAM.items()
    )


def placed(ds=None) -> dict[tuple[str, int], str]:
    configs = {item: scenarios.item_config(item) for item in (ALPHA, BETA)}
    out = {}
    for group in plan(Scenario(nodes(), ds or desired(IMAGES), configs)):
        for inst in group.instances:
            assert inst.error_info is None, inst
            out[(group.item.id, inst.instance)] = inst.node.codename
    return out


class TestFirstLaunch:
    def test_the_balancer_places_as_documented(self) -> None:
        assert placed() == FIRST_PLACEMENT

    def test_every_node_gets_work(self) -> None:
        assert set(FIRST_PLACEMENT.values()) == set(NODE_RAM)

    def test_the_sm_rows_node_runs_one_instance_of_each_item(self) -> None:
        on_node = Counter(item for (item, _), node in FIRST_PLACEMENT.items() if node == SM_NODE)
        assert on_node == Counter({ALPHA: 1, BETA: 1})

    def test_it_qualifies(self) -> None:
        assert qualifying_problems(FIRST_PLACEMENT) == []


class TestLaterStatuses:
    def test_the_upgrade_moves_only_svc_alpha_and_keeps_the_placement(self) -> None:
        ds = upgraded(IMAGES, image(3))
        versions = {i.item.id: i.version for i in ds.items}
        assert versions == {ALPHA: "2.0.0", BETA: "1.0.0"}
        assert placed(ds) == FIRST_PLACEMENT

    def test_the_unit_config_bump_is_greater_and_changes_each_node(self) -> None:
        first = desired(IMAGES)
        bumped = with_bumped_unit_config(first)
        assert first.unit_config and bumped.unit_config
        assert (first.unit_config.version, bumped.unit_config.version) == ("1.0.0", "1.1.0")
        assert all(n.labels for n in bumped.unit_config.nodes)
        assert {n.node.codename for n in bumped.unit_config.nodes} == set(NODE_RAM)
        assert bumped.items == first.items and bumped.instances == first.instances


class TestQualifying:
    def test_an_instance_moved_where_it_fits_qualifies(self) -> None:
        assert qualifying_problems({**FIRST_PLACEMENT, (BETA, 0): "node-3"}) == []

    @pytest.mark.parametrize(
        ("move", "problem"),
        [
            ({(ALPHA, 0): "node-1"}, "node-1 runs 2048 MiB of instances, more than its RAM"),
            ({(BETA, 0): "node-9"}, "svc-beta 0 runs on 'node-9', not a node of the unit"),
        ],
    )
    def test_a_node_without_room_or_outside_the_unit_does_not(self, move, problem) -> None:
        assert problem in qualifying_problems({**FIRST_PLACEMENT, **move})

    def test_the_items_ask_for_what_the_table_says(self) -> None:
        config = scenarios.item_config(ALPHA)
        assert config.requested_resources and config.requested_resources.ram == ITEM_RAM[ALPHA]
        assert ITEM_RAM[BETA] == 512 * MIB
