"""The power-cut matrix: kill the agent with SIGKILL at every crash point, start it again, and
check that the unit still converges on its desired status.

The rows are built from the crash-point registry (registry.py): every point, at the arrivals
listed below, in the scenario that reaches it.

- install: two items (one with a 6 MiB layer, so that a transfer has a middle to be killed
  in), two desired instances with numInstances 2 (four containers), one node.
- upgrade: the unit first converges on the install scenario; then one item moves to a new
  version with `--removed-ttl 0`, so the old version is removed and collected in finalizing.
- a spoiled store: the unit first converges on the install scenario; then its store file is
  emptied (as a lost write-ahead log or a bad card would leave it), so the agent moves it aside,
  starts on a new one and adopts what runs.
- a fault: an unexpected error injected at another point first (AOSCORE_FAULT), to reach the
  sticky failed phase.

All of it against the real reference cloud, registry and Docker engine. Each row uses its own
unit id and data directory, so rows are independent.
"""

from __future__ import annotations

import signal
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import orjson

from statemachine import FAULT_ENV_VAR, committed_point, parse_spec

from ..blobs import crashpoints as blobs
from ..cloud.oci import OciImage
from ..cloud.registry import Registry
from ..cloud.service import publish
from ..cloud.state import read_timeline
from ..cm.imagemanager import crashpoints as imagemanager
from ..cm.launcher import crashpoints as launcher
from ..cm.updatemanager.handler import MACHINE
from ..protocol import DesiredStatus
from ..sm import crashpoints as sm
from ..sm.docker_runtime import DockerRuntime
from ..storage import DB_NAME
from ..storage import crashpoints as storage
from .registry import ALL_POINTS
from .testbed import (
    CloudProcess,
    check_convergence,
    item_state,
    remove_unit_containers,
    save_desired,
    scenario,
    start_agent,
)

INSTALL, UPGRADE, SPOILED = "install", "upgrade", "spoiled store"

# Which arrivals of a point get a row (default: the first): the second item's, a later blob's
# or container's.
ARRIVALS: dict[str, tuple[int, ...]] = {
    imagemanager.ITEM_FIRST_BLOB: (1, 2),
    imagemanager.BLOB_VERIFIED: (1, 3),
    blobs.BLOB_TRANSFER: (1,),
    imagemanager.ITEM_PENDING: (2,),
    imagemanager.ITEM_INSTALLED: (1,),
    sm.CONTAINER_CREATED: (1, 3),
    sm.CONTAINER_STARTED: (1, 4),
}
# Points only an upgrade reaches: a version retired, then collected.
UPGRADE_POINTS = frozenset(
    {
        imagemanager.ITEM_REMOVED,
        imagemanager.ITEM_REMOVING,
        imagemanager.ITEM_COLLECTED,
        sm.CONTAINER_REPLACED,
    }
)
# Points only a store that cannot be trusted reaches.
SPOILED_POINTS = frozenset(
    {storage.MOVED_ASIDE, imagemanager.BLOB_ADOPTED, launcher.INSTANCES_ADOPTED}
)
# Points only an unexpected error reaches, and where that error is injected.
FAULTS: dict[str, str] = {committed_point(MACHINE, "failed"): launcher.PLACEMENT_STORED}


@dataclass(frozen=True)
class Case:
    """One row of the matrix: where to crash, in which scenario, after which injected fault."""

    spec: str
    scenario: str = INSTALL
    fault: str | None = None

    @property
    def point(self) -> str:
        return parse_spec(self.spec)[0]


def build_cases(points: tuple[str, ...] = ALL_POINTS) -> tuple[Case, ...]:
    """The matrix: every registry point at its arrivals, in the scenario that reaches it."""
    cases = []
    for point in points:
        arrivals = ARRIVALS.get(point)
        specs = [f"{point}:{n}" for n in arrivals] if arrivals else [point]
        kind = (
            UPGRADE if point in UPGRADE_POINTS else SPOILED if point in SPOILED_POINTS else INSTALL
        )
        cases += [Case(spec, kind, FAULTS.get(point)) for spec in specs]
    return tuple(cases)


