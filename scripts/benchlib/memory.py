"""What the CM and each SM hold in memory, idle, with N instances on one node.

A reference cloud and registry, one published image, an agent (the CM) with its node's SM as a
child process; a desired status with N instances of the image; once the unit converged and a
settle period passed, the resident size (VmRSS) and the proportional set size (Pss: shared
libraries counted once across the processes that map them) of the CM and of the SM, from /proc.
Everything started is stopped and the unit's containers removed, also on failure.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from aoscore_py.cloud.registry import Registry
from aoscore_py.cloud.service import publish
from aoscore_py.powercut.testbed import (
    AgentLog,
    CloudProcess,
    push,
    remove_unit_containers,
    scenario,
    start_agent,
    wait_converged,
)
from aoscore_py.sm.docker_runtime import DockerRuntime

MIB = 1024.0


@dataclass(frozen=True)
class Footprint:
    """One process's memory, in MiB."""

    pid: int
    rss_mib: float
    pss_mib: float


def footprint(pid: int) -> Footprint:
    """VmRSS from /proc/PID/status and Pss from /proc/PID/smaps_rollup."""
    rss = pss = 0.0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / MIB
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) / MIB
    return Footprint(pid, round(rss, 1), round(pss, 1))


def children(pid: int) -> list[int]:
    """The direct children of `pid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def measure(work: Path, instances: int, settle_s: float) -> dict[str, object]:
    """Run the unit with `instances` instances on its one node; the CM's and the SM's figures."""
    work.mkdir(parents=True, exist_ok=True)
    unit = f"mem-{os.getpid()}"
    runtime = DockerRuntime()
    with Registry(work / "registry") as registry:
        cloud = CloudProcess(work / "cloud", registry.url).start()
        agent = None
        try:
            image = publish(cloud.cloud_dir, "bench-memory", registry_url=registry.url)
            ds = scenario([("svc", image)], num_instances=instances)
            log = AgentLog(work / "agent.log")
            agent = start_agent(unit, cloud.ws_url, work / "data", log.path, ca=cloud.trusted_ca)
            log.wait_for("link.up")
            started = time.monotonic()
            push(cloud, unit, ds)
            result = wait_converged(unit, ds, cloud, work / "data", runtime, timeout_s=600)
            if not result.ok:
                raise RuntimeError(f"the unit did not converge: {result.problems}")
            converged_s = time.monotonic() - started
            time.sleep(settle_s)
            (sm_pid,) = children(agent.pid)
            cm, sm = footprint(agent.pid), footprint(sm_pid)
        finally:
            if agent is not None:
                agent.stop()
            remove_unit_containers(runtime, unit)
            cloud.stop()
            runtime.close()
    return {
        "instances": instances,
        "settle_s": settle_s,
        "converged_s": round(converged_s, 2),
        "cm_rss_mib": cm.rss_mib,
        "cm_pss_mib": cm.pss_mib,
        "sm_rss_mib": sm.rss_mib,
        "sm_pss_mib": sm.pss_mib,
        "goal_cm_mib": 60,
        "goal_sm_mib": 40,
    }
