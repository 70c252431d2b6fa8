"""Power for a three-node unit: each process's data dir on a lossy file system of its own, and
the cuts a power loss makes.

A device that loses power loses more than a process: the page cache goes, so whatever was not
synced is gone, and on a node the containers die with the service manager. `PoweredUnit` puts
the CM's data dir and each SM's on a `LossyMount` (backing folders `disk-agent`, `disk-node-N`
beside them) and offers the three cuts the laboratory makes:

- `cut(name)`: the process is dead (a crash point killed it, or we SIGKILL it now) and its file
  system drops what was not durable, then mounts again over what survived;
- `node_power_loss(node)`: the node's SM dies by SIGKILL, its containers are killed, its file
  system cuts; the SM boots again on what survived;
- with `fs="plain"` there are no mounts and a cut is the SIGKILL alone (the kill -9 matrix).
"""

from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass, field
from pathlib import Path

import docker

from ..logs import get_logger
from ..sm.docker_runtime import LABEL_NODE, LABEL_UNIT, DockerRuntime
from .lossyfs.mount import LossyMount
from .scenarios import NODES
from .unit import CM, ThreeNodeUnit

log = get_logger("powercut")

FILESYSTEMS = ("plain", "lossy")


@dataclass
class PoweredUnit:
    """A `ThreeNodeUnit` whose processes keep their data on lossy mounts (with `fs="lossy"`).

    Args:
        unit: the unit.
        fs: `plain` (the data dirs are ordinary folders) or `lossy`.
        torn: tear the last write at each cut.
        seed: the seed of the torn writes.
    """

    unit: ThreeNodeUnit
    fs: str = "plain"
    torn: bool = False
    seed: int = 0
    mounts: dict[str, LossyMount] = field(default_factory=dict)
    cuts: list[dict] = field(default_factory=list)

    @property
    def lossy(self) -> bool:
        return self.fs == "lossy"

    def data_dir(self, name: str) -> Path:
        """Where a process keeps its data: the agent's data dir or a node's SM dir."""
        return self.unit.data_dir if name == CM else self.unit.sm_dir(name)

    def mount_all(self) -> None:
        """Mount a lossy file system under every process's data dir that has none mounted
        (nothing when plain)."""
        if not self.lossy:
            return
        for index, name in enumerate((CM, *NODES)):
            mount = self.mounts.get(name)
            if mount is None:
                where = self.data_dir(name)
                mount = LossyMount(
                    where.with_name(f"disk-{name}"),
                    where,
                    torn=self.torn,
                    seed=self.seed * 100 + index * 10,
                    log_path=self.unit.root / f"lossyfs-{name}.log",
                )
                self.mounts[name] = mount  # recorded first: stop_all unmounts it whatever happens
            if not mount.mounted:
                mount.mount()

    def cut(self, name: str) -> dict:
        """Power off `name`'s disk: SIGKILL the process if it still runs, then drop what its
        file system had not made durable and mount it again. Returns what was dropped (empty
        when plain)."""
        process = self.unit.process(name)
        if process is not None and process.proc.poll() is None:
            process.signal(signal.SIGKILL)
            process.wait(10.0)
        mount = self.mounts.get(name)
        if mount is None:
            return {}
        loss = mount.remount()
        self.cuts.append({"process": name, **loss})
        log.info("powercut.disk_cut", unit=self.unit.unit, process=name, dropped=loss)
        return loss

    def sync(self, name: str) -> None:
        """Make everything on `name`'s disk durable (for a change the scenario makes while the
        process is stopped: a spoiled store must stay spoiled through the cut)."""
        mount = self.mounts.get(name)
        if mount is not None:
            mount.sync()

    def node_power_loss(self, node: str, runtime: DockerRuntime) -> int:
        """A node loses power: its SM dies by SIGKILL, then its containers (the engine's own
        restart policy is off: the SM restarts them), then its disk drops what was not durable.
        The caller boots the node again (`unit.start_sm(node)`). Returns how many containers
        died with it."""
        process = self.unit.process(node)
        if process is not None and process.proc.poll() is None:
            process.signal(signal.SIGKILL)
            process.wait(10.0)
        containers = runtime.list_containers({LABEL_UNIT: self.unit.unit, LABEL_NODE: node})
        for c in containers:
            if c.status == "running":
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    runtime.client.api.kill(c.id)  # one that stopped meanwhile is as good
        self.cut(node)
        log.info(
            "powercut.node_power_loss",
            unit=self.unit.unit,
            node=node,
            containers=len(containers),
            next="booting the node again",
        )
        return len(containers)

    def stop_all(self) -> dict[str, int]:
        """Stop every process (SIGTERM), then unmount every disk cleanly; the exit code of each
        process that did not exit 0."""
        try:
            return self.unit.stop_all()
        finally:
            for mount in self.mounts.values():
                mount.stop()
            self.mounts.clear()
