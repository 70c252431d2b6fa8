"""The agent end to end: real cloud process, registry, Docker engine and SQLite file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from aoscore_py.cloud.oci import OciImage
from aoscore_py.cloud.ordering import unit_view
from aoscore_py.cloud.registry import Registry
from aoscore_py.cloud.service import publish
from aoscore_py.powercut.testbed import (
    CloudProcess,
    cycle_journal,
    operate,
    push,
    scenario,
    timeline_until,
    wait_converged,
)
from aoscore_py.protocol import (
    DesiredInstance,
    DesiredStatus,
    Envelope,
    Identity,
    dump_frame,
    new_header,
    parse_message,
)
from aoscore_py.sm.docker_runtime import (
    LABEL_IMAGE,
    LABEL_INSTANCE,
    LABEL_ITEM,
    LABEL_NODE,
    LABEL_SUBJECT,
    LABEL_UNIT,
    LABEL_VERSION,
    ContainerSpec,
    DockerRuntime,
)

from .conftest import Agents

pytestmark = pytest.mark.integration


def test_converges_with_every_phase_journalled_and_labelled_containers(
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
) -> None:
    ds = scenario([("svc-a", images["it-alpha"]), ("svc-b", images["it-beta"])])
    _, log, data_dir = agents.start(unit)
    log.wait_for("link.up")
    answer = push(cloud, unit, ds)
    assert answer["ok"], answer

    result = wait_converged(unit, ds, cloud, data_dir, docker_runtime)
    assert result.ok, result.problems

    phases = [r.to_phase for r in cycle_journal(data_dir)]
    assert phases == [
        "downloading",
        "pending",
        "installing",
        "launching",
        "waitingActive",
        "finalizing",
        "none",
    ]
    stored = log.find("desired.stored")[0]
    acked = [r for r in log.records() if r.get("event") == "message.received"]
    assert stored and acked, "the desired status was stored on arrival"

    containers = docker_runtime.list_containers({LABEL_UNIT: unit})
    labels = sorted(
        (
            c.labels[LABEL_ITEM],
            c.labels[LABEL_SUBJECT],
            c.labels[LABEL_INSTANCE],
            c.labels[LABEL_VERSION],
            c.labels[LABEL_NODE],
        )
        for c in containers
    )
    assert labels == [
        ("svc-a", "subj1", "0", "1.0.0", "node-1"),
        ("svc-a", "subj1", "1", "1.0.0", "node-1"),
        ("svc-b", "subj1", "0", "1.0.0", "node-1"),
        ("svc-b", "subj1", "1", "1.0.0", "node-1"),
    ]
    last = unit_view(cloud.state.timeline(unit))
    assert last["isDeltaInfo"] is False, "a full status went out after the cycle"
    assert {i["state"] for i in last["items"]} == {"installed"}
    assert last["unitConfig"] == [{"version": "1.0.0", "state": "installed"}]
    assert isinstance(last["bootId"], str) and last["seq"] >= 2


def test_identical_desired_status_is_ignored_and_still_reports(
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
) -> None:
    ds = scenario([("svc-a", images["it-alpha"])], num_instances=1)
    _, log, data_dir = agents.converged(unit, ds, docker_runtime)
    before = len(cycle_journal(data_dir))
    statuses = len(cloud.state.timeline(unit))

    assert push(cloud, unit, replace(ds, correlation_id="again"))["ok"]
    log.wait_for("desired.ignored")
    sent = log.wait_for("status.full", reason="desired status needs no update")
    assert len(cycle_journal(data_dir)) == before, "no new cycle"
    timeline = timeline_until(cloud, unit, sent["seq"])
    assert len(timeline) > statuses
    seqs = [r["unitStatus"]["seq"] for r in timeline]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_desired_statuses_are_ordered_by_the_clouds_seq(
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
) -> None:
    """The cloud stamps each push with the unit's next seq; one the network delivers late (a
    replay of an older one, here) is acked, logged stale, and changes nothing."""
    first = scenario([("svc-a", images["it-alpha"])], num_instances=1)
    _, log, data_dir = agents.converged(unit, first, docker_runtime)
    second = scenario([("svc-a", images["it-alpha"])], num_instances=2)
    assert push(cloud, unit, second)["ok"]
    assert wait_converged(unit, second, cloud, data_dir, docker_runtime).ok
    stamped = parse_message(cloud.state.desired(unit) or b"", message_type="desiredStatus")
    assert isinstance(stamped, DesiredStatus) and stamped.seq == 2
    before = len(cycle_journal(data_dir))

    late = dump_frame(Envelope(new_header(unit), replace(first, seq=1))).decode()
    answer = operate(cloud, {"op": "raw", "unit": unit, "frame": late})
    assert answer.get("ok"), answer
    log.wait_for("desired.stale", seq=1, in_force_seq=2)
    assert len(cycle_journal(data_dir)) == before, "no cycle for a stale desired status"
    assert wait_converged(unit, second, cloud, data_dir, docker_runtime).ok


def test_change_of_priority_alone_runs_a_cycle(
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
) -> None:
    ds = scenario([("svc-a", images["it-alpha"])], num_instances=1)
    _, log, data_dir = agents.converged(unit, ds, docker_runtime)
    cycles = [r for r in cycle_journal(data_dir) if r.to_phase == "downloading"]

    changed = replace(ds, instances=(replace(ds.instances[0], priority=99),))
    assert push(cloud, unit, changed)["ok"]
    record = log.wait_for("desired.stored", after=0, timeout_s=10)
    assert record
    assert wait_converged(unit, changed, cloud, data_dir, docker_runtime).ok
    restarts = [r for r in cycle_journal(data_dir) if r.to_phase == "downloading"]
    assert len(restarts) == len(cycles) + 1
    assert "instance.priority" in log.find("desired.stored")[-1]["changes"]


def test_restart_adopts_containers_and_removes_what_is_not_desired(
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
) -> None:
    ds = scenario([("svc-a", images["it-alpha"]), ("svc-b", images["it-beta"])])
    proc, _, data_dir = agents.converged(unit, ds, docker_runtime)
    ids = {c.id for c in docker_runtime.list_containers({LABEL_UNIT: unit})}
    assert proc.stop() == 0

    stray_labels = {
        LABEL_UNIT: unit,
        LABEL_NODE: "node-1",
        LABEL_ITEM: "svc-old",
        LABEL_SUBJECT: "subj1",
        LABEL_INSTANCE: "0",
        LABEL_VERSION: "0.1",
        LABEL_IMAGE: images["it-alpha"].config_digest,
    }
    stray = docker_runtime.create_container(
        ContainerSpec(f"stray-{unit}", images["it-alpha"].config_digest, stray_labels)
    )
    docker_runtime.start_container(stray)

    fewer = replace(
        ds,
        instances=(
            ds.instances[0],
            DesiredInstance(Identity(id="svc-b"), Identity(id="subj1"), 10, 1),
        ),
    )
    _, log2, _ = agents.start(unit)
    log2.wait_for("link.up")
    assert push(cloud, unit, fewer)["ok"]
    assert wait_converged(unit, fewer, cloud, data_dir, docker_runtime).ok
    after = {c.id for c in docker_runtime.list_containers({LABEL_UNIT: unit})}
    assert stray not in after
    assert len(after) == 3 and after < ids, "kept the three still desired, started nothing twice"


@pytest.mark.parametrize(
    ("image", "command", "reason"),
    [
        ("it-crash", ["/bin/sh", "-c", "sleep 0.2; exit 3"], "keeps exiting"),
        ("it-noexec", ["/bin/no-such-program"], "no-such-program"),
    ],
    ids=["crash-loop", "cannot-start"],
)
def test_a_failing_instance_is_reported_failed_without_waiting_out_the_timeout(
    agents: Agents,
    cloud: CloudProcess,
    unit: str,
    image: str,
    command: list[str],
    reason: str,
) -> None:
    failing = publish(
        cloud.cloud_dir, image, registry_url=cloud.endpoints["registry"], command=command
    )
    ds = scenario([("svc-failing", failing)], num_instances=1)
    _, log, _ = agents.start(unit, extra=("--active-timeout", "120"))
    log.wait_for("link.up")
    assert push(cloud, unit, ds)["ok"]
    ended = log.wait_for("cycle.ended", timeout_s=60)
    assert ended["phase"] == "none"
    assert not log.find("wait_active.timeout")
    sent = log.wait_for("status.full", reason="cycle ended in none")
    last = timeline_until(cloud, unit, sent["seq"])[-1]["unitStatus"]
    (instance,) = last["instances"][0]["instances"]
    assert instance["state"] == "failed"
    assert reason in instance["errorInfo"]["message"]


def test_a_cycle_that_failed_on_a_passing_outage_is_retried_until_it_converges(
    agents: Agents,
    tmp_path: Path,
    unit: str,
    docker_runtime: DockerRuntime,
) -> None:
    own = Registry(tmp_path / "registry").start()
    cloud = CloudProcess(tmp_path / "cloud", own.url).start()
    agents.cloud = cloud
    try:
        image = publish(cloud.cloud_dir, "it-retry", registry_url=own.url)
        port = own.port
        own.stop()
        ds = scenario([("svc-retry", image)], num_instances=1)
        _, log, data_dir = agents.start(unit)
        log.wait_for("link.up")
        assert push(cloud, unit, ds)["ok"]
        log.wait_for("item.failed", item="svc-retry")
        log.wait_for("cycle.retry_scheduled", reason="the cycle failed")

        own = Registry(tmp_path / "registry", port=port).start()
        result = wait_converged(unit, ds, cloud, data_dir, docker_runtime, timeout_s=60)
        assert result.ok, result.problems
    finally:
        agents.stop_all()
        cloud.stop()
        own.stop()
