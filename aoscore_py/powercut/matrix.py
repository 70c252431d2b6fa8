"""The power-cut matrix: kill the CM or an SM with SIGKILL at every crash point of a three-node
unit, start it again, and check that the unit still converges on its desired status.

Each row arms the process that owns its point: the CM (`aoscore agent --no-local-sm`) for
every point outside `sm.*`, the SM of `SM_NODE` (node-2, which runs one instance of each item)
for the SM's own points. Points both sides pass (the blob transfer, in the CM's downloads and
in the SM's blob cache; the data-dir lock, which the SM takes too) have a row on each side;
the SM's row is written `POINT@node-2`. The rows are built from the crash-point registry
(registry.py): every point, at the arrivals listed below, in the scenario that reaches it.

- install: two items (svc-beta with a 6 MiB layer, so that a transfer has a middle to be
  killed in), two instances each, spread over the three nodes by the RAM their item configs
  ask for (scenarios.py: node-1 runs one, node-2 two, node-3 one).
- upgrade: the unit first converges on the install; then svc-alpha moves to a new version
  with `--removed-ttl 0`: its instances are replaced blue-green on node-1 and node-2, and the
  old version is removed and collected in finalizing.
- unit config: the unit first converges on the install; then a desired status with a unit
  config of a greater version makes the CM check and set each node's config again.
- a spoiled store: the unit first converges on the install; then the CM's store file is
  emptied (as a lost write-ahead log or a bad card would leave it), so the agent moves it
  aside, starts on a new one and adopts what the nodes run. It starts behind a closed gate
  to the cloud (gate.py), opened once its SMs are back: the network comes up last.
- a fault: an unexpected error injected at another point first (AOSCORE_FAULT), to reach the
  sticky failed phase.

A row passes when the armed process died by SIGKILL at its point (its exit status and the
`crashpoint.hit` line it wrote), was started again unarmed, and the unit converged
(`ThreeNodeUnit.check`). All of it against the real reference cloud, registry and Docker
engine. Each row uses its own unit id, unit PKI, port and data directories, so rows are
independent.
"""

from __future__ import annotations

import signal
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from statemachine import committed_point, parse_spec

from ..blobs import crashpoints as blobs
from ..cloud.oci import OciImage
from ..cloud.registry import Registry
from ..cloud.service import publish
from ..cm.imagemanager import crashpoints as imagemanager
from ..cm.launcher import crashpoints as launcher
from ..cm.updatemanager.handler import MACHINE
from ..errors import AosError
from ..logs import get_logger
from ..protocol import DesiredStatus
from ..sm import crashpoints as sm
from ..sm.docker_runtime import DockerRuntime
from ..sm.state import FILE_NAME as SM_STATE_FILE
from ..storage import DB_NAME, Storage
from ..storage import crashpoints as storage
from . import interrupts, invariants
from .invariants import EngineEvents, acked_in_force, no_instance_ran_twice, seqs_never_go_back
from .power import PoweredUnit
from .registry import ALL_POINTS
from .report import marks_from_log
from .results import CONVERGED, CUT, KILLED, RESTARTED, Mark, Row
from .scenarios import (
    ALPHA,
    BETA,
    FIRST_PLACEMENT,
    NODES,
    SM_NODE,
    desired,
    item_config,
    upgraded,
    with_bumped_unit_config,
)
from .testbed import (
    CloudProcess,
    Convergence,
    item_state,
    push,
    remove_unit_containers,
    save_desired,
)
from .unit import CM, Arm, ThreeNodeUnit

log = get_logger("powercut")

INSTALL, UPGRADE, UNIT_CONFIG, SPOILED = "install", "upgrade", "unit config", "spoiled store"