CASES = build_cases()
CRASH_POINTS: tuple[str, ...] = tuple(c.spec for c in CASES)

KILL_TIMEOUT_S = 60.0
CONVERGE_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class Row:
    """One crash point's result."""

    point: str
    killed: bool
    converged: bool
    seconds: float
    detail: str = ""


def _print_row(row: Row, width: int) -> None:
    print(
        f"{row.point:<{width}}  {'yes' if row.killed else 'NO':<6}  "
        f"{'yes' if row.converged else 'NO':<9}  {row.seconds:>7.2f}"
        + (f"  {row.detail}" if row.detail else ""),
        flush=True,
    )


def upgraded(ds: DesiredStatus) -> DesiredStatus:
    """`ds` with svc-alpha at version 2.0.0 (its image is already the new one)."""
    items = tuple(replace(i, version="2.0.0") if i.item.id == "svc-alpha" else i for i in ds.items)
    return replace(ds, items=items)


@dataclass(frozen=True)
class Images:
    """The scenario's images: the two items, and the new version of the first."""

    alpha: OciImage
    beta: OciImage
    alpha2: OciImage


def _converge(
    unit: str,
    ds: DesiredStatus,
    cloud: CloudProcess,
    data_dir: Path,
    log: Path,
    runtime: DockerRuntime,
    extra: tuple[str, ...],
) -> tuple[bool, str]:
    """Run an unarmed agent until the unit runs `ds`; stop it cleanly."""
    agent = start_agent(unit, cloud.ws_url, data_dir, log, ca=cloud.trusted_ca, extra=extra)
    result = None
    try:
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        while time.monotonic() < deadline:
            result = check_convergence(unit, ds, cloud.state, data_dir, runtime)
            if result.ok or agent.proc.poll() is not None:
                break
            time.sleep(0.25)
    finally:
        code = agent.stop()
    ok = bool(result and result.ok) and code == 0
    return ok, "" if ok else "; ".join((result.problems if result else ())[:3])


