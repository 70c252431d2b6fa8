"""One three-node unit as real processes, for the power-cut matrix: the agent as the CM only
(`--no-local-sm`) and one `aoscore sm` per node, on loopback with mutual TLS from a unit PKI of
their own, all on the one Docker engine; and the check that such a unit has converged.

Any one of the processes can be armed with a crash point (`Arm`); the others never are (the
crash and fault variables are removed from their environment), so a row kills exactly the
process it names. Stopping an agent or an SM leaves the containers running, as on a device.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from statemachine import ENV_VAR, FAULT_ENV_VAR, parse_spec

from ..cloud.ordering import in_unit_order, summary, unit_view
from ..iam.unitpki import UnitPki, init_unit_pki
from ..protocol import DesiredStatus, UnitConfigState
from ..sm.docker_runtime import LABEL_ITEM, LABEL_NODE, LABEL_UNIT, LABEL_VERSION, DockerRuntime
from ..sm.nodeconfig import FILE_NAME as NODE_CONFIG_FILE
from ..sm.nodeconfig import NodeConfigStore
from ..sm.types import container_key
from . import interrupts
from .gate import TcpGate, free_port
from .scenarios import NODE_RAM, NODES, qualifying_problems
from .testbed import (
    TEST_DEBOUNCE,
    AgentLog,
    CloudProcess,
    Convergence,
    Process,
    aoscore_cmd,
    check_convergence,
    sm_cmd,
)

CM = "agent"
"""The process name of the CM in rows and logs; an SM is named by its node id."""

LISTEN_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Arm:
    """What a process is armed with: a crash point (`name[:N]`), and a fault injected first."""

    spec: str
    fault: str | None = None

    def env(self) -> dict[str, str]:
        out = {ENV_VAR: self.spec}
        if self.fault:
            out[FAULT_ENV_VAR] = self.fault
        return out

    @property
    def hit_line(self) -> str:
        """What `crashpoint()` writes to stderr just before the SIGKILL it sends itself."""
        name, nth = parse_spec(self.spec)
        return f"crashpoint.hit name={name} n={nth} "


@dataclass
class ThreeNodeUnit:
    """The CM and the three SMs of one unit, each started and stopped on demand.

    Args:
        unit: the unit's systemId (every container carries it as `io.aoscore.unit`).
        root: the unit's folder: the PKI, the agent's data dir, one data dir per SM, the logs
            (`agent-N.log`, `node-2-N.log`: one file per start).
        cloud: the reference cloud the agent connects to.
        agent_extra: more `aoscore agent` options (the scenario's, such as --removed-ttl 0).
        cloud_url: where the agent dials the cloud, when not the cloud's own address (the
            gate's, once `gate_the_cloud` put one in front of it).
        sm_dial: where the SMs dial the CM (HOST:PORT), when not its listen port (a proxy's).
    """

    unit: str
    root: Path
    cloud: CloudProcess
    agent_extra: tuple[str, ...] = ()
    cloud_url: str | None = None
    sm_dial: str | None = None
    port: int = field(default_factory=free_port)
    gate: TcpGate | None = None
    agent: Process | None = None
    sms: dict[str, Process] = field(default_factory=dict)
    _pki: UnitPki | None = None
    _starts: dict[str, int] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        """The agent's data dir (its store)."""
        return self.root / "data"

    def sm_dir(self, node: str) -> Path:
        return self.root / node

    @property
    def pki(self) -> UnitPki:
        if self._pki is None:
            self._pki = init_unit_pki(self.root / "pki", nodes=NODES)
        return self._pki

    def process(self, name: str) -> Process | None:
        """The agent (`CM`) or a node's SM, as last started."""
        return self.agent if name == CM else self.sms.get(name)

    def gate_the_cloud(self) -> TcpGate:
        """Put a closed `TcpGate` between the agents started from now on and the cloud; the
        caller opens it. `stop_all` closes it."""
        url = urlsplit(self.cloud.ws_url)
        self.gate = TcpGate(url.hostname or "127.0.0.1", url.port or 80)
        self.cloud_url = urlunsplit(url._replace(netloc=f"127.0.0.1:{self.gate.port}"))
        return self.gate

    def _log_path(self, name: str) -> Path:
        self._starts[name] = self._starts.get(name, 0) + 1
        return self.root / f"{name}-{self._starts[name] - 1}.log"

    # --- starting -------------------------------------------------------------------------

    def start(self, name: str, arm: Arm | None = None) -> Process:
        """Start the agent (`CM`) or a node's SM, armed with `arm` if given."""
        return self.start_agent(arm) if name == CM else self.start_sm(name, arm)

    def start_agent(self, arm: Arm | None = None) -> Process:
        """`aoscore agent --no-local-sm` serving the SM link on this unit's port."""
        args = aoscore_cmd(
            "agent",
            "--cloud",
            self.cloud_url or self.cloud.ws_url,
            "--system-id",
            self.unit,
            "--data-dir",
            str(self.data_dir),
            "--ca",
            str(self.cloud.trusted_ca),
            "--no-local-sm",
            "--unit-pki",
            str(self.pki.folder),
            "--sm-listen",
            f"127.0.0.1:{self.port}",
            "--log-format",
            "json",
            *TEST_DEBOUNCE,
            *self.agent_extra,
        )
        return self._spawn(args, CM, arm)

    def start_sm(self, node: str, arm: Arm | None = None) -> Process:
        """`aoscore sm` for `node`, with its certificate and its RAM (`NODE_RAM`)."""
        args = sm_cmd(
            node,
            self.sm_dial or f"127.0.0.1:{self.port}",
            self.sm_dir(node),
            self.unit,
            self.pki.node(node),
            NODE_RAM[node],
        )
        return self._spawn(args, node, arm)

    def _spawn(self, args: list[str], name: str, arm: Arm | None) -> Process:
        """Start a process as `name` and record it, stopping one still running under that name
        first (an armed process that never reached its point), so that none is left behind;
        an interrupt waits until the new one is recorded (`interrupts.held`)."""
        self.stop(name)
        unset = () if arm else (ENV_VAR, FAULT_ENV_VAR)
        with interrupts.held():
            process = Process(args, self._log_path(name), arm.env() if arm else None, unset=unset)
            if name == CM:
                self.agent = process
            else:
                self.sms[name] = process
        return process

    def start_missing_sms(self, arm: tuple[str, Arm] | None = None) -> None:
        """Start the SM of every node that has none running; `arm` = (node, what to arm it
        with) for one of them."""
        for node in NODES:
            running = self.sms.get(node)
            if running is None or running.proc.poll() is not None:
                self.start_sm(node, arm[1] if arm and arm[0] == node else None)

    def wait_listening(self, timeout_s: float = LISTEN_TIMEOUT_S) -> bool:
        """Wait until the agent accepts SM links on its port (True), or it exited, or
        `timeout_s` passed (False). SMs started before would only dial again with backoff."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.agent is None or self.agent.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def agent_log(self) -> AgentLog:
        assert self.agent is not None
        return AgentLog(self.agent.log_path)

    def wait_node_connected(self, node: str, after: int, timeout_s: float = 30.0) -> None:
        """Wait until the agent logs `node.connected` for `node` (from its log line `after`).

        Raises:
            TimeoutError: it did not within `timeout_s`.
        """
        self.agent_log().wait_for("node.connected", timeout_s, after, node=node)

    def wait_all_connected(self, timeout_s: float = 30.0) -> bool:
        """Wait until the running agent logged `node.connected` for every node (True), or it
        exited, or `timeout_s` passed (False)."""
        deadline = time.monotonic() + timeout_s
        log = self.agent_log()
        while time.monotonic() < deadline:
            if self.agent is None or self.agent.proc.poll() is not None:
                return False
            if {r.get("node") for r in log.find("node.connected")} >= set(NODES):
                return True
            time.sleep(0.05)
        return False

    # --- stopping -------------------------------------------------------------------------

    def stop(self, name: str) -> int:
        """Stop one process with SIGTERM (SIGKILL after 15 s); its exit code (0 when none)."""
        process = self.process(name)
        return 0 if process is None else process.stop()

    def stop_all(self) -> dict[str, int]:
        """Stop the agent, then every SM; the exit code of each that did not exit 0."""
        codes = {CM: self.stop(CM)}
        codes |= {node: self.stop(node) for node in list(self.sms)}
        if self.gate is not None:
            self.gate.close()
        return {name: code for name, code in codes.items() if code != 0}

    # --- what runs ------------------------------------------------------------------------

    def killed_at(self, name: str, arm: Arm) -> bool:
        """Whether the process's log shows it reached the armed point and arrival."""
        process = self.process(name)
        return process is not None and arm.hit_line in process.output()

    def placement(self, runtime: DockerRuntime) -> dict[tuple[str, int], str]:
        """(item, instance) -> node of the unit's running containers, by their labels."""
        out = {}
        for c in runtime.list_containers({LABEL_UNIT: self.unit}):
            key = container_key(c)
            if key is not None and c.status == "running":
                out[(key.item_id, key.instance)] = c.labels.get(LABEL_NODE, "?")
        return out

    def check(self, ds: DesiredStatus, runtime: DockerRuntime) -> Convergence:
        """Converged on `ds`: what `testbed.check_convergence` asks (exactly the desired
        containers, once each; items installed; the cloud's last full status all active),
        and on three nodes: each container at its item's desired version, on a node that
        qualifies; every process running; the unit config installed, each node's SM holding
        its node config at that version, the cloud's view showing every node connected and
        provisioned, and no unit status missing from the cloud's timeline."""
        result = check_convergence(self.unit, ds, self.cloud.state, self.data_dir, runtime)
        problems = list(result.problems)
        versions = {i.item.id: i.version for i in ds.items}
        for c in runtime.list_containers({LABEL_UNIT: self.unit}):
            item, version = c.labels.get(LABEL_ITEM), c.labels.get(LABEL_VERSION)
            if item in versions and version != versions[item]:
                problems.append(f"container {c.name} runs {item} {version}, not {versions[item]}")
        problems += qualifying_problems(self.placement(runtime))
        for name in (CM, *NODES):
            process = self.process(name)
            if process is None or process.proc.poll() is not None:
                problems.append(f"{name} is not running")
        if ds.unit_config is not None:
            problems += self._config_problems(ds.unit_config.version)
        problems += self._nodes_reported()
        problems += self._timeline_problems()
        return Convergence(not problems, tuple(problems))

    def _timeline_problems(self) -> list[str]:
        """Statuses the unit made that never reached the cloud (gaps in a boot's seqs that no
        full status says it folded): with the durable outbox, a kill loses none."""
        records = self.cloud.state.timeline(self.unit)
        missing = summary(in_unit_order(records))["missing"]
        return [f"the cloud's timeline misses {missing} unit statuses"] if missing else []

    def _config_problems(self, version: str) -> list[str]:
        problems = []
        for node in NODES:
            path = self.sm_dir(node) / "sm" / NODE_CONFIG_FILE
            status = NodeConfigStore(node, path).status()
            if status.version != version or status.state != UnitConfigState.INSTALLED:
                problems.append(f"{node} holds node config {status.version} {status.state}")
        last = self._last_full()
        configs = [(c.get("version"), c.get("state")) for c in last.get("unitConfig") or ()]
        if (version, "installed") not in configs:
            problems.append(f"last unitStatus: unit config {configs}, not {version} installed")
        return problems

    def _nodes_reported(self) -> list[str]:
        nodes = {
            n["identity"].get("codename"): (n.get("state"), n.get("isConnected"))
            for n in self._last_full().get("nodes") or ()
        }
        return [
            f"last unitStatus: {node} is {nodes.get(node)}"
            for node in NODES
            if nodes.get(node) != ("provisioned", True)
        ]

    def _last_full(self) -> dict:
        """What the cloud knows of the unit: its last full status with later deltas over it."""
        return unit_view(self.cloud.state.view_records(self.unit))

    def reported(self) -> int:
        """How many unit statuses the cloud has recorded for the unit."""
        return len(self.cloud.state.timeline(self.unit))