# Which arrivals of a point get a row on its owner (default: the first): the second item's,
# a later blob's, node-2's second container.
ARRIVALS: dict[str, tuple[int, ...]] = {
    imagemanager.ITEM_FIRST_BLOB: (1, 2),
    imagemanager.BLOB_VERIFIED: (1, 3),
    blobs.BLOB_TRANSFER: (1,),
    imagemanager.ITEM_PENDING: (2,),
    imagemanager.ITEM_INSTALLED: (1,),
    sm.CONTAINER_CREATED: (1, 2),
    sm.CONTAINER_STARTED: (1, 2),
}
# Points outside `sm.*` that an SM passes too, and the arrivals that get a row on SM_NODE: its
# blob cache half-way through svc-beta's large layer; its data-dir lock, taken at start (no
# arrivals: the point's first, named without `:N`).
SM_ARRIVALS: dict[str, tuple[int, ...]] = {
    blobs.BLOB_TRANSFER: (1,),
    storage.LOCK_TAKEN: (),
}
# Points only an upgrade reaches: a version retired, then collected; a container replaced.
UPGRADE_POINTS = frozenset(
    {
        imagemanager.ITEM_REMOVED,
        imagemanager.ITEM_REMOVING,
        imagemanager.ITEM_COLLECTED,
        sm.CONTAINER_REPLACED,
    }
)
# Points whose row is a unit config of a greater version (an install reaches them too, but
# this is the change an operator makes on a running unit).
UNIT_CONFIG_POINTS = frozenset({sm.NODE_CONFIG_STORED})
# Points only a store that cannot be trusted reaches.
SPOILED_POINTS = frozenset(
    {storage.MOVED_ASIDE, imagemanager.BLOB_ADOPTED, launcher.INSTANCES_ADOPTED}
)
# Points only an unexpected error reaches, and where that error is injected.
FAULTS: dict[str, str] = {committed_point(MACHINE, "failed"): launcher.PLACEMENT_STORED}


def owner(point: str) -> str:
    """The process that owns a point: the SM of SM_NODE for the SM's points, else the CM."""
    return SM_NODE if point in sm.CRASH_POINTS else CM


def passes(process: str, point: str) -> bool:
    """Whether `process` (the CM or a node's SM) reaches `point` at all: the SM its own points
    and the shared ones (SM_ARRIVALS), the CM every other."""
    if point in sm.CRASH_POINTS:
        return process != CM
    return process == CM or point in SM_ARRIVALS


def describe(process: str) -> str:
    """A process as the table names it: `agent (CM)` or `sm node-2`."""
    return "agent (CM)" if process == CM else f"sm {process}"


@dataclass(frozen=True)
class Case:
    """One row of the matrix: where to crash, which process, in which scenario, after which
    injected fault."""

    spec: str
    scenario: str = INSTALL
    fault: str | None = None
    process: str = CM

    @property
    def point(self) -> str:
        return parse_spec(self.spec)[0]

    @property
    def row(self) -> str:
        """The row's name: its spec, with `@node` when it arms another process than the
        point's owner."""
        return self.spec if self.process == owner(self.point) else f"{self.spec}@{self.process}"


def _scenario(point: str) -> str:
    if point in UPGRADE_POINTS:
        return UPGRADE
    if point in UNIT_CONFIG_POINTS:
        return UNIT_CONFIG
    return SPOILED if point in SPOILED_POINTS else INSTALL


def _specs(point: str, arrivals: tuple[int, ...] | None) -> list[str]:
    return [f"{point}:{n}" for n in arrivals] if arrivals else [point]


def build_cases(points: tuple[str, ...] = ALL_POINTS) -> tuple[Case, ...]:
    """The matrix: every registry point at its arrivals on its owner, in the scenario that
    reaches it; then the rows of shared points on SM_NODE."""
    cases = []
    for point in points:
        kind, fault = _scenario(point), FAULTS.get(point)
        cases += [Case(s, kind, fault, owner(point)) for s in _specs(point, ARRIVALS.get(point))]
        if point in SM_ARRIVALS:
            cases += [Case(s, kind, fault, SM_NODE) for s in _specs(point, SM_ARRIVALS[point])]
    return tuple(cases)


CASES = build_cases()
CRASH_POINTS: tuple[str, ...] = tuple(c.row for c in CASES)
"""Every row's name, in the order the matrix runs them."""


@dataclass(frozen=True)
class NodeCase:
    """A whole node's power loss: its SM killed, its containers killed, its disk cut, then the
    node boots again. With `at` (an SM crash point, `POINT[:N]`) the power goes when the
    node's SM reaches it in the scenario's update; else once the unit converged on the
    install."""

    node: str
    at: str | None = None
    scenario: str = INSTALL

    @property
    def row(self) -> str:
        return f"node:{self.node}" + (f"@{self.at}" if self.at else "")

    @property
    def process(self) -> str:
        return self.node