def run_point(
    case: Case, cloud: CloudProcess, images: Images, work: Path, runtime: DockerRuntime
) -> Row:
    """Crash at the case's point, restart, and wait for convergence."""
    unit = f"pc-{uuid.uuid4().hex[:8]}"
    data_dir = work / unit / "data"
    first = scenario([("svc-alpha", images.alpha), ("svc-beta", images.beta)])
    ds, extra = first, ()
    if case.scenario in (UPGRADE, SPOILED):
        extra = ("--removed-ttl", "0") if case.scenario == UPGRADE else ()
        save_desired(cloud.state, unit, first)
        ok, detail = _converge(
            unit, first, cloud, data_dir, work / unit / "agent-0.log", runtime, extra
        )
        if not ok:
            remove_unit_containers(runtime, unit)
            return Row(case.spec, False, False, 0.0, f"the scenario's first step: {detail}")
    if case.scenario == UPGRADE:
        ds = upgraded(scenario([("svc-alpha", images.alpha2), ("svc-beta", images.beta)]))
    if case.scenario == SPOILED:
        (data_dir / DB_NAME).write_bytes(b"")
    save_desired(cloud.state, unit, ds)
    env = {FAULT_ENV_VAR: case.fault} if case.fault else None
    agent = start_agent(
        unit,
        cloud.ws_url,
        data_dir,
        work / unit / "agent-1.log",
        ca=cloud.trusted_ca,
        crashpoint=case.spec,
        extra=extra,
        env=env,
    )
    try:
        code = agent.wait(KILL_TIMEOUT_S)
    finally:
        if agent.proc.returncode is None:
            agent.stop()
    killed = code == -signal.SIGKILL
    reported = len(read_timeline(cloud.state.timeline_path(unit)))
    started = time.monotonic()
    agent = start_agent(
        unit, cloud.ws_url, data_dir, work / unit / "agent-2.log", ca=cloud.trusted_ca, extra=extra
    )
    result = None
    problems: list[str] = []
    try:
        deadline = started + CONVERGE_TIMEOUT_S
        while time.monotonic() < deadline:
            result = check_convergence(unit, ds, cloud.state, data_dir, runtime)
            problems = list(result.problems)
            if case.scenario == UPGRADE and item_state(data_dir, "svc-alpha", "1.0.0"):
                problems.append("svc-alpha 1.0.0 was not collected")
            if len(read_timeline(cloud.state.timeline_path(unit))) <= reported:
                problems.append("the restarted agent has not reported yet")
            if not problems or agent.proc.poll() is not None:
                break
            time.sleep(0.25)
        seconds = time.monotonic() - started
    finally:
        exit_code = agent.stop()
        remove_unit_containers(runtime, unit)
    converged = result is not None and not problems
    detail = "" if converged else "; ".join(problems[:3])
    if exit_code != 0:
        detail = f"clean stop exited {exit_code}; {detail}".rstrip("; ")
    if not killed:
        detail = f"not killed (exit {code}); {detail}".rstrip("; ")
    return Row(case.spec, killed, converged and exit_code == 0, round(seconds, 2), detail)


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_matrix(specs: list[str], json_path: Path | None, work_dir: Path | None) -> bool:
    """Run the rows named by `specs` (as in CRASH_POINTS, or a bare point for all its rows);
    print one row each; True when every row converged.

    SIGTERM is turned into KeyboardInterrupt, like SIGINT, so that an interrupted matrix still
    stops the agent, cloud and registry it started and removes the unit's containers.
    """
    signal.signal(signal.SIGTERM, _interrupted)
    work = work_dir or Path(tempfile.mkdtemp(prefix="aoscore-powercut-"))
    work.mkdir(parents=True, exist_ok=True)
    runtime = DockerRuntime()
    runtime.ping()
    rows: list[Row] = []
    with Registry(work / "registry") as registry:
        cloud = CloudProcess(work / "cloud", registry.url).start()
        try:
            cases = select_cases(specs)
            images = Images(
                publish(cloud.cloud_dir, "pc-alpha", registry_url=registry.url),
                # beta has a layer large enough to be killed in the middle of its transfer
                publish(
                    cloud.cloud_dir, "pc-beta", registry_url=registry.url, extra_layer_bytes=6 << 20
                ),
                publish(cloud.cloud_dir, "pc-alpha2", registry_url=registry.url),
            )
            width = max(len(c.spec) for c in cases)
            print(f"{'point':<{width}}  killed  converged  seconds", flush=True)
            for case in cases:
                row = run_point(case, cloud, images, work, runtime)
                rows.append(row)
                _print_row(row, width)
        finally:
            cloud.stop()
    runtime.close()
    ok = all(r.killed and r.converged for r in rows)
    print(f"{sum(r.converged for r in rows)}/{len(rows)} converged; work folder {work}", flush=True)
    if json_path is not None:
        json_path.write_bytes(
            orjson.dumps(
                [{k: v for k, v in asdict(r).items() if k != "detail"} for r in rows],
                option=orjson.OPT_INDENT_2,
            )
        )
    return ok


def select_cases(specs: list[str]) -> list[Case]:
    """The rows `specs` name: a row's spec, a bare point for every row of that point, or
    `point:N` for another arrival of a registered point.

    Raises:
        ValueError: a spec names no registered crash point, or a bad arrival.
    """
    out: list[Case] = []
    unknown = []
    for spec in specs:
        point, nth = parse_spec(spec)
        chosen = [c for c in CASES if spec in (c.spec, c.point)]
        if not chosen and point in ALL_POINTS:
            template = next(c for c in CASES if c.point == point)
            chosen = [replace(template, spec=f"{point}:{nth}")]
        if not chosen:
            unknown.append(spec)
        out += [c for c in chosen if c not in out]
    if unknown:
        raise ValueError(f"unknown crash points {unknown} (`aoscore powercut --list` lists them)")
    return out
