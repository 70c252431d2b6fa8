"""The power-cut matrix: kill the agent with SIGKILL at every crash point, start it again, and
check that the unit still converges on its desired status.

Scenario: two items (one with a 6 MiB layer, so that a transfer has a middle to be killed in),
two desired instances with numInstances 2 (four containers), one node,
against the real reference cloud, registry and Docker engine. Each row uses its own unit id
and data directory, so rows are independent.
"""

from __future__ import annotations

import signal
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from ..cloud.registry import Registry
from ..cloud.service import publish
from ..sm.docker_runtime import DockerRuntime
from .testbed import (
    CloudProcess,
    check_convergence,
    remove_unit_containers,
    save_desired,
    scenario,
    start_agent,
)

# Every durable boundary of the update cycle, in the order a cycle reaches them.
CRASH_POINTS: tuple[str, ...] = (
    "updatemanager.desired.stored",
    "cycle.downloading.committed",
    "imagemanager.item.first_blob:1",
    "imagemanager.blob.verified:1",
    "imagemanager.blob.transfer:1",
    "imagemanager.blob.verified:3",
    "imagemanager.item.first_blob:2",
    "imagemanager.item.pending:2",
    "cycle.pending.committed",
    "cycle.installing.committed",
    "updatemanager.nodes.stored",
    "updatemanager.unitconfig.stored",
    "cycle.launching.committed",
    "launcher.placement.stored",
    "sm.container.created:1",
    "sm.container.started:1",
    "sm.container.created:3",
    "sm.container.started:4",
    "launcher.node.answered",
    "cycle.waitingActive.committed",
    "cycle.finalizing.committed",
    "imagemanager.item.installed:1",
    "cycle.none.committed",
)

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


def run_point(
    point: str, cloud: CloudProcess, ds_images: list, work: Path, runtime: DockerRuntime
) -> Row:
    """Crash at `point`, restart, and wait for convergence."""
    unit = f"pc-{uuid.uuid4().hex[:8]}"
    ds = scenario(ds_images)
    data_dir = work / unit / "data"
    save_desired(cloud.state, unit, ds)
    agent = start_agent(
        unit,
        cloud.ws_url,
        data_dir,
        work / unit / "agent-1.log",
        ca=cloud.trusted_ca,
        crashpoint=point,
    )
    try:
        code = agent.wait(KILL_TIMEOUT_S)
    finally:
        if agent.proc.returncode is None:
            agent.stop()
    killed = code == -signal.SIGKILL
    started = time.monotonic()
    agent = start_agent(
        unit, cloud.ws_url, data_dir, work / unit / "agent-2.log", ca=cloud.trusted_ca
    )
    result = None
    try:
        deadline = started + CONVERGE_TIMEOUT_S
        while time.monotonic() < deadline:
            result = check_convergence(unit, ds, cloud.state, data_dir, runtime)
            if result.ok or agent.proc.poll() is not None:
                break
            time.sleep(0.25)
        seconds = time.monotonic() - started
    finally:
        exit_code = agent.stop()
        remove_unit_containers(runtime, unit)
    converged = bool(result and result.ok)
    detail = "" if converged else "; ".join((result.problems if result else ())[:3])
    if exit_code != 0:
        detail = f"clean stop exited {exit_code}; {detail}".rstrip("; ")
    if not killed:
        detail = f"not killed (exit {code}); {detail}".rstrip("; ")
    return Row(point, killed, converged and exit_code == 0, round(seconds, 2), detail)


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_matrix(points: list[str], json_path: Path | None, work_dir: Path | None) -> bool:
    """Run the matrix over `points`; print one row each; True when every row converged.

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
            alpha = publish(cloud.cloud_dir, "pc-alpha", registry_url=registry.url)
            # beta has a layer large enough to be killed in the middle of its transfer
            beta = publish(
                cloud.cloud_dir, "pc-beta", registry_url=registry.url, extra_layer_bytes=6 << 20
            )
            ds_images = [("svc-alpha", alpha), ("svc-beta", beta)]
            width = max(len(p) for p in points)
            print(f"{'point':<{width}}  killed  converged  seconds", flush=True)
            for point in points:
                row = run_point(point, cloud, ds_images, work, runtime)
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
