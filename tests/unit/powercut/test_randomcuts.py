"""The random-cut schedule and its scenario's steps: pure, the same for the same seed, and every
step with work to cut that the unit's rules allow."""

from __future__ import annotations

import itertools

from aoscore_py.powercut.randomcuts import MAX_DELAY_S, schedule, step_status
from aoscore_py.powercut.scenarios import ALPHA, BETA, NODES
from aoscore_py.powercut.unit import CM
from aoscore_py.sm.nodeconfig import compare_versions

from .test_scenarios import IMAGES, image, placed

ALPHA2 = image(3)


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    assert schedule(30, 1) == schedule(30, 1)
    assert schedule(30, 1) != schedule(30, 2)
    assert schedule(10, 1) == schedule(30, 1)[:10]


def test_cuts_fall_within_a_cycle_and_hit_the_cm_and_every_node() -> None:
    cuts = schedule(30, 1)
    assert [c.step for c in cuts] == list(range(30))
    assert all(0.0 <= c.delay_s <= MAX_DELAY_S for c in cuts)
    assert {c.victim for c in cuts} == {CM, *NODES}
    assert len({c.name for c in cuts}) == 30


def test_each_step_differs_from_the_last_and_its_unit_config_only_goes_up() -> None:
    steps = [step_status(IMAGES, ALPHA2, k, 30) for k in range(30)]
    for before, after in itertools.pairwise(steps):
        assert before != after
        assert before.unit_config and after.unit_config
        assert compare_versions(after.unit_config.version, before.unit_config.version) > 0
    versions = [next(i.version for i in s.items if i.item.id == ALPHA) for s in steps]
    assert versions == ["1.0.0"] * 15 + ["2.0.0"] * 15
    betas = [next(i.num_instances for i in s.instances if i.item.id == BETA) for s in steps]
    assert set(betas) == {1, 2}


def test_every_step_places_on_the_three_nodes() -> None:
    for k in (0, 1, 29):
        assert set(placed(step_status(IMAGES, ALPHA2, k, 30)).values()) <= set(NODES)