NODE_CASES = (
    NodeCase(SM_NODE),
    NodeCase(SM_NODE, f"{sm.CONTAINER_STARTED}:1"),
    NodeCase(NODES[0], f"{sm.CONTAINER_REPLACED}:1", UPGRADE),
    NodeCase(NODES[2]),
)
ALL_ROWS: tuple[str, ...] = (*CRASH_POINTS, *(c.row for c in NODE_CASES))
"""Every row's name, crash points then node power losses, in the order a full run takes."""

KILL_TIMEOUT_S = 60.0
CONVERGE_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class Images:
    """The scenario's images: the two items, and the new version of svc-alpha."""

    alpha: OciImage
    beta: OciImage
    alpha2: OciImage

    @property
    def items(self) -> dict[str, OciImage]:
        return {ALPHA: self.alpha, BETA: self.beta}


def publish_images(cloud: CloudProcess, registry_url: str) -> Images:
    """Publish the matrix's images, each with its item config (the RAM it asks for)."""

    def one(name: str, item_id: str, extra_layer_bytes: int = 0) -> OciImage:
        return publish(
            cloud.cloud_dir,
            name,
            registry_url=registry_url,
            extra_layer_bytes=extra_layer_bytes,
            item_config=item_config(item_id),
        )

    # beta has a layer large enough to be killed in the middle of its transfer
    return Images(one("pc-alpha", ALPHA), one("pc-beta", BETA, 6 << 20), one("pc-alpha2", ALPHA))


def target_status(case: Case, images: Images) -> DesiredStatus:
    """The desired status the armed process works on."""
    first = desired(images.items)
    if case.scenario == UPGRADE:
        return upgraded(images.items, images.alpha2)
    if case.scenario == UNIT_CONFIG:
        return with_bumped_unit_config(first)
    return first


def _start(unit: ThreeNodeUnit, armed: str | None, arm: Arm | None) -> None:
    """Start the agent, then, once it serves the SM link, the three SMs; `armed` names the
    process started with `arm`. An agent that dies first (armed at a start-up point) gets its
    SMs when it is started again."""
    unit.start_agent(arm if armed == CM else None)
    if unit.wait_listening():
        unit.start_missing_sms((armed, arm) if armed and armed != CM and arm else None)


def _arm_second_step(power: PoweredUnit, case: Case, arm: Arm, ds: DesiredStatus) -> None:
    """On a unit converged on the first step: start the row's process again armed, and give
    the unit the second desired status.

    The CM is stopped and started armed; the cloud sends the stored desired status when it
    connects (a spoiled store is emptied while the CM is stopped). An SM is stopped and
    started armed, and once the CM has it back the status is pushed to the running unit, so
    the CM's requests (UpdateInstances, CheckNodeConfig, SetNodeConfig) reach it connected.
    """
    unit = power.unit
    if case.process == CM and case.scenario == SPOILED:
        unit.stop(CM)
        (unit.data_dir / DB_NAME).write_bytes(b"")
        power.sync(CM)  # the store was spoiled for good, before the power goes
        _come_up_before_the_cloud(unit, arm)
        return
    if case.process == CM:
        unit.stop(CM)
        save_desired(unit.cloud.state, unit.unit, ds)
        unit.start_agent(arm)
        return
    mark = len(unit.agent_log().records())
    unit.stop(case.process)
    unit.start_sm(case.process, arm)
    unit.wait_node_connected(case.process, mark)
    answer = push(unit.cloud, unit.unit, ds)
    if not answer.get("ok"):
        log.warning("powercut.push_refused", unit=unit.unit, answer=answer, next="waiting")


def _come_up_before_the_cloud(unit: ThreeNodeUnit, arm: Arm) -> None:
    """Start the agent armed behind a closed gate to the cloud, and open the gate once its SMs
    are back (or it died): the order a device meets when its network comes up last. The CM's
    first full status then finds the nodes connected, so a store with no instance record
    adopts what they run (launcher.instances.adopted) before a desired status is placed. The
    gate stays open for the rest of the row (the agent started again dials it too)."""
    gate = unit.gate_the_cloud()
    unit.start_agent(arm)
    if unit.wait_all_connected():
        log.info("powercut.sms_back", unit=unit.unit, next="opening the gate to the cloud")
    gate.open()


