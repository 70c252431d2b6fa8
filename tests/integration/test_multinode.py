"""A three-node unit for real: the agent (CM only, `--no-local-sm`) and three `aoscore sm`
processes on loopback, mutual TLS with a unit PKI, sharing the real Docker engine, the real
registry and reference cloud.

node-1 and node-3 offer 4 GiB, node-2 1 GiB and carries the label `gpu`. Items ask for RAM in
their item configs (`aosItemConfig`). One test walks the unit through what operators meet:
placement by labels and resources, node-3 paused and resumed, a one-instance version change
done blue-green, an SM and the CM killed with SIGKILL while launching, and a node whose SM stays
away past its node timeout (5 s here) and comes back. Each step ends converged, and Docker's
own events show that only the intended containers were created or removed.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from aoscore_py.cloud.oci import OciImage
from aoscore_py.cloud.ordering import unit_view
from aoscore_py.cloud.registry import Registry
from aoscore_py.cloud.service import publish
from aoscore_py.iam.unitpki import UnitPki, init_unit_pki
from aoscore_py.nodes.itemconfig import parse_item_config
from aoscore_py.powercut.testbed import (
    AgentLog,
    CloudProcess,
    Process,
    push,
    sm_cmd,
)
from aoscore_py.protocol import (
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
from aoscore_py.sm.docker_runtime import (
    LABEL_INSTANCE,
    LABEL_ITEM,
    LABEL_NODE,
    LABEL_UNIT,
    LABEL_VERSION,
    DockerRuntime,
)
from statemachine import ENV_VAR, FAULT_ENV_VAR

from .conftest import Agents

pytestmark = pytest.mark.integration

MIB = 1 << 20
NODES = {"node-1": 4096 * MIB, "node-2": 1024 * MIB, "node-3": 4096 * MIB}
NODE_TIMEOUT_S = 5
Placement = dict[tuple[str, int], str]  # (item, instance) -> node


def item_config(ram_mib: int) -> object:
    return parse_item_config(orjson.dumps({"requestedResources": {"ram": ram_mib * MIB}}))


@pytest.fixture(scope="module")
def published(cloud: CloudProcess, registry: Registry) -> dict[str, OciImage]:
    """big asks 2 GiB, gpu 256 MiB (and a second version), plain 512 MiB, extra 256 MiB."""
    asks = {"big": 2048, "gpu": 256, "gpu-v2": 256, "plain": 512, "extra": 256}
    return {
        name: publish(
            cloud.cloud_dir, f"mn-{name}", registry_url=registry.url, item_config=item_config(ram)
        )
        for name, ram in asks.items()
    }


def desired(
    images: dict[str, OciImage],
    *,
    paused: tuple[str, ...] = (),
    gpu_version: str = "1.0.0",
    big_version: str = "1.0.0",
    extra: bool = False,
) -> DesiredStatus:
    """big (priority 20), gpu (10, label gpu), plain x3 (0), and extra (0) when asked."""
    groups = [("big", 20, 1, ()), ("gpu", 10, 1, ("gpu",)), ("plain", 0, 3, ())]
    if extra:
        groups.append(("extra", 0, 1, ()))
    versions = {"big": big_version, "gpu": gpu_version}
    image_of = {"gpu": "gpu-v2" if gpu_version != "1.0.0" else "gpu"}
    return DesiredStatus(
        nodes=tuple(
            DesiredNodeStatus(
                Identity(codename=n),
                DesiredNodeState.PAUSED if n in paused else DesiredNodeState.PROVISIONED,
            )
            for n in NODES
        ),
        unit_config=UnitConfig(
            "1.0.0",
            "1",
            tuple(
                NodeConfig(Identity(codename=n), labels=("gpu",) if n == "node-2" else ())
                for n in NODES
            ),
        ),
        items=tuple(
            DesiredItem(
                Identity(id=item, type="service"),
                versions.get(item, "1.0.0"),
                images[image_of.get(item, item)].index_digest,
                Identity(id="owner1"),
            )
            for item, *_ in groups
        ),
        instances=tuple(
            DesiredInstance(Identity(id=item), Identity(id="subj1"), priority, count, labels)
            for item, priority, count, labels in groups
        ),
        subjects=(DesiredSubject(Identity(id="subj1"), SubjectType.GROUP),),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Unit:
    """The CM and three SMs of one unit, and the Docker engine they share."""

    unit: str
    root: Path
    agents: Agents
    runtime: DockerRuntime
    pki: UnitPki
    port: int
    sms: dict[str, Process] = field(default_factory=dict)
    agent: Process | None = None
    log: AgentLog | None = None
    data_dir: Path | None = None

    def start_agent(self) -> None:
        self.agent, self.log, self.data_dir = self.agents.start(
            self.unit,
            extra=(
                "--no-local-sm",
                "--unit-pki",
                str(self.pki.folder),
                "--sm-listen",
                f"127.0.0.1:{self.port}",
                "--node-timeout",
                str(NODE_TIMEOUT_S),
            ),
        )
        self.log.wait_for("link.up")

    def start_sm(self, node: str) -> None:
        cm = f"127.0.0.1:{self.port}"
        self.sms[node] = Process(
            sm_cmd(node, cm, self.root / node, self.unit, self.pki.node(node), NODES[node]),
            self.root / f"{node}.log",
            unset=(ENV_VAR, FAULT_ENV_VAR),
        )

    def kill(self, process: Process) -> None:
        process.signal(9)
        assert process.wait(10) == -9
        process.stop()

    def placement(self) -> Placement:
        """Where each running container of the unit is, by its labels; a second container of
        the same instance anywhere fails the test."""
        out: Placement = {}
        for c in self.runtime.list_containers({LABEL_UNIT: self.unit}):
            if c.status != "running":
                continue
            key = (c.labels[LABEL_ITEM], int(c.labels[LABEL_INSTANCE]))
            assert key not in out, f"{key} runs on {out[key]} and {c.labels[LABEL_NODE]}"
            out[key] = c.labels[LABEL_NODE]
        return out

    def versions(self) -> dict[tuple[str, int], str]:
        return {
            (c.labels[LABEL_ITEM], int(c.labels[LABEL_INSTANCE])): c.labels[LABEL_VERSION]
            for c in self.runtime.list_containers({LABEL_UNIT: self.unit})
            if c.status == "running"
        }

    def push(self, ds: DesiredStatus) -> float:
        answer = push(self.agents.cloud, self.unit, ds)
        assert answer["ok"], answer
        return time.time()

    def wait_for(
        self,
        placement: Placement,
        versions: dict[tuple[str, int], str] | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        """Until exactly `placement` runs, nothing else (an instance on a node it should not
        be on included), at `versions` where given, and the cloud's last status says every
        instance is active."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                now = self.placement()
            except AssertionError:
                now = {}
            running = self.versions()
            at_versions = all(running.get(k) == v for k, v in (versions or {}).items())
            if now == placement and at_versions and self._all_active(len(placement)):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"placement {now} != {placement} after {timeout_s} s")
            time.sleep(0.25)

    def _all_active(self, count: int) -> bool:
        """Whether the cloud's view of the unit (its last full status, later deltas laid over
        it) has `count` instances, all active."""
        view = unit_view(self.agents.cloud.state.timeline(self.unit))
        states = [i["state"] for g in view.get("instances", []) for i in g["instances"]]
        return len(states) == count and set(states) == {"active"}

    def docker_events(self, since: float) -> list[tuple[str, str, str, str]]:
        """(action, item, version, node) of this unit's container events since `since`, in
        Docker's order."""
        out = []
        for event in self.runtime.client.events(
            since=int(since) - 1,
            until=int(time.time()) + 1,
            decode=True,
            filters={"type": "container", "label": f"{LABEL_UNIT}={self.unit}"},
        ):
            if event.get("timeNano", 0) < since * 1e9:
                continue
            labels = event["Actor"]["Attributes"]
            action = str(event.get("Action") or event.get("status"))
            out.append((action, labels[LABEL_ITEM], labels[LABEL_VERSION], labels[LABEL_NODE]))
        return out

    def events(self, since: float) -> Counter[tuple[str, str, str]]:
        """(action, item, node) of container creates and destroys of this unit since `since`."""
        return Counter(
            (action, item, node)
            for action, item, _, node in self.docker_events(since)
            if action in ("create", "destroy")
        )

    def stop(self) -> None:
        for process in self.sms.values():
            if process.proc.returncode is None:
                process.stop()
        self.agents.stop_all()


