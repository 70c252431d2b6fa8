"""A testbed of real parts for the power-cut matrix, the demo, benchmarks and tests: a registry,
the reference cloud and agents as real processes, a scenario desired status, and the check
that a unit has converged on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from statemachine import ENV_VAR, UPDATE_CYCLE, JournalRecord, MachineError

from ..cloud import client
from ..cloud.oci import OciImage
from ..cloud.ordering import unit_view
from ..cloud.service import publish
from ..cloud.state import CloudState
from ..cm.updatemanager.handler import MACHINE
from ..errors import AosError
from ..iam.tls import TlsFiles
from ..nodes import expand_instances
from ..protocol import (
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
    dump_message,
)
from ..sm.docker_runtime import LABEL_UNIT, DockerRuntime
from ..sm.planner import container_key
from ..storage import Storage
from . import interrupts

PYTHON = sys.executable


def aoscore_cmd(*args: str) -> list[str]:
    """The command line that runs `aoscore ARGS` with this interpreter."""
    return [PYTHON, "-m", "aoscore_py", *args]


def sm_cmd(
    node: str, cm: str, data_dir: Path, unit: str, tls: TlsFiles, total_ram: int
) -> list[str]:
    """`aoscore sm` for `node` of `unit`, dialling the CM at `cm` with mutual TLS, offering
    `total_ram` bytes, logging JSON."""
    return aoscore_cmd(
        *("sm", "--node-id", node, "--cm", cm, "--data-dir", str(data_dir)),
        *("--system-id", unit),
        *("--ca", str(tls.ca), "--cert", str(tls.cert), "--key", str(tls.key)),
        *("--total-ram", str(total_ram), "--log-format", "json"),
    )


class Process:
    """A child process with its output in a log file; stopped for sure by `stop()`."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        unset: Sequence[str] = (),
    ) -> None:
        self.args = args
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        full_env = {k: v for k, v in os.environ.items() if k not in unset}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after `timeout_s`; returns the exit code."""
        self.signal(signal.SIGTERM)
        code = self.wait(timeout_s)
        if code is None:
            self.signal(signal.SIGKILL)
            code = self.proc.wait()
        self._log.close()
        return code

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class CloudProcess:
    """`aoscore cloud serve` as a child process, with the registry it is given."""

    cloud_dir: Path
    registry_url: str
    blob_urls_delay_s: float = 0.0
    extra: tuple[str, ...] = ()
    tls: bool = False  # units over wss with provisioning and discovery; else plain ws
    process: Process | None = None
    endpoints: dict[str, str] = field(default_factory=dict)

    def start(self, timeout_s: float = 20.0) -> CloudProcess:
        state = CloudState(self.cloud_dir)
        state.clear_endpoints()
        args = aoscore_cmd(
            "cloud",
            "serve",
            "--cloud-dir",
            str(self.cloud_dir),
            "--registry",
            self.registry_url,
            "--log-format",
            "json",
        )
        if self.blob_urls_delay_s:
            args += ["--blob-urls-delay", str(self.blob_urls_delay_s)]
        if not self.tls:
            args.append("--insecure")
        args += self.extra
        with interrupts.held():  # recorded before an interrupt unwinds to stop()
            self.process = Process(args, self.cloud_dir / "cloud.log")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            endpoints = state.endpoints()
            if endpoints and endpoints.get("pid") == self.process.pid:
                self.endpoints = endpoints
                return self
            if self.process.proc.poll() is not None:
                break
            time.sleep(0.05)
        output = self.process.output()[-2000:]
        self.process.stop()
        raise RuntimeError(f"the reference cloud did not start:\n{output}")

    @property
    def ws_url(self) -> str:
        return self.endpoints["ws"]

    @property
    def operator_url(self) -> str:
        return self.endpoints["operator"]

    @property
    def operator_token(self) -> str:
        """The bearer token of the cloud's operator API."""
        return self.state.operator_token()

    @property
    def trusted_ca(self) -> Path:
        """The root CA of the cloud's blob signers, for units to trust."""
        return Path(self.endpoints["trustedCa"])

    @property
    def state(self) -> CloudState:
        return CloudState(self.cloud_dir)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


TEST_RECONNECT = (
    "--reconnect-min",
    "0.5",
    "--reconnect-max",
    "5",
    "--breaker-open",
    "5",
    "--healthy-after",
    "5",
)

TEST_DEBOUNCE = ("--status-debounce", "0.5")
"""A test rig reads the cloud's view of the unit soon after a change, not 10 s later."""