def _restart(unit: ThreeNodeUnit, process: str) -> None:
    """Start the killed process again, unarmed (and any SM not started yet)."""
    if process == CM:
        unit.start_agent()
        if unit.wait_listening():
            unit.start_missing_sms()
    else:
        unit.start_sm(process)
        unit.start_missing_sms()


def converge(
    unit: ThreeNodeUnit,
    ds: DesiredStatus,
    runtime: DockerRuntime,
    *,
    reported: int = -1,
    extra: tuple[str, str] | None = None,
    timeout_s: float = CONVERGE_TIMEOUT_S,
    poll_s: float = 0.25,
) -> Convergence:
    """Poll `unit.check(ds)` every `poll_s` until it passes or `timeout_s`; also wait for a
    status sent after `reported` statuses, and, with `extra` = (item, version), for that
    version to be gone from the CM's store."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = unit.check(ds, runtime)
        problems = list(result.problems)
        if extra and item_state(unit.data_dir, *extra):
            problems.append(f"{extra[0]} {extra[1]} was not collected")
        if unit.reported() <= reported:
            problems.append("the CM has not reported since the restart")
        if not problems or time.monotonic() >= deadline:
            return Convergence(not problems, tuple(problems))
        time.sleep(poll_s)


def _stop_note(stopped: Mapping[str, int]) -> str:
    """The processes a row's clean stop found exiting other than 0."""
    return "clean stop exited " + ", ".join(f"{n} {c}" for n, c in stopped.items())


def _placement_note(placement: Mapping[tuple[str, int], str]) -> str:
    """How the final placement differs from the first launch's (`FIRST_PLACEMENT`)."""
    moved = [
        f"{item} {i} on {node}"
        for (item, i), node in sorted(placement.items())
        if FIRST_PLACEMENT.get((item, i)) != node
    ]
    return "placed as first launched" if not moved else "placed elsewhere: " + ", ".join(moved)


class RowClock:
    """A row's timeline: marks in seconds from the row's start, and the CM's phases read from
    the agent's logs of the row's unit."""

    def __init__(self) -> None:
        self.t0, self.wall0 = time.monotonic(), time.time()
        self.marks: list[Mark] = []

    def mark(self, kind: str, label: str = "") -> None:
        self.marks.append(Mark(round(time.monotonic() - self.t0, 3), kind, label))

    def timeline(self, unit: ThreeNodeUnit) -> tuple[Mark, ...]:
        logs = sorted(unit.root.glob("agent-*.log"))
        phases = [m for path in logs for m in marks_from_log(path, self.wall0)]
        return tuple(sorted([*phases, *self.marks], key=lambda m: m.t))


def run_case(
    case: Case,
    cloud: CloudProcess,
    images: Images,
    work: Path,
    runtime: DockerRuntime,
    fs: str = "plain",
    torn: bool = False,
) -> Row:
    """Crash at the case's point, cut the process's disk (with `fs="lossy"`), restart, and
    wait for convergence."""
    unit_id = f"pc-{uuid.uuid4().hex[:8]}"
    extra = ("--removed-ttl", "0") if case.scenario == UPGRADE else ()
    unit = ThreeNodeUnit(unit_id, work / unit_id, cloud, agent_extra=extra)
    power = PoweredUnit(unit, fs, torn)
    arm = Arm(case.spec, case.fault)
    ds = target_status(case, images)
    name = describe(case.process)
    log.info("powercut.row", row=case.row, unit=unit_id, kills=name, scenario=case.scenario, fs=fs)
    clock = RowClock()
    mark = clock.mark
    killed, code, seconds, note = False, None, 0.0, ""
    events = EngineEvents(runtime.client, unit_id).start()
    try:
        power.mount_all()
        if case.scenario == INSTALL:
            save_desired(cloud.state, unit_id, ds)
            _start(unit, case.process, arm)
        else:
            first = desired(images.items)
            save_desired(cloud.state, unit_id, first)
            _start(unit, None, None)
            result = converge(unit, first, runtime)
            if not result.ok:
                why = "; ".join(result.problems[:3])
                return Row(
                    case.row, name, False, False, 0.0, f"the scenario's first step: {why}", fs=fs
                )
            _arm_second_step(power, case, arm, ds)
        armed = unit.process(case.process)
        assert armed is not None
        code = armed.wait(KILL_TIMEOUT_S)
        killed = code == -signal.SIGKILL and unit.killed_at(case.process, arm)
        mark(KILLED, case.process)
        if power.lossy:
            power.cut(case.process)
            mark(CUT, case.process)
        early = exited_on_their_own(unit, case.process)
        if case.process == CM and case.scenario != SPOILED:  # a spoiled store lost it on purpose
            early += acked_after_cut(unit)
        reported = unit.reported()
        started = time.monotonic()
        _restart(unit, case.process)
        mark(RESTARTED, case.process)
        collected = (ALPHA, "1.0.0") if case.scenario == UPGRADE else None
        result = converge(unit, ds, runtime, reported=reported, extra=collected)
        seconds = round(time.monotonic() - started, 2)
        if result.ok:
            mark(CONVERGED)
            note = _placement_note(unit.placement(runtime))
        broken = [*early, *invariant_problems(unit, events)] if result.ok else early
        if broken:
            result = Convergence(False, (*broken, *result.problems))
    finally:
        events.stop()
        stopped = power.stop_all()
        remove_unit_containers(runtime, unit_id)
    details = [] if result.ok else list(result.problems[:3])
    if stopped:
        details.insert(0, _stop_note(stopped))
    if not killed:
        how = "no crashpoint.hit line" if code == -signal.SIGKILL else f"exit {code}"
        details.insert(0, f"not killed at the point ({how})")
    converged = result.ok and not stopped
    return Row(
        case.row,
        name,
        killed,
        converged,
        seconds,
        "; ".join(details) or note,
        kind="point",
        fs=fs,
        timeline=clock.timeline(unit),
    )