@pytest.fixture
def three_nodes(
    agents: Agents, unit: str, docker_runtime: DockerRuntime, tmp_path: Path
) -> Iterator[Unit]:
    pki = init_unit_pki(tmp_path / "pki", nodes=tuple(NODES))
    running = Unit(unit, tmp_path, agents, docker_runtime, pki, free_port())
    try:
        yield running
    finally:
        running.stop()


FIRST: Placement = {
    ("big", 0): "node-1",  # 2 GiB: node-1 and node-3 tie on free RAM, node-1 by name
    ("gpu", 0): "node-2",  # the only node with label gpu
    ("plain", 0): "node-3",  # then the most free RAM, instance by instance
    ("plain", 1): "node-3",
    ("plain", 2): "node-3",
}


def test_three_nodes_converge_through_pause_blue_green_kills_and_a_node_timeout(
    three_nodes: Unit, published: dict[str, OciImage]
) -> None:
    u = three_nodes
    u.start_agent()
    for node in NODES:
        u.start_sm(node)

    # Placement by labels and resources.
    since = u.push(desired(published))
    u.wait_for(FIRST)
    assert u.events(since) == Counter(("create", item, n) for (item, _), n in FIRST.items())

    # node-3 paused: its instances move where they fit (node-1 has 2 GiB left).
    moved = {**FIRST, **{("plain", i): "node-1" for i in range(3)}}
    since = u.push(desired(published, paused=("node-3",)))
    u.wait_for(moved)
    assert u.events(since) == Counter(
        {("create", "plain", "node-1"): 3, ("destroy", "plain", "node-3"): 3}
    )

    # Resumed: nothing moves back (no needless moves).
    since = u.push(desired(published))
    time.sleep(3)
    u.wait_for(moved)
    assert u.events(since) == Counter()

    # One instance's version changes: only its container is replaced, the new one beside the
    # old until it runs.
    since = u.push(desired(published, gpu_version="2.0.0"))
    u.wait_for(moved, {("gpu", 0): "2.0.0"})
    assert u.events(since) == Counter(
        {("create", "gpu", "node-2"): 1, ("destroy", "gpu", "node-2"): 1}
    )
    order = [(action, version) for action, _, version, _ in u.docker_events(since)]
    assert order.index(("start", "2.0.0")) < order.index(("die", "1.0.0")), order

    # node-2's SM killed while the CM launches a change for it, then started again.
    assert u.log is not None
    mark = len(u.log.records())
    since = u.push(desired(published))
    u.log.wait_for("phase.entered", after=mark, phase="launching")
    u.kill(u.sms["node-2"])
    u.start_sm("node-2")
    u.wait_for(moved, {("gpu", 0): "1.0.0"})
    assert u.events(since) == Counter(
        {("create", "gpu", "node-2"): 1, ("destroy", "gpu", "node-2"): 1}
    )

    # The CM killed while launching, then started again: it resumes, nothing runs twice.
    assert u.agent is not None
    mark = len(u.log.records())
    since = u.push(desired(published, big_version="2.0.0"))
    u.log.wait_for("phase.entered", after=mark, phase="launching")
    u.kill(u.agent)
    u.start_agent()
    u.wait_for(moved, {("big", 0): "2.0.0"})
    assert u.events(since) == Counter(
        {("create", "big", "node-1"): 1, ("destroy", "big", "node-1"): 1}
    )

    # A new instance lands on node-3 (most free RAM); then node-3's SM goes away for good:
    # after the node timeout its instance is placed elsewhere, while its container, which
    # nobody can stop, runs on. When the SM comes back, what it should not run is stopped.
    with_extra = {**moved, ("extra", 0): "node-3"}
    u.push(desired(published, big_version="2.0.0", extra=True))
    u.wait_for(with_extra)
    since = time.time()
    u.kill(u.sms["node-3"])
    u.log.wait_for("node.error", node="node-3", timeout_s=NODE_TIMEOUT_S + 30)
    deadline = time.monotonic() + 30
    while ("extra", 0) not in {k for k, n in _running_elsewhere(u, "node-3")}:
        assert time.monotonic() < deadline, "extra was not placed elsewhere"
        time.sleep(0.25)
    u.start_sm("node-3")
    elsewhere = dict(_running_elsewhere(u, "node-3"))
    u.wait_for({**moved, ("extra", 0): elsewhere[("extra", 0)]})
    assert elsewhere[("extra", 0)] in ("node-1", "node-2")
    assert u.events(since) == Counter(
        {("create", "extra", elsewhere[("extra", 0)]): 1, ("destroy", "extra", "node-3"): 1}
    )


def _running_elsewhere(u: Unit, node: str) -> list[tuple[tuple[str, int], str]]:
    """(item, instance), node of the unit's running containers on nodes other than `node`."""
    return [
        ((c.labels[LABEL_ITEM], int(c.labels[LABEL_INSTANCE])), c.labels[LABEL_NODE])
        for c in u.runtime.list_containers({LABEL_UNIT: u.unit})
        if c.status == "running" and c.labels[LABEL_NODE] != node
    ]
