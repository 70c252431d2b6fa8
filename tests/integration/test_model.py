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
    ModelBench,
    Stats,
    choose_seed,
    default_settings,
    machine_for,
    open_bench,
)
from aoscore_py.sm.docker_runtime import DockerRuntime

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