def run_node_case(case: NodeCase, lab: Lab, fs: str = "plain", torn: bool = False) -> Row:
    """Cut a whole node's power (at its SM's point, or once converged), boot it again, and
    wait for convergence; the instances it runs again must not count as crashes."""
    unit_id = f"pc-{uuid.uuid4().hex[:8]}"
    extra = ("--removed-ttl", "0") if case.scenario == UPGRADE else ()
    unit = ThreeNodeUnit(unit_id, lab.work / unit_id, lab.cloud, agent_extra=extra)
    power = PoweredUnit(unit, fs, torn)
    first = desired(lab.images.items)
    ds = upgraded(lab.images.items, lab.images.alpha2) if case.scenario == UPGRADE else first
    name = f"node {case.node}"
    log.info("powercut.row", row=case.row, unit=unit_id, kills=name, scenario=case.scenario, fs=fs)
    clock = RowClock()
    mark = clock.mark
    result = Convergence(False, ("not reached",))
    killed, seconds, detail = False, 0.0, ""

    events = EngineEvents(lab.runtime.client, unit_id).start()
    try:
        power.mount_all()
        save_desired(lab.cloud.state, unit_id, first)
        arm = Arm(case.at) if case.at else None
        if case.at and case.scenario == INSTALL:
            _start(unit, case.node, arm)
        else:
            _start(unit, None, None)
            step = converge(unit, first, lab.runtime)
            if not step.ok:
                why = "; ".join(step.problems[:3])
                return Row(case.row, name, False, False, 0.0, f"the first step: {why}", "node", fs)
            if arm is not None:
                _arm_second_step(power, Case(arm.spec, case.scenario, None, case.node), arm, ds)
        if arm is not None:
            sm_process = unit.process(case.node)
            assert sm_process is not None
            code = sm_process.wait(KILL_TIMEOUT_S)
            killed = code == -signal.SIGKILL and unit.killed_at(case.node, arm)
            if not killed:
                detail = f"the node's SM was not killed at {case.at} (exit {code})"
        else:
            killed = True
        early = exited_on_their_own(unit, case.node)
        lost = power.node_power_loss(case.node, lab.runtime)
        mark(KILLED, case.node)
        if power.lossy:
            mark(CUT, case.node)
        started = time.monotonic()
        unit.start_sm(case.node)
        unit.start_missing_sms()
        mark(RESTARTED, case.node)
        collected = (ALPHA, "1.0.0") if case.scenario == UPGRADE else None
        result = converge(unit, ds, lab.runtime, extra=collected)
        seconds = round(time.monotonic() - started, 2)
        crashes = [*early, *crashes_counted(unit, case.node)]
        if result.ok:
            crashes += invariant_problems(unit, events)
        if result.ok and not crashes:
            mark(CONVERGED)
        detail = detail or f"{lost} containers died with the node; none counted as a crash"
        if crashes:
            result = Convergence(False, (*result.problems, *crashes))
    finally:
        events.stop()
        stopped = power.stop_all()
        remove_unit_containers(lab.runtime, unit_id)
    problems = list(result.problems[:3])
    if stopped:
        problems.insert(0, _stop_note(stopped))
    converged = result.ok and not stopped
    return Row(
        case.row,
        name,
        killed,
        converged,
        seconds,
        "; ".join(problems) if not converged else detail,
        kind="node",
        fs=fs,
        timeline=clock.timeline(unit),
    )


