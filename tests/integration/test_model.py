"""The stateful model of a three-node unit (powercut/model.py) over the real processes: pushes,
CM and node power cuts, the cloud away and back; the invariants after every step and
convergence on the latest desired status once settled.

CI size: 2 examples of up to 4 steps (AOSCORE_MODEL_EXAMPLES, AOSCORE_MODEL_STEPS raise it;
`scripts/bench model --examples N` runs more). A failure prints hypothesis's steps, the seed
and the `model.step` log lines; replay it with the same steps by
`pytest tests/integration/test_model.py --hypothesis-seed=N` (or AOSCORE_MODEL_SEED=N).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis.stateful import run_state_machine_as_test

from aoscore_py.powercut.model import (
    INSTALL,
    ModelBench,
    Stats,
    UnitModel,
    choose_seed,
    default_settings,
    machine_for,
    open_bench,
)
from aoscore_py.sm.docker_runtime import LABEL_NODE, DockerRuntime

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bench(
    tmp_path_factory: pytest.TempPathFactory, docker_runtime: DockerRuntime
) -> Iterator[ModelBench]:
    """The registry, the cloud and the published images, once for the module."""
    with open_bench(tmp_path_factory.mktemp("model")) as opened:
        yield opened


@pytest.mark.timeout(1800)
def test_the_unit_keeps_its_invariants_and_converges(
    bench: ModelBench, request: pytest.FixtureRequest
) -> None:
    given = request.config.getoption("hypothesis_seed", default=None)
    n = choose_seed(int(given) if given is not None else None)
    print(f"model seed {n}: replay with --hypothesis-seed={n}")
    stats = Stats()
    run_state_machine_as_test(machine_for(bench, stats, n), settings=default_settings())
    assert stats.examples >= 1


@pytest.mark.timeout(600)
def test_the_checks_see_what_a_node_power_loss_does(bench: ModelBench) -> None:
    """The invariants are not vacuous: the recorder sees node-2's containers die and start
    again, the cloud recorded the unit's ack of its desired status, and the node's power
    loss counts no crash."""
    model = UnitModel(bench)
    try:
        model.start(INSTALL)
        assert model.settle() == []
        model.cut_node("node-2")
        assert model.cuts == ["node-2"]
        assert model.power.cuts and model.power.cuts[0]["process"] == "node-2"
        assert model.settle() == []
        events = model.events.events()
        on_node_2 = [e.action for e in events if e.labels.get(LABEL_NODE) == "node-2"]
        assert on_node_2.count("die") == 2 and on_node_2.count("start") >= 4, on_node_2
        answers = bench.cloud.state.answers(model.unit_id)
        assert [(a["seq"], a["ok"]) for a in answers] == [(1, True)]
    finally:
        model.close()