def start_agent(
    unit: str,
    cloud_url: str,
    data_dir: Path,
    log_path: Path,
    *,
    ca: Path | None = None,
    crashpoint: str | None = None,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Process:
    """`aoscore agent` as a child process trusting `ca`, optionally armed with a crash point."""
    full_env = dict(env or {})
    if ca is not None:
        extra = ("--ca", str(ca), *extra)
    if crashpoint:
        full_env[ENV_VAR] = crashpoint
    if "--sm-listen" not in extra:
        extra = (*extra, "--sm-listen", "127.0.0.1:0")  # tests may run side by side
    if "--reconnect-min" not in extra:
        # A test rig's cloud comes back in seconds; the fleet's schedule (15 s up to 15 min,
        # a 5 min open circuit) has its own tests.
        extra = (*extra, *TEST_RECONNECT)
    if "--status-debounce" not in extra:
        extra = (*extra, *TEST_DEBOUNCE)
    args = aoscore_cmd(
        "agent",
        "--cloud",
        cloud_url,
        "--system-id",
        unit,
        "--data-dir",
        str(data_dir),
        "--log-format",
        "json",
        *extra,
    )
    return Process(args, log_path, full_env, unset=() if crashpoint else (ENV_VAR,))


def scenario(
    images: Sequence[tuple[str, OciImage]],
    *,
    num_instances: int = 2,
    version: str = "1.0.0",
    subject: str = "subj1",
    priority: int = 10,
) -> DesiredStatus:
    """A desired status: each (item id, image) as a service with `num_instances` instances
    on node-1."""
    return DesiredStatus(
        nodes=(DesiredNodeStatus(Identity(codename="node-1"), DesiredNodeState.PROVISIONED),),
        unit_config=UnitConfig(
            version="1.0.0",
            format_version="1",
            nodes=(
                NodeConfig(
                    node=Identity(codename="node-1"),
                    node_group_subject=Identity(codename="main"),
                    priority=10,
                ),
            ),
        ),
        items=tuple(
            DesiredItem(
                Identity(id=item_id, type="service"),
                version,
                image.index_digest,
                Identity(id="owner1"),
            )
            for item_id, image in images
        ),
        instances=tuple(
            DesiredInstance(Identity(id=item_id), Identity(id=subject), priority, num_instances)
            for item_id, _ in images
        ),
        subjects=(DesiredSubject(Identity(id=subject), SubjectType.GROUP),),
    )


NEVER_HEALTHY = ["/bin/sh", "-c", "test -f /never"]


def publish_test_set(cloud_dir: Path, registry_url: str, prefix: str) -> dict[str, OciImage]:
    """`<prefix>-alpha`, `-beta`, `-gamma` (active at once) and `-stuck` (stays activating)."""
    out = {
        f"{prefix}-{name}": publish(cloud_dir, f"{prefix}-{name}", registry_url=registry_url)
        for name in ("alpha", "beta", "gamma")
    }
    out[f"{prefix}-stuck"] = publish(
        cloud_dir,
        f"{prefix}-stuck",
        registry_url=registry_url,
        healthcheck=NEVER_HEALTHY,
        health_start_period_s=3600,
        health_interval_s=1,
    )
    return out


def publish_images(
    cloud_dir: Path, registry_url: str, names: Sequence[str], **kw: object
) -> list[OciImage]:
    return [publish(cloud_dir, name, registry_url=registry_url, **kw) for name in names]  # type: ignore[arg-type]


@dataclass(frozen=True)
class Convergence:
    """Whether a unit runs exactly its desired status, and what is still off."""

    ok: bool
    problems: tuple[str, ...]


def wanted_instances(ds: DesiredStatus) -> set[tuple[str, str, int]]:
    return {(k.item_id, k.subject_id, k.instance) for k, _ in expand_instances(ds.instances)}


def check_convergence(
    unit: str, ds: DesiredStatus, cloud: CloudState, data_dir: Path, runtime: DockerRuntime
) -> Convergence:
    """Exactly the desired containers running, once each; items recorded installed; the cloud's
    timeline ending with a full unitStatus whose instances are all active."""
    problems: list[str] = []
    wanted = wanted_instances(ds)
    versions = {i.item.key: i.version for i in ds.items}
    containers = runtime.list_containers({LABEL_UNIT: unit})
    seen: dict[tuple[str, str, int], int] = {}
    for c in containers:
        key = container_key(c)
        k = (key.item_id, key.subject_id, key.instance) if key else ("?", "?", -1)
        seen[k] = seen.get(k, 0) + 1
        if c.status != "running":
            problems.append(f"container {c.name} is {c.status}")
    if set(seen) != wanted:
        problems.append(f"containers {sorted(seen)} != desired {sorted(wanted)}")
    problems += [f"{k} runs {n} times" for k, n in seen.items() if n > 1]
    problems += _items_installed(data_dir, versions)
    problems += _timeline_active(cloud.timeline(unit), wanted)
    return Convergence(not problems, tuple(problems))


@contextlib.contextmanager
def read_store(data_dir: Path) -> Iterator[Storage]:
    """An agent's store opened for reading; it may be running (WAL lets readers in)."""
    storage = Storage(data_dir, read_only=True)
    try:
        yield storage
    finally:
        storage.close()


def cycle_phase(data_dir: Path) -> str:
    """The update cycle's committed phase."""
    with read_store(data_dir) as storage:
        return storage.machine(MACHINE, UPDATE_CYCLE).phase


def cycle_journal(data_dir: Path) -> list[JournalRecord]:
    """The update cycle's journal, oldest first."""
    with read_store(data_dir) as storage:
        return storage.machine(MACHINE, UPDATE_CYCLE).journal()


def _items_installed(data_dir: Path, versions: dict[str | None, str]) -> list[str]:
    try:
        with read_store(data_dir) as storage:
            states = {(r.item_id, r.version): r.state.value for r in storage.items()}
    except (AosError, MachineError) as exc:
        return [f"cannot read the store in {data_dir}: {exc}"]
    return [
        f"item {item} {version} is {states.get((item, version), 'unknown')}"
        for item, version in versions.items()
        if states.get((item, version)) != "installed"
    ]


def _timeline_active(records: list[dict], wanted: set[tuple[str, str, int]]) -> list[str]:
    if not records:
        return ["the cloud received no unitStatus"]
    last = unit_view(records)
    if not last:
        return ["the cloud received no full unitStatus"]
    got = {}
    for group in last.get("instances") or []:
        for inst in group.get("instances") or []:
            key = (group["item"].get("id"), group["subject"].get("id"), inst["instance"])
            got[key] = inst["state"]
    problems = []
    if set(got) != wanted:
        problems.append(f"the unit reports {sorted(got)}")
    problems += [f"the unit reports {k} {s}" for k, s in got.items() if s != "active"]
    return problems


def remove_unit_containers(runtime: DockerRuntime, unit: str) -> int:
    containers = runtime.list_containers({LABEL_UNIT: unit})
    for c in containers:
        runtime.remove_container(c.id, timeout_s=2)
    return len(containers)


def save_desired(cloud: CloudState, unit: str, ds: DesiredStatus) -> None:
    """Provision `unit` with `ds`: the cloud sends it when the unit connects."""
    cloud.save_desired(unit, dump_message(ds))


class AgentLog:
    """The JSON log lines of an agent process, for waiting on what it reports."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict[str, object]]:
        out = []
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            if line.startswith(b"{"):
                try:
                    out.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    continue
        return out

    def find(self, event: str, after: int = 0, **fields: object) -> list[dict[str, object]]:
        return [
            r
            for r in self.records()[after:]
            if r.get("event") == event and all(r.get(k) == v for k, v in fields.items())
        ]

    def wait_for(
        self, event: str, timeout_s: float = 30.0, after: int = 0, **fields: object
    ) -> dict[str, object]:
        """The first record of `event` with `fields` (from line `after`); raises on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.find(event, after, **fields)
            if found:
                return found[0]
            time.sleep(0.02)
        raise TimeoutError(f"no {event} {fields} in {self.path} within {timeout_s} s")


def operate(cloud: CloudProcess, request: dict[str, object], timeout_s: float = 60.0) -> dict:
    """One operator request to a running cloud, from synchronous code."""
    return asyncio.run(
        client.operate(cloud.operator_url, request, timeout_s, token=cloud.operator_token)
    )


def push(cloud: CloudProcess, unit: str, ds: DesiredStatus, timeout_s: float = 30.0) -> dict:
    """Push `ds` to `unit` through the cloud's operator API; returns the unit's answer."""
    return asyncio.run(
        client.push(cloud.operator_url, unit, ds, timeout_s, token=cloud.operator_token)
    )


def wait_converged(
    unit: str,
    ds: DesiredStatus,
    cloud: CloudProcess,
    data_dir: Path,
    runtime: DockerRuntime,
    timeout_s: float = 60.0,
) -> Convergence:
    """Poll until the unit has converged on `ds` or `timeout_s` passes; the last check."""
    deadline = time.monotonic() + timeout_s
    result = check_convergence(unit, ds, cloud.state, data_dir, runtime)
    while not result.ok and time.monotonic() < deadline:
        time.sleep(0.25)
        result = check_convergence(unit, ds, cloud.state, data_dir, runtime)
    return result


@dataclass(frozen=True)
class SupersedeRun:
    """One supersede: the agent's own measure and whether the unit converged on the second."""

    phase: str
    latency_s: float
    superseded_in: str
    convergence: Convergence
    log: AgentLog


def supersede_run(
    cloud: CloudProcess,
    runtime: DockerRuntime,
    work: Path,
    unit: str,
    first: DesiredStatus,
    second: DesiredStatus,
    phase: str,
    timeout_s: float = 60.0,
) -> SupersedeRun:
    """Push `first`, push `second` as soon as the agent enters `phase`, wait for convergence.

    The latency is the agent's own log of "superseding message received -> old phase task
    finished". The agent is stopped and the unit's containers removed before returning.
    """
    data_dir = work / unit / "data"
    log = AgentLog(work / unit / "agent.log")
    agent = start_agent(unit, cloud.ws_url, data_dir, log.path, ca=cloud.trusted_ca)
    try:
        log.wait_for("link.up")
        push(cloud, unit, first)
        log.wait_for("phase.entered", phase=phase, timeout_s=timeout_s)
        push(cloud, unit, second)
        record = log.wait_for("cycle.superseded", timeout_s=timeout_s)
        convergence = wait_converged(unit, second, cloud, data_dir, runtime, timeout_s)
    finally:
        agent.stop()
        remove_unit_containers(runtime, unit)
    return SupersedeRun(phase, float(record["latency_s"]), str(record["phase"]), convergence, log)  # type: ignore[arg-type]


def timeline_until(cloud: CloudProcess, unit: str, seq: int, timeout_s: float = 10.0) -> list[dict]:
    """The unit's timeline once the cloud has recorded the status numbered `seq`."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = cloud.state.timeline(unit)
        if any(r["unitStatus"].get("seq") == seq for r in records):
            return records
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the cloud did not record status seq {seq} of {unit}")
        time.sleep(0.02)


def item_state(data_dir: Path, item_id: str, version: str) -> str | None:
    """The state an agent's store records for an item version (None when unknown)."""
    try:
        with read_store(data_dir) as storage:
            record = storage.item(item_id, version)
    except AosError:
        return None
    return None if record is None else record.state.value


def wait_item_state(
    data_dir: Path, item_id: str, version: str, states: Sequence[str], timeout_s: float = 60.0
) -> str:
    """Wait until the item version is in one of `states`; returns it."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = item_state(data_dir, item_id, version)
        if state in states:
            return state
        if time.monotonic() >= deadline:
            raise TimeoutError(f"item {item_id} {version} is {state}, not one of {list(states)}")
        time.sleep(0.05)


@dataclass(frozen=True)
class Refetch:
    """Bytes served for one item across a kill -9 in the middle of its download."""

    item_bytes: int
    served_before_kill: int
    served_total: int

    @property
    def fraction(self) -> float:
        """How much more than the item's size was served in total (0.0 = not a byte twice)."""
        return self.served_total / self.item_bytes - 1.0


def refetch_after_kill(
    work: Path,
    registry_url: str,
    runtime: DockerRuntime,
    *,
    size_bytes: int = 50 << 20,
    layers: int = 4,
    timeout_s: float = 120.0,
) -> Refetch:
    """Download a multi-layer item through a counting proxy, SIGKILL the agent once half of
    it was served, start it again, and count what the proxy served until the item is ready."""
    from .faultproxy import FaultProxy

    unit = f"refetch-{uuid.uuid4().hex[:8]}"
    data_dir = work / unit / "data"
    with FaultProxy(registry_url) as proxy:
        cloud = CloudProcess(work / "cloud", registry_url, extra=("--base", proxy.url)).start()
        agent: Process | None = None
        try:
            image = publish(
                cloud.cloud_dir,
                "refetch-item",
                registry_url=registry_url,
                extra_layer_bytes=size_bytes,
                extra_layers=layers,
            )
            item_bytes = sum(len(b) for b in image.blobs.values())
            save_desired(cloud.state, unit, scenario([("svc-big", image)], num_instances=1))
            agent = start_agent(
                unit, cloud.ws_url, data_dir, work / unit / "agent-1.log", ca=cloud.trusted_ca
            )
            if not proxy.wait_bytes(item_bytes // 2, timeout_s):
                raise TimeoutError(f"the agent did not fetch half of the item in {timeout_s} s")
            agent.signal(signal.SIGKILL)
            agent.wait(10.0)
            before = proxy.bytes_sent()
            agent = start_agent(
                unit, cloud.ws_url, data_dir, work / unit / "agent-2.log", ca=cloud.trusted_ca
            )
            wait_item_state(data_dir, "svc-big", "1.0.0", ("pending", "installed"), timeout_s)
            return Refetch(item_bytes, before, proxy.bytes_sent())
        finally:
            if agent is not None:
                agent.stop()
            cloud.stop()
            remove_unit_containers(runtime, unit)
