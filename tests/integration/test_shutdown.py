"""SIGINT or SIGTERM: stop taking messages, cancel the running phase at its next await with the
journal consistent, close the cloud link, exit 0. Containers keep running; the next start
resumes at the interrupted phase."""

from __future__ import annotations

import signal

import pytest

from aoscore_py.cloud.oci import OciImage
from aoscore_py.powercut.testbed import (
    CloudProcess,
    cycle_journal,
    cycle_phase,
    push,
    scenario,
    wait_converged,
)
from aoscore_py.sm.docker_runtime import LABEL_UNIT, DockerRuntime

from .conftest import Agents

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_in_the_middle_of_a_phase_and_resume(
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
    sig: signal.Signals,
) -> None:
    stuck = scenario([("svc-stuck", images["it-stuck"])], num_instances=1)
    proc, log, data_dir = agents.start(unit)
    log.wait_for("link.up")
    assert push(cloud, unit, stuck)["ok"]
    log.wait_for("phase.entered", phase="waitingActive")
    running = [c.id for c in docker_runtime.list_containers({LABEL_UNIT: unit})]
    assert len(running) == 1

    proc.signal(sig)
    assert proc.wait(15) == 0
    log.wait_for("cycle.interrupted", phase="waitingActive")
    log.wait_for("agent.stopped")
    phase, last = cycle_phase(data_dir), cycle_journal(data_dir)[-1]
    assert phase == "waitingActive"
    assert (last.from_phase, last.event, last.to_phase) == (
        "waitingActive",
        "interrupted",
        "waitingActive",
    )
    assert "shutting down" in last.note
    after = docker_runtime.list_containers({LABEL_UNIT: unit})
    assert [c.id for c in after] == running and after[0].status == "running"

    _, log2, _ = agents.start(unit)
    log2.wait_for("cycle.resume", phase="waitingActive")
    healthy = scenario([("svc-a", images["it-alpha"])], num_instances=1)
    log2.wait_for("link.up")
    assert push(cloud, unit, healthy)["ok"]
    assert wait_converged(unit, healthy, cloud, data_dir, docker_runtime).ok


def test_stop_when_idle_exits_zero_and_leaves_containers(
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
) -> None:
    ds = scenario([("svc-a", images["it-alpha"])], num_instances=2)
    proc, log, data_dir = agents.converged(unit, ds, docker_runtime)
    assert proc.stop() == 0
    assert not log.find("cycle.interrupted")
    states = [c.status for c in docker_runtime.list_containers({LABEL_UNIT: unit})]
    assert states == ["running", "running"]
    assert cycle_phase(data_dir) == "none"
