"""The service manager of one node, on that node's Docker engine.

Engine calls are blocking (docker-py), so they run on one worker thread per node. One thread
also serialises them: if a superseded phase is cancelled while a call is in flight, that call
finishes before the next cycle's first call starts, so the next plan always sees it.
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from statemachine import crashpoint

from ..errors import AosError
from ..logs import get_logger
from ..nodes import InstanceKey, InstanceSpec, InstanceStatus
from ..protocol import (
    CpuInfo,
    ErrorInfo,
    Identity,
    InstanceState,
    NodeInfo,
    NodeState,
    OsInfo,
    RuntimeInfo,
)
from .crashpoints import CONTAINER_CREATED, CONTAINER_STARTED
from .docker_runtime import (
    LABEL_IMAGE,
    LABEL_INSTANCE,
    LABEL_ITEM,
    LABEL_NODE,
    LABEL_SUBJECT,
    LABEL_UNIT,
    LABEL_VERSION,
    AlreadyExists,
    ContainerSpec,
    DockerRuntime,
    container_name,
)
from .planner import Step, instance_state, plan, states_by_key

log = get_logger("sm")

T = TypeVar("T")
_TAG_UNSAFE = re.compile(r"[^a-z0-9._-]+")


def _total_ram() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class DockerServiceManager:
    """Runs the instances the CM assigns to `node_id` on a Docker engine.

    Args:
        node_id: the node's codename.
        unit_id: the unit's system id; every container carries it as a label.
        runtime: the Docker adapter.
        blob_path: where a verified blob lies (to build images from blobs).
    """

    def __init__(
        self,
        node_id: str,
        unit_id: str,
        runtime: DockerRuntime,
        blob_path: Callable[[str], Path],
    ) -> None:
        self.node_id = node_id
        self.unit_id = unit_id
        self._runtime = runtime
        self._blob_path = blob_path
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"sm-{node_id}")

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _labels(self, spec: InstanceSpec) -> dict[str, str]:
        return {
            LABEL_UNIT: self.unit_id,
            LABEL_NODE: self.node_id,
            LABEL_ITEM: spec.key.item_id,
            LABEL_SUBJECT: spec.key.subject_id,
            LABEL_INSTANCE: str(spec.key.instance),
            LABEL_VERSION: spec.version,
            LABEL_IMAGE: spec.image.config_digest,
        }

    def _ours(self) -> dict[str, str]:
        return {LABEL_UNIT: self.unit_id, LABEL_NODE: self.node_id}

    async def node_info(self) -> NodeInfo:
        return NodeInfo(
            identity=Identity(codename=self.node_id),
            state=NodeState.PROVISIONED,
            is_connected=True,
            total_ram=_total_ram(),
            os_info=OsInfo(os="Linux", version=platform.release()),
            cpus=(
                CpuInfo(
                    model_name=platform.processor() or platform.machine(),
                    total_num_cores=os.cpu_count() or 1,
                ),
            ),
            runtimes=(RuntimeInfo(identity=Identity(codename="docker"), runtime_type="docker"),),
        )

    def _create(self, spec: ContainerSpec) -> str:
        try:
            container_id = self._runtime.create_container(spec)
        except AlreadyExists as exc:
            log.info("container.adopted", name=spec.name, id=exc.container_id)
            return exc.container_id
        crashpoint(CONTAINER_CREATED)
        return container_id

    def _start(self, container_id: str) -> None:
        self._runtime.start_container(container_id)
        crashpoint(CONTAINER_STARTED)

    def _load(self, spec: InstanceSpec) -> str:
        tag = _TAG_UNSAFE.sub("_", f"aoscore/{spec.key.item_id}".lower())
        version = _TAG_UNSAFE.sub("_", spec.version.lower())[:128] or "latest"
        return self._runtime.ensure_image(
            spec.image.config_digest, spec.image.manifest, self._blob_path, f"{tag}:{version}"
        )

    async def _execute(
        self, step: Step, specs: dict[InstanceKey, InstanceSpec], ids: dict[InstanceKey, str]
    ) -> None:
        if step.action == "remove":
            assert step.container_id is not None
            await self._call(self._runtime.remove_container, step.container_id)
        elif step.action == "load_image":
            assert step.key is not None
            await self._call(self._load, specs[step.key])
        elif step.action == "create":
            assert step.key is not None
            spec = specs[step.key]
            name = container_name(self.unit_id, *_parts(step.key))
            ids[step.key] = await self._call(
                self._create, ContainerSpec(name, spec.image.config_digest, self._labels(spec))
            )
        elif step.action == "unpause":
            assert step.container_id is not None
            await self._call(self._runtime.unpause_container, step.container_id)
        elif step.action == "start":
            assert step.key is not None
            await self._call(self._start, step.container_id or ids[step.key])
        else:
            raise AssertionError(f"unknown step action {step.action!r}")

    async def run_instances(self, specs: Sequence[InstanceSpec]) -> list[InstanceStatus]:
        """Make this node run exactly `specs`; an instance that cannot start is reported failed."""
        by_key = {s.key: s for s in specs}
        containers = await self._call(self._runtime.list_containers, self._ours())
        steps = plan(specs, containers)
        ids: dict[InstanceKey, str] = {}
        failed: dict[InstanceKey, ErrorInfo] = {}
        for step in steps:
            keys = self._affected(step, by_key)
            if keys and all(k in failed for k in keys):
                continue
            try:
                await self._execute(step, by_key, ids)
            except AosError as exc:
                log.error(
                    "step.failed",
                    node=self.node_id,
                    action=step.action,
                    instance=str(step.key),
                    error=exc.message,
                    next="instance reported failed; others go on",
                )
                for k in keys:
                    failed.setdefault(k, ErrorInfo.from_exception(exc))
            else:
                log.info(
                    "step.done",
                    node=self.node_id,
                    action=step.action,
                    instance=str(step.key) if step.key else None,
                    reason=step.reason or None,
                )
        statuses = await self.instance_statuses()
        seen = {s.key for s in statuses}
        out = []
        for s in statuses:
            if s.key in failed:
                s = InstanceStatus(
                    s.key, s.version, self.node_id, InstanceState.FAILED, failed[s.key]
                )
            out.append(s)
        for key, error in failed.items():
            if key not in seen:
                out.append(
                    InstanceStatus(
                        key, by_key[key].version, self.node_id, instance_state(None)[0], error
                    )
                )
        return sorted(out, key=lambda s: s.key)

    def _affected(self, step: Step, specs: dict[InstanceKey, InstanceSpec]) -> list[InstanceKey]:
        if step.action == "load_image":
            return [k for k, s in specs.items() if s.image.config_digest == step.reason]
        return [step.key] if step.key is not None and step.key in specs else []

    async def instance_statuses(self) -> list[InstanceStatus]:
        """The state of every instance this node runs for the unit, from the engine."""
        containers = await self._call(self._runtime.list_containers, self._ours())
        out = []
        for key, info in states_by_key(containers).items():
            state, error = instance_state(info, time.time())
            out.append(
                InstanceStatus(key, info.labels.get(LABEL_VERSION, ""), self.node_id, state, error)
            )
        return sorted(out, key=lambda s: s.key)


def _parts(key: InstanceKey) -> tuple[str, str, int]:
    return key.item_id, key.subject_id, key.instance