def invariant_problems(unit: ThreeNodeUnit, events: EngineEvents) -> list[str]:
    """What must hold at every moment, not only at convergence (invariants.py): every desired
    status the unit acked is in force or superseded, a boot's status seqs never go back, no
    instance ran twice."""
    state = unit.cloud.state
    problems = acked_in_force(
        state.desired_seqs(unit.unit), state.answers(unit.unit), held_desired(unit.data_dir)
    )
    problems += seqs_never_go_back(state.timeline(unit.unit))
    return problems + no_instance_ran_twice(events.events())


def held_desired(data_dir: Path) -> bytes | None:
    """The desired status the CM's store holds (None before its first, or without a store)."""
    try:
        storage = Storage(data_dir, read_only=True)
    except AosError:
        return None
    try:
        return storage.load_desired_status()
    finally:
        storage.close()


def crashes_counted(unit: ThreeNodeUnit, node: str) -> list[str]:
    """Instances of `node` whose health record counts a crash: a power loss must not."""
    path = unit.sm_dir(node) / "sm" / SM_STATE_FILE
    return invariants.crashes_counted(node, invariants.read_sm_state(path))


def acked_after_cut(unit: ThreeNodeUnit) -> list[str]:
    """Right after the CM's cut, before it starts again (and before the cloud, on its next
    connect, could send the same status again): every desired status the unit acked is in
    what survived on its disk, or was superseded."""
    state = unit.cloud.state
    problems = invariants.acked_in_force(
        state.desired_seqs(unit.unit), state.answers(unit.unit), held_desired(unit.data_dir)
    )
    return [f"after the cut: {p}" for p in problems]


def exited_on_their_own(unit: ThreeNodeUnit, victim: str | None) -> list[str]:
    """Processes other than the one cut that are not running: each died by itself (it is
    started again with the others, so without this its death would pass unseen)."""
    problems = []
    for name in (CM, *NODES):
        process = unit.process(name)
        if name != victim and process is not None and process.proc.poll() is not None:
            problems.append(f"{describe(name)} had exited by itself ({process.proc.returncode})")
    return problems


def _print_header(width: int) -> None:
    print(
        f"{'row':<{width}}  {'process killed':<14}  killed  converged  seconds  detail",
        flush=True,
    )


def _print_row(row: Row, width: int) -> None:
    print(
        f"{row.point:<{width}}  {row.process:<14}  {'yes' if row.killed else 'NO':<6}  "
        f"{'yes' if row.converged else 'NO':<9}  {row.seconds:>7.2f}  {row.detail}".rstrip(),
        flush=True,
    )


@dataclass(frozen=True)
class Lab:
    """What every row shares: the work folder, the engine, the registry's cloud and the
    published images."""

    work: Path
    runtime: DockerRuntime
    cloud: CloudProcess
    images: Images


@contextmanager
def open_lab(work_dir: Path | None) -> Iterator[Lab]:
    """Start a registry and the reference cloud, publish the scenario's images; stop both on
    the way out. SIGTERM is turned into KeyboardInterrupt, like SIGINT, so that an interrupted
    run still stops what it started (interrupts.py: never between a process's start and its
    record)."""
    interrupts.install()
    work = work_dir or Path(tempfile.mkdtemp(prefix="aoscore-powercut-"))
    work.mkdir(parents=True, exist_ok=True)
    runtime = DockerRuntime()
    runtime.ping()
    try:
        with Registry(work / "registry") as registry:
            cloud = CloudProcess(work / "cloud", registry.url)
            try:
                cloud.start()
                yield Lab(work, runtime, cloud, publish_images(cloud, registry.url))
            finally:
                cloud.stop()
    finally:
        runtime.close()


