"""The aoscore-py demo: real cloud, registry, agent and Docker; a power cut in the middle.

1. start a registry and the reference cloud, publish two test images;
2. start the agent and push a desired status (2 services x 2 instances);
3. show each phase as it happens; kill the agent with SIGKILL while it is launching;
4. start it again, show it resume where it stopped and converge;
5. print the unit status the cloud received; stop everything it started.
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import orjson

from aoscore_py.cloud.registry import Registry
from aoscore_py.powercut.testbed import (
    AgentLog,
    CloudProcess,
    cycle_phase,
    publish_images,
    push,
    remove_unit_containers,
    scenario,
    start_agent,
    wait_converged,
)
from aoscore_py.sm.docker_runtime import LABEL_UNIT, DockerRuntime

UNIT = "demo-unit"
WORK = Path("/tmp/aoscore-demo")
T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:6.2f}s] {text}", flush=True)


def describe(r: dict) -> str | None:
    """One readable line for the agent log records worth showing."""
    event = r.get("event")
    if event == "phase.entered":
        return f"phase  {r.get('previous')} -> {r['phase']}"
    if event == "cycle.resume":
        return f"resume at {r['phase']} (from the journal)"
    if event == "item.ready":
        return (
            f"item   {r['item']} {r['version']} {r['state']} ({r['blobs_fetched']} blobs fetched)"
        )
    if event == "item.installed":
        return f"item   {r['item']} {r['version']} installed"
    if event == "step.done" and r.get("action") in ("create", "start", "remove"):
        return f"docker {r['action']} {r['instance']}"
    if event == "container.adopted":
        return f"docker adopted {r['name']}"
    if event == "status.full":
        return f"status full unitStatus #{r['seq']} sent ({r['reason']})"
    if event == "desired.stored":
        return "desired status stored, then acknowledged"
    return None


class Tail(threading.Thread):
    """Prints the agent's notable log lines as they appear."""

    def __init__(self, log: AgentLog, prefix: str) -> None:
        super().__init__(daemon=True)
        self.log, self.prefix, self.seen, self.stopped = log, prefix, 0, threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            records = self.log.records()
            for r in records[self.seen :]:
                line = describe(r)
                if line:
                    say(f"{self.prefix} {line}")
            self.seen = len(records)
            time.sleep(0.02)

    def stop(self) -> None:
        time.sleep(0.1)
        self.stopped.set()
        self.join()


def main() -> int:
    runtime = DockerRuntime()
    removed = remove_unit_containers(runtime, UNIT)
    if removed:
        say(f"removed {removed} containers of the previous demo")
    shutil.rmtree(WORK, ignore_errors=True)
    data_dir = WORK / "agent"
    with Registry(WORK / "registry") as registry:
        say(f"registry  {registry.url}")
        cloud = CloudProcess(WORK / "cloud", registry.url).start()
        agent = None
        try:
            say(f"cloud     {cloud.ws_url}")
            web, worker = publish_images(cloud.cloud_dir, registry.url, ["demo-web", "demo-worker"])
            say(f"published demo-web    {web.index_digest}")
            say(f"published demo-worker {worker.index_digest}")
            ds = scenario([("web", web), ("worker", worker)], num_instances=2)

            log = AgentLog(WORK / "agent-1.log")
            agent = start_agent(UNIT, cloud.ws_url, data_dir, log.path, ca=cloud.trusted_ca)
            tail = Tail(log, "agent#1")
            tail.start()
            log.wait_for("link.up")
            say("push desired status: web x2, worker x2")
            answer = push(cloud, UNIT, ds)
            say(f"cloud got {'ack' if answer.get('ok') else answer}")

            log.wait_for("step.done", action="start", timeout_s=60)
            agent.signal(signal.SIGKILL)
            code = agent.wait(10)
            tail.stop()
            running = [c.name for c in runtime.list_containers({LABEL_UNIT: UNIT})]
            say(f"*** POWER CUT: agent killed with SIGKILL (exit {code}) ***")
            say(f"journal says phase={cycle_phase(data_dir)}; {len(running)} of 4 containers exist")

            log = AgentLog(WORK / "agent-2.log")
            agent = start_agent(UNIT, cloud.ws_url, data_dir, log.path, ca=cloud.trusted_ca)
            tail = Tail(log, "agent#2")
            tail.start()
            result = wait_converged(UNIT, ds, cloud, data_dir, runtime, timeout_s=90)
            tail.stop()
            if not result.ok:
                say(f"NOT converged: {result.problems}")
                return 1
            names = sorted(c.name for c in runtime.list_containers({LABEL_UNIT: UNIT}))
            say(f"converged: {len(names)} containers, each once: {', '.join(names)}")
            last = cloud.state.timeline(UNIT)[-1]["unitStatus"]
            print("\nUnit status received by the cloud:")
            print(orjson.dumps(last, option=orjson.OPT_INDENT_2).decode())
            code = agent.stop()
            agent = None
            say(f"agent stopped cleanly (exit {code}); containers keep running, labelled {UNIT}")
            return 0
        finally:
            if agent is not None:
                agent.stop()
            cloud.stop()
            runtime.close()


if __name__ == "__main__":
    sys.exit(main())
