"""The `compose` benchmark: the agent starting and changing instances, against docker-compose
doing the same to the same containers, in the same run.

start10: a desired status of ten items (one instance each) reaches an idle agent that is
connected to the reference cloud and whose SMs are up; timed from the agent taking it off the
link (its log's `message.received`) to the cloud receiving the first unit status that reports
all ten active (the timeline's `receivedAt`). The agent downloads the ten small images from a
loopback registry, loads them into Docker and starts the containers within that time.
Its peer: `docker-compose up -d` of ten services, one per item, from the images the agent
loaded, tagged for compose, with the command, network mode and restart policy read off the
agent's own containers; timed from the CLI's launch to its exit (then every container runs).

change1: a second desired status changes one item's version (its image published in advance):
timed from the agent receiving it to the first report of the new instance active and the old one
gone. Its peer: `docker-compose up -d` after that service's image was changed in the file. Both
sides stop the old container with the same grace: compose's `stop_grace_period` is the stop
timeout the agent's Docker runtime uses.

The agent's containers are removed before compose starts, so each side starts from an engine
running none of them. Every run uses new item names (new images), so the agent loads its images
afresh each time. Everything made is removed again, on failure and Ctrl-C too: the agent (and
its SM processes), the unit's containers, the compose project, the image tags and the images.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import docker.errors

from aoscore_py.cloud.oci import OciImage
from aoscore_py.cloud.service import publish
from aoscore_py.powercut.testbed import (
    AgentLog,
    CloudProcess,
    Process,
    push,
    remove_unit_containers,
    scenario,
    start_agent,
)
from aoscore_py.protocol import DesiredItem, DesiredStatus
from aoscore_py.sm.docker_runtime import LABEL_ITEM, LABEL_UNIT, LABEL_VERSION, DockerRuntime
from aoscore_py.sm.types import image_owner, image_tag

from .journal import (
    Instance,
    first_event,
    first_report,
    parse_log,
    phase_spans,
    received_at,
    sm_spans,
)
from .peer_compose import (
    PROJECT_LABEL,
    ComposeError,
    ComposeProject,
    ContainerShape,
    compose_document,
    container_shape,
)

INSTANCES = 10
V1, V2 = "1.0.0", "2.0.0"
CONVERGE_TIMEOUT_S = 180.0
READY_TIMEOUT_S = 60.0
COMPOSE_REPOSITORY = "aoscore-bench-compose"
# Events of an agent whose SMs run as processes of their own, which must connect before the
# agent can place anything; an agent with an in-process SM logs neither.
_SEPARATE_SM_EVENTS = ("smserver.listening", "localsm.started")


class BenchError(Exception):
    """A run did not go as it must for its figures to mean anything."""


def agent_stop_grace_s() -> float:
    """The grace the agent gives a container it stops: the default timeout of
    `DockerRuntime.remove_container`, which the SM calls without one for a removal, a retire
    and a rollback."""
    default = inspect.signature(DockerRuntime.remove_container).parameters["timeout_s"].default
    return float(default)


@dataclass(frozen=True)
class Timed:
    """One timed convergence of the agent: the total and where it went."""

    seconds: float
    phases: dict[str, float]
    sm: dict[str, float]


@dataclass
class RunResult:
    """One run's figures, both sides."""

    start10: Timed
    change1: Timed
    compose_start10_s: float
    compose_change1_s: float
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Plan:
    """What one run does: its unit, items, the item that changes, both desired statuses, and
    the id of each (item, version)'s image."""

    unit: str
    items: tuple[str, ...]
    changed: str
    first: DesiredStatus
    second: DesiredStatus
    loaded: dict[tuple[str, str], str]

    def wanted(self, changed: str | None = None) -> set[Instance]:
        """Each item's one instance at V1, or for `changed`, at V2."""
        return {(item, V2 if item == changed else V1, 0) for item in self.items}


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Let cleanup finish: SIGINT and SIGTERM are held off inside the block."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _quietly(what: str, notes: list[str], fn: Callable[[], Any]) -> None:
    """Run one cleanup step; a failure is noted, and the other steps still run."""
    try:
        fn()
    except Exception as exc:
        notes.append(f"cleanup: {what}: {type(exc).__name__}: {exc}")


