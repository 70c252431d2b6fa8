"""A second desired status cancels the work in flight, in any phase, and the unit converges on it.

Real agent, real cloud, real Docker. Each test holds the first cycle in one phase by real means
(a slow cloud, many containers to start, an instance that stays activating) and pushes the
second desired status while the agent reports being in that phase.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aoscore_py.cloud.oci import OciImage
from aoscore_py.cloud.registry import Registry
from aoscore_py.cloud.state import CloudState
from aoscore_py.sm.docker_runtime import DockerRuntime
from aoscore_py.testbed import CloudProcess, push, scenario, wait_converged

from .conftest import Agents

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


def superseded(log_records: list[dict], phase: str) -> dict:
    found = [r for r in log_records if r.get("event") == "cycle.superseded"]
    assert found, "no supersede happened"
    assert found[0]["phase"] == phase, found[0]
    return found[0]


def test_during_downloading(
    agents: Agents,
    slow_cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
) -> None:
    first = scenario([("svc-a", images["it-alpha"])])
    second = scenario([("svc-b", images["it-beta"])], num_instances=1)
    _, log, data_dir = agents.start(unit, cloud_url=slow_cloud.ws_url)
    log.wait_for("link.up")
    assert push(slow_cloud, unit, first)["ok"]
    log.wait_for("phase.entered", phase="downloading")
    assert push(slow_cloud, unit, second)["ok"]

    result = wait_converged(unit, second, slow_cloud, data_dir, docker_runtime, timeout_s=60)
    assert result.ok, result.problems
    record = superseded(log.records(), "downloading")
    assert record["latency_s"] < 1.0
    assert not log.find("item.ready", item="svc-a"), "the first item's download was abandoned"


def test_during_launching(
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
) -> None:
    first = scenario(
        [("svc-a", images["it-alpha"]), ("svc-c", images["it-gamma"])], num_instances=6
    )
    second = scenario([("svc-b", images["it-beta"])], num_instances=2)
    _, log, data_dir = agents.start(unit)
    log.wait_for("link.up")
    assert push(cloud, unit, first)["ok"]
    log.wait_for("phase.entered", phase="launching")
    assert push(cloud, unit, second)["ok"]

    result = wait_converged(unit, second, cloud, data_dir, docker_runtime, timeout_s=60)
    assert result.ok, result.problems
    record = superseded(log.records(), "launching")
    assert record["latency_s"] < 1.0
    first_cycle = log.records().index(record)
    entered = [r["phase"] for r in log.records()[:first_cycle] if r.get("event") == "phase.entered"]
    assert "waitingActive" not in entered, "the first cycle never got past launching"


def test_during_waiting_active(
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
) -> None:
    first = scenario([("svc-stuck", images["it-stuck"])], num_instances=1)
    second = scenario([("svc-a", images["it-alpha"])], num_instances=1)
    _, log, data_dir = agents.start(unit)
    log.wait_for("link.up")
    assert push(cloud, unit, first)["ok"]
    log.wait_for("phase.entered", phase="waitingActive")
    assert push(cloud, unit, second)["ok"]

    result = wait_converged(unit, second, cloud, data_dir, docker_runtime, timeout_s=60)
    assert result.ok, result.problems
    record = superseded(log.records(), "waitingActive")
    assert record["latency_s"] < 1.0, "no waiting out the activation timeout"