def run_matrix(
    specs: list[str], work_dir: Path | None, *, fs: str = "plain", torn: bool = False
) -> list[Row]:
    """Run the rows named by `specs` (see `select_cases`) with the data dirs on `fs`, print
    one line each, and return the rows."""
    rows: list[Row] = []
    cases = select_cases(specs)
    width = max(len(c.row) for c in cases)
    with open_lab(work_dir) as lab:
        disk = "lossy file systems (cut after each kill)" if fs == "lossy" else "plain disks"
        print(
            f"three nodes: {', '.join(NODES)}; SM rows kill {describe(SM_NODE)}; data on {disk}",
            flush=True,
        )
        _print_header(width)
        for case in cases:
            try:
                if isinstance(case, NodeCase):
                    row = run_node_case(case, lab, fs, torn)
                else:
                    row = run_case(case, lab.cloud, lab.images, lab.work, lab.runtime, fs, torn)
            except (AosError, OSError, TimeoutError) as exc:
                log.error("powercut.row_failed", row=case.row, exc_info=True, next="next row")
                why = f"the row could not run: {type(exc).__name__}: {exc}"
                kind = "node" if isinstance(case, NodeCase) else "point"
                process = (
                    f"node {case.node}" if isinstance(case, NodeCase) else describe(case.process)
                )
                row = Row(case.row, process, False, False, 0.0, why, kind=kind, fs=fs)
            rows.append(row)
            _print_row(row, width)
        print(
            f"{sum(r.passed for r in rows)}/{len(rows)} converged; work folder {lab.work}",
            flush=True,
        )
    return rows


def _node_case(spec: str) -> NodeCase:
    """`node:NODE` or `node:NODE@POINT[:N]` (a point of the SM's, in the scenario that reaches
    it); ValueError for another node or point."""
    for case in NODE_CASES:
        if case.row == spec:
            return case
    node, _, at = spec.removeprefix("node:").partition("@")
    if node not in NODES:
        raise ValueError(f"{spec!r}: {node!r} is no node of the unit ({', '.join(NODES)})")
    if at:
        point, _ = parse_spec(at)
        if point not in sm.CRASH_POINTS:
            raise ValueError(f"{spec!r}: {point!r} is no crash point of the SM")
        scenario = UPGRADE if point in UPGRADE_POINTS else INSTALL
        return NodeCase(node, at, scenario)
    return NodeCase(node)


def select_cases(specs: list[str]) -> list[Case | NodeCase]:
    """The rows `specs` name: a row's name (as `--list` prints it), a bare point for all its
    rows, `POINT:N` for another arrival on the point's owner, or `POINT[:N]@node-2` on that
    node's SM (for the SM's points and the shared ones).

    Raises:
        ValueError: a spec names no registered crash point, a bad arrival, or a process that
            never passes the point.
    """
    out: list[Case | NodeCase] = []
    unknown = []
    for spec in specs:
        spec = spec.strip()
        if spec.startswith("node:"):
            node_case = _node_case(spec)
            if node_case not in out:
                out.append(node_case)
            continue
        chosen: list[Case | NodeCase] = [c for c in CASES if spec in (c.row, c.point)]
        if not chosen:
            chosen = _another(spec)
        if not chosen:
            unknown.append(spec)
        out += [c for c in chosen if c not in out]
    if unknown:
        raise ValueError(f"unknown rows {unknown} (`aoscore powercut --list` lists them)")
    return out


def _another(spec: str) -> list[Case]:
    """A row not in the matrix: another arrival, or another node's SM (ValueError when the
    arrival is not a positive integer, or that process never passes the point)."""
    crash, _, process = spec.partition("@")
    point, nth = parse_spec(crash)
    if point not in ALL_POINTS:
        return []
    process = process or owner(point)
    if process != CM and process not in NODES:
        names = ", ".join((CM, *NODES))
        raise ValueError(f"{spec!r}: {process!r} is no process of the unit ({names})")
    if not passes(process, point):
        raise ValueError(f"{spec!r}: {describe(process)} never passes {point}")
    template = next(c for c in CASES if c.point == point)
    return [replace(template, spec=f"{point}:{nth}", process=process)]
