"""Shared integration fixtures: the real Docker engine and a real OCI registry on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from aoscore_py.cloud.registry import Registry
from aoscore_py.errors import AosError
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
