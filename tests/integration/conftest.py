"""Shared integration fixtures: the real Docker engine and a real OCI registry on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aoscore_py.cloud.oci import OciImage
from aoscore_py.cloud.registry import Registry
from aoscore_py.errors import AosError
from aoscore_py.powercut.testbed import (
    AgentLog,
    CloudProcess,
    Process,
    publish_test_set,
    push,
    start_agent,
    wait_converged,
)
from aoscore_py.protocol import DesiredStatus
from aoscore_py.sm.docker_runtime import LABEL_UNIT, DockerRuntime


@pytest.fixture(scope="session")
def docker_runtime() -> Iterator[DockerRuntime]:
    """The engine every integration test uses; its absence is a failure, never a skip."""
    try:
        runtime = DockerRuntime()
        runtime.ping()
    except AosError as exc:
        pytest.fail(
            f"the Docker engine does not answer ({exc}); start it with `scripts/engines start`",
            pytrace=False,
        )
    yield runtime
    runtime.close()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """One docker-registry for the session, always stopped at the end."""
    with Registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture
def remove_unit(docker_runtime: DockerRuntime) -> Iterator[Callable[[str], str]]:
    """Register a unit label whose containers are removed after the test; returns the label."""
    units: list[str] = []

    def register(unit: str) -> str:
        units.append(unit)
        return unit

    yield register
    for unit in units:
        for info in docker_runtime.list_containers({LABEL_UNIT: unit}):
            docker_runtime.remove_container(info.id, timeout_s=1)


@pytest.fixture
def unit(remove_unit: Callable[[str], str]) -> str:
    """A fresh `io.aoscore.unit` label, its containers removed after the test."""
    return remove_unit(f"test-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def cloud(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[CloudProcess]:
    """The reference cloud as a real process, stopped at the end of the session."""
    # Pings slow enough for a unit behind a cellular gateway's 30 s each way
    # (test_link_faults), which the fleet default (20 s) would drop.
    slow_links = ("--keepalive", "70")
    running = CloudProcess(tmp_path_factory.mktemp("cloud"), registry.url, extra=slow_links)
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def images(cloud: CloudProcess, registry: Registry) -> dict[str, OciImage]:
    """Published test images: two that become active at once, one that stays activating."""
    return publish_test_set(cloud.cloud_dir, registry.url, "it")


@dataclass
class Agents:
    """Starts agents for a test and stops every one of them afterwards."""

    cloud: CloudProcess
    root: Path
    started: list[Process] = field(default_factory=list)

    def start(
        self,
        unit: str,
        *,
        crashpoint: str | None = None,
        extra: tuple[str, ...] = (),
        cloud_url: str | None = None,
    ) -> tuple[Process, AgentLog, Path]:
        data_dir = self.root / unit / "data"
        log_path = self.root / unit / f"agent-{len(self.started)}.log"
        proc = start_agent(
            unit,
            cloud_url or self.cloud.ws_url,
            data_dir,
            log_path,
            ca=self.cloud.trusted_ca,
            crashpoint=crashpoint,
            extra=extra,
        )
        self.started.append(proc)
        return proc, AgentLog(log_path), data_dir

    def converged(
        self, unit: str, ds: DesiredStatus, runtime: DockerRuntime
    ) -> tuple[Process, AgentLog, Path]:
        """Start an agent for `unit`, push `ds` once it is connected, wait until it converged."""
        proc, log, data_dir = self.start(unit)
        log.wait_for("link.up")
        answer = push(self.cloud, unit, ds)
        assert answer["ok"], answer
        result = wait_converged(unit, ds, self.cloud, data_dir, runtime)
        assert result.ok, result.problems
        return proc, log, data_dir

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.proc.returncode is None:
                proc.stop()


@pytest.fixture
def agents(cloud: CloudProcess, tmp_path: Path) -> Iterator[Agents]:
    running = Agents(cloud, tmp_path)
    yield running
    running.stop_all()
