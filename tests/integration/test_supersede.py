"""A second desired status cancels the work in flight, in any phase, and the unit converges on it.

Real agent, real cloud, real Docker. Each test holds the first cycle in one phase by real means
(a slow cloud, many containers to start, an instance that stays activating) and pushes the
second desired status while the agent reports being in that phase.

These tests check behaviour: the phase was cut short, the cycle restarted at downloading, the
first cycle's work went no further, the unit converged on the second status. How fast the cut
is (the agent's own "superseding message received -> old phase task finished") is a figure,
reported by `scripts/bench supersede` (median per phase), not asserted here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aoscore_py.cloud.oci import OciImage
from aoscore_py.cloud.registry import Registry
from aoscore_py.cloud.state import CloudState
from aoscore_py.powercut.testbed import CloudProcess, SupersedeRun, scenario, supersede_run
from aoscore_py.sm.docker_runtime import DockerRuntime

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def slow_cloud(
    tmp_path_factory: pytest.TempPathFactory,
    registry: Registry,
    cloud: CloudProcess,
    images: dict[str, OciImage],
) -> Iterator[CloudProcess]:
    """A cloud that answers requestBlobUrls only after 2 s, serving the same images."""
    slow = CloudProcess(tmp_path_factory.mktemp("slow-cloud"), registry.url, blob_urls_delay_s=2.0)
    state = CloudState(slow.cloud_dir)
    for name, image in images.items():
        state.add_blobs(name, image.blobs)
    slow.start()
    yield slow
    slow.stop()


def cut_short_and_restarted(run: SupersedeRun, phase: str) -> list[dict[str, object]]:
    """Check the first cycle was still in `phase` when the second status came (so the phase was
    cancelled, not finished) and that the cycle then restarted at downloading; returns the log
    records before the cut."""
    assert run.superseded_in == phase
    assert run.convergence.ok, run.convergence.problems
    records = run.log.records()
    cut = records.index(run.log.find("cycle.superseded")[0])
    entered = [(i, r) for i, r in enumerate(records) if r.get("event") == "phase.entered"]
    before = [r for i, r in entered if i < cut]
    after = [r for i, r in entered if i > cut]
    assert before and before[-1]["phase"] == phase, "the phase never ended by itself"
    assert after, "the cycle restarted"
    assert (after[0]["phase"], after[0]["previous"], after[0]["trigger"]) == (
        "downloading",
        phase,
        "supersede",
    )
    return records[:cut]


def test_during_downloading(
    slow_cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
    tmp_path: Path,
) -> None:
    first = scenario([("svc-a", images["it-alpha"])])
    second = scenario([("svc-b", images["it-beta"])], num_instances=1)
    run = supersede_run(slow_cloud, docker_runtime, tmp_path, unit, first, second, "downloading")
    cut_short_and_restarted(run, "downloading")
    assert not run.log.find("item.ready", item="svc-a"), "the first item's download was abandoned"


def test_during_launching(
    cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
    tmp_path: Path,
) -> None:
    first = scenario(
        [("svc-a", images["it-alpha"]), ("svc-c", images["it-gamma"])], num_instances=6
    )
    second = scenario([("svc-b", images["it-beta"])], num_instances=2)
    run = supersede_run(cloud, docker_runtime, tmp_path, unit, first, second, "launching")
    before = cut_short_and_restarted(run, "launching")
    entered = [r["phase"] for r in before if r.get("event") == "phase.entered"]
    assert "waitingActive" not in entered, "the first cycle never got past launching"


def test_during_waiting_active(
    cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
    tmp_path: Path,
) -> None:
    first = scenario([("svc-stuck", images["it-stuck"])], num_instances=1)
    second = scenario([("svc-a", images["it-alpha"])], num_instances=1)
    run = supersede_run(cloud, docker_runtime, tmp_path, unit, first, second, "waitingActive")
    before = cut_short_and_restarted(run, "waitingActive")
    assert not run.log.find("wait_active.timeout"), "no waiting out the activation timeout"
    entered = [r["phase"] for r in before if r.get("event") == "phase.entered"]
    assert "finalizing" not in entered, "the first cycle never got past waitingActive"