class ComposeBench:
    """Runs of the benchmark against one reference cloud and registry.

    Args:
        work: a folder of this invocation (agents' data, logs, compose files).
        runtime: the Docker engine's adapter, for tagging, checking and cleaning up.
        cloud: the running reference cloud.
        registry_url: the loopback registry the cloud's images are pushed to.
        compose_cli: the docker-compose binary.
    """

    def __init__(
        self,
        work: Path,
        runtime: DockerRuntime,
        cloud: CloudProcess,
        registry_url: str,
        compose_cli: str,
    ) -> None:
        self.work = work
        self.runtime = runtime
        self.cloud = cloud
        self.registry_url = registry_url
        self.compose_cli = compose_cli
        self.prefix = f"cb{uuid.uuid4().hex[:8]}"
        self.stop_grace_s = agent_stop_grace_s()
        self.notes: list[str] = []

    # --- one run ---------------------------------------------------------------------------------

    def run(self, n: int) -> RunResult:
        """One run: the agent's start10 and change1, then compose's, then a full cleanup.

        Raises:
            BenchError: a side did not converge, or converged on something else.
            ComposeError: docker-compose failed.
        """
        plan = self._plan(f"{self.prefix}-r{n}")
        notes: list[str] = []
        used: dict[tuple[str, str], str] = {}  # (item, version) -> the image its container ran
        project = ComposeProject(
            plan.unit.replace("-", ""), self.work / plan.unit / "compose", self.compose_cli
        )
        try:
            start10, change1, shape = self._agent_side(plan, used)
            refs = {item: _compose_ref(item, V1) for item in plan.items}
            project.write(compose_document(refs, shape, self.stop_grace_s))
            compose_start10 = project.up()
            old = self._compose_check(project, refs, used)
            refs[plan.changed] = _compose_ref(plan.changed, V2)
            project.write(compose_document(refs, shape, self.stop_grace_s))
            compose_change1 = project.up()
            new = self._compose_check(project, refs, used)
            if old[plan.changed] in new.values():
                raise BenchError(f"compose: {plan.changed}: the old container still runs")
        finally:
            with shielded():
                _quietly("docker-compose down", notes, lambda: project.down(self.stop_grace_s))
                _quietly("compose containers", notes, lambda: self._remove_project(project.name))
                _quietly("images", notes, lambda: self._remove_images(plan.unit, plan.loaded, used))
        return RunResult(start10, change1, compose_start10, compose_change1, notes)

    def _plan(self, unit: str) -> _Plan:
        """Publish a run's images (ten items, and the changed item's next version) and make its
        two desired statuses."""
        items = tuple(f"{unit}-svc-{i:02d}" for i in range(INSTANCES))
        images = {
            item: publish(self.cloud.cloud_dir, item, registry_url=self.registry_url)
            for item in items
        }
        changed = items[0]
        new = publish(self.cloud.cloud_dir, f"{changed}-v2", registry_url=self.registry_url)
        first = scenario([(item, images[item]) for item in items], num_instances=1, version=V1)
        loaded = {(item, V1): images[item].config_digest for item in items}
        loaded[(changed, V2)] = new.config_digest
        return _Plan(unit, items, changed, first, _with_version(first, changed, V2, new), loaded)

    # --- the agent's side ------------------------------------------------------------------------

    def _agent_side(
        self, plan: _Plan, used: dict[tuple[str, str], str]
    ) -> tuple[Timed, Timed, ContainerShape]:
        """Start an agent, time start10 and change1, tag the images its containers run for
        compose (noted in `used`), stop it and remove its containers. Returns both timings and
        the shape of its containers."""
        folder = self.work / plan.unit
        log = AgentLog(folder / "agent.log")
        agent = start_agent(
            plan.unit, self.cloud.ws_url, folder / "data", log.path, ca=self.cloud.trusted_ca
        )
        try:
            self._wait_ready(agent, log)
            start10, mark = self._timed_push(agent, plan.unit, plan.first, plan.wanted(), log)
            shape = self._shape(plan.unit)
            self._tag_running(plan, plan.wanted(), used, log)
            self._wait_event(agent, log, "cycle.ended", mark)
            change1, mark = self._timed_push(
                agent, plan.unit, plan.second, plan.wanted(plan.changed), log
            )
            self._tag_running(plan, {(plan.changed, V2, 0)}, used, log)
            self._check_old_gone(plan)
            self._wait_event(agent, log, "cycle.ended", mark)
        finally:
            with shielded():
                _stop_agent(agent)
                remove_unit_containers(self.runtime, plan.unit)
        return start10, change1, shape

    def _wait_ready(self, agent: Process, log: AgentLog) -> None:
        """Wait until the agent is connected to the cloud and, when its SMs are processes of
        their own, until its node's SM has connected too: the agent is idle and ready.

        Raises:
            BenchError: not within READY_TIMEOUT_S, or the agent exited.
        """
        self._wait_event(agent, log, "link.up", 0.0)
        if any(log.find(event) for event in _SEPARATE_SM_EVENTS):
            self._wait_event(agent, log, "node.connected", 0.0)

    def _wait_event(self, agent: Process, log: AgentLog, event: str, after: float) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if first_event(parse_log(_read(log.path)), event, after) is not None:
                return
            if agent.proc.poll() is not None:
                raise BenchError(f"the agent exited with {agent.proc.returncode}:\n{_tail(log)}")
            time.sleep(0.02)
        raise BenchError(f"the agent logged no {event} within {READY_TIMEOUT_S} s:\n{_tail(log)}")

    def _timed_push(
        self, agent: Process, unit: str, ds: DesiredStatus, wanted: set[Instance], log: AgentLog
    ) -> tuple[Timed, float]:
        """Push `ds` and wait for the cloud to receive a report of exactly `wanted`, all active.

        Returns:
            The timing, and the time just before the push (to look for later events after it).

        Raises:
            BenchError: no such report within CONVERGE_TIMEOUT_S, or the agent exited.
        """
        state = self.cloud.state
        seen = len(state.timeline(unit))
        before = time.time()
        push(self.cloud, unit, ds)
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        polls = 0
        while (report := first_report(state.timeline(unit)[seen:], wanted)) is None:
            polls += 1
            if polls % 25 == 0:
                self._check_going(agent, log, before)
            if time.monotonic() > deadline:
                last = (state.timeline(unit)[seen:] or [{}])[-1].get("unitStatus")
                raise BenchError(
                    f"{unit}: no report of {len(wanted)} active instances within "
                    f"{CONVERGE_TIMEOUT_S} s; last report: {last}\n{_tail(log)}"
                )
            time.sleep(0.02)
        reported = float(report["receivedAt"])
        records = [r for r in parse_log(_read(log.path)) if r["t"] >= before - 0.002]
        received = received_at(records)
        if received is None:
            raise BenchError(f"{unit}: the agent logged no desiredStatus received:\n{_tail(log)}")
        launching = first_event(records, "phase.entered", received, phase="launching")
        since = float(launching["t"]) if launching else received
        timed = Timed(
            reported - received,
            phase_spans(records, received, reported),
            sm_spans(records, since, reported),
        )
        return timed, before

    def _check_going(self, agent: Process, log: AgentLog, since: float) -> None:
        """Fail at once, not at the timeout, when the agent exited or a cycle since `since`
        ended failed (a broken agent: the figure would mean nothing).

        Raises:
            BenchError: so.
        """
        if agent.proc.poll() is not None:
            raise BenchError(f"the agent exited with {agent.proc.returncode}:\n{_tail(log)}")
        ended = first_event(parse_log(_read(log.path)), "cycle.ended", since)
        if ended is not None and (ended.get("failed") or ended.get("payload_error")):
            raise BenchError(
                f"the agent's cycle ended in {ended.get('phase')}: "
                f"{ended.get('payload_error')}\n{_tail(log)}"
            )

    def _check_old_gone(self, plan: _Plan) -> None:
        """Note it when the engine still holds the changed item's old container although the
        agent reported it gone (the report would then be early, and change1 flattered)."""
        old = self.runtime.list_containers(
            {LABEL_UNIT: plan.unit, LABEL_ITEM: plan.changed, LABEL_VERSION: V1}
        )
        if old:
            self.notes.append(
                f"{plan.unit}: reported the change done while the engine still held "
                f"{[c.name + ' ' + c.status for c in old]}"
            )

    def _shape(self, unit: str) -> ContainerShape:
        """The shape of the unit's containers (all made alike: one is read)."""
        found = self.runtime.client.api.containers(filters={"label": f"{LABEL_UNIT}={unit}"})
        if not found:
            raise BenchError(f"{unit}: the agent reported instances active but runs no container")
        return container_shape(self.runtime.client.api.inspect_container(found[0]["Id"]))

    # --- compose's side --------------------------------------------------------------------------

    def _compose_check(
        self,
        project: ComposeProject,
        refs: Mapping[str, str],
        loaded: Mapping[tuple[str, str], str],
    ) -> dict[str, str]:
        """Every service runs one container of the image in the file; service -> container id.

        Raises:
            BenchError: not so.
        """
        api = self.runtime.client.api
        found = api.containers(all=True, filters={"label": f"{PROJECT_LABEL}={project.name}"})
        running: dict[str, str] = {}
        for c in found:
            service = c["Labels"].get("com.docker.compose.service", "?")
            if c["State"] != "running" or service in running:
                raise BenchError(f"compose: {service} has {c['State']} container {c['Names']}")
            running[service] = c["Id"]
            version = refs[service].rsplit(":", 1)[1]
            if c["ImageID"] != loaded[(service, version)]:
                raise BenchError(f"compose: {service} runs {c['ImageID']}, not its {version}")
        if set(running) != set(refs):
            raise BenchError(f"compose runs {sorted(running)}, not {sorted(refs)}")
        return running

    def _remove_project(self, name: str) -> None:
        api = self.runtime.client.api
        for c in api.containers(all=True, filters={"label": f"{PROJECT_LABEL}={name}"}):
            api.remove_container(c["Id"], force=True)

    # --- images ----------------------------------------------------------------------------------

    def _tag_running(
        self, plan: _Plan, wanted: set[Instance], used: dict[tuple[str, str], str], log: AgentLog
    ) -> None:
        """Tag for compose the image each wanted instance's container runs (the image the agent
        loaded, held by that container while it is tagged) and note it in `used`.

        Raises:
            BenchError: a wanted instance has no running container, or its image cannot be
                tagged.
        """
        containers = self.runtime.list_containers({LABEL_UNIT: plan.unit})
        running = {
            (c.labels.get(LABEL_ITEM), c.labels.get(LABEL_VERSION)): c.image_id
            for c in containers
            if c.status == "running"
        }
        for item, version, _ in sorted(wanted):
            image_id = running.get((item, version))
            if image_id is None:
                raise BenchError(
                    f"{plan.unit}: reported active, but {item} {version} has no "
                    f"container: {sorted(running)}"
                )
            if image_id != plan.loaded[(item, version)]:
                self.notes.append(
                    f"{item} {version} runs {image_id}, not the published config "
                    f"{plan.loaded[(item, version)]}"
                )
            repository, tag = _compose_ref(item, version).rsplit(":", 1)
            try:
                self.runtime.client.api.tag(image_id, repository, tag)
            except docker.errors.APIError as exc:
                states = [(c.name, c.status, c.image_id[:19]) for c in containers]
                raise BenchError(
                    f"{plan.unit}: cannot tag {item} {version}'s image {image_id}: {exc}; the "
                    f"unit's containers: {states}\n{_tail(log)}"
                ) from exc
            used[(item, version)] = image_id

    def _remove_images(self, unit: str, *images: Mapping[tuple[str, str], str]) -> None:
        """Our compose tags, the agent's SM's tags of this run's items, then the images
        themselves (each made for this run: its label names the run's item)."""
        owner = image_owner(unit, "node-1")
        for (item, version), image_id in (pair for one in images for pair in one.items()):
            self.runtime.remove_image(_compose_ref(item, version))
            self.runtime.remove_image(image_tag(owner, item, version))
            self.runtime.remove_image(image_id)


def _compose_ref(item: str, version: str) -> str:
    return f"{COMPOSE_REPOSITORY}/{item}:{version}"


def _with_version(ds: DesiredStatus, item: str, version: str, image: OciImage) -> DesiredStatus:
    """`ds` with one item at another version and image."""
    items = tuple(
        DesiredItem(d.item, version, image.index_digest, d.owner) if d.item.id == item else d
        for d in ds.items
    )
    return replace(ds, items=items)


def _group_of(agent: Process) -> set[int]:
    """The processes in the agent's process group (it leads one: its SMs are in it)."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == agent.pid:
            pids.add(int(stat.parent.name))
    return pids - {agent.pid}


def _stop_agent(agent: Process) -> None:
    """Stop the agent, then SIGKILL any other process of its group still there (its SMs end
    with it; this is for an agent that had to be killed before it could stop them)."""
    children = _group_of(agent)
    agent.stop()
    for pid in children & _group_of(agent):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _tail(log: AgentLog, lines: int = 30) -> str:
    return "\n".join(_read(log.path).splitlines()[-lines:])


__all__ = ["INSTANCES", "BenchError", "ComposeBench", "ComposeError", "RunResult", "Timed"]
