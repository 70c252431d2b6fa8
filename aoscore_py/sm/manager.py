"""The service manager of one node, on that node's Docker engine: it executes the planner's
steps, watches its instances' health, and restarts crashed ones itself with backoff.

A converging pass (`_converge`) lists this unit's and node's containers, updates each instance's
health record from what it sees (health.observe), plans (planner.plan), and runs the steps, each
action through one short function of `_actions`. A container is created under the quotas of the
item config its manifest names (quotas.py), whose `runParameters` set the item's restart
backoff; another item config is another target, replaced blue-green like another version.
`run_instances` stores the CM's instance list and runs a pass; a supervisor task runs one
whenever the cheap container listing changes or a time the planner named comes (a stability
window ends, a backoff is over), so a blue-green replacement completes and a crashed instance is
started again without the CM.

Engine calls are blocking (docker-py), so they run on one worker thread per node; one lock
keeps passes, status reads and image collection from interleaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from statemachine import crashpoint

from ..errors import AosError
from ..logs import get_logger
from ..nodes import InstanceKey, InstanceSpec, InstanceStatus
from ..protocol import (
    CpuInfo,
    Identity,
    NodeInfo,
    NodeState,
    OsInfo,
    RuntimeInfo,
)
from . import health
from .crashpoints import CONTAINER_CREATED, CONTAINER_REPLACED, CONTAINER_STARTED
from .docker_runtime import AlreadyExists, DockerRuntime
from .health import Backoff, Facts, HealthRecord
from .images import collectable
from .itemconfigs import ItemConfigs
from .planner import (
    Context,
    Step,
    due,
    group,
    implied_specs,
    plan,
    report,
    split,
)
from .state import FILE_NAME, SmState
from .types import (
    LABEL_GENERATION,
    LABEL_IMAGE,
    LABEL_INSTANCE,
    LABEL_ITEM,
    LABEL_ITEM_CONFIG,
    LABEL_NODE,
    LABEL_SUBJECT,
    LABEL_UNIT,
    LABEL_VERSION,
    ContainerInfo,
    ContainerLimits,
    ContainerSpec,
    ImageInfo,
    Platform,
    container_name,
    image_owner,
    image_tag,
    item_config_digest,
)

log = get_logger("sm")

T = TypeVar("T")
LOG_LINES = 5
POLL_S = 1.0
_MAX_IDLE_S = 30.0
# Plan-and-run rounds in one pass: create and start, then roll back or retire what that showed.
_ROUNDS = 3

ENGINE_WORKERS = 8
"""Engine calls at once: instances are created and started side by side (compose does it one
by one), each instance's own steps still in order."""

Action = Callable[[Step, "_Pass"], Any]


def _total_ram() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def host_boot_time() -> float:
    """When this host booted (/proc/stat's btime); 0 when it cannot be read."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        return 0.0
    return 0.0


def _summary_health(status: str) -> str | None:
    for word in ("unhealthy", "healthy", "starting"):
        if f"({word})" in status or f"(health: {word})" in status:
            return word
    return None


class _Pass:
    """What one converging pass has learned: containers by id, ids it created."""

    def __init__(self, containers: Sequence[ContainerInfo]) -> None:
        self.by_id = {c.id: c for c in containers}
        self.created: dict[InstanceKey, str] = {}


class DockerServiceManager:
    """Runs the instances the CM assigns to `node_id` on a Docker engine.

    Args:
        node_id: the node's codename.
        unit_id: the unit's system id; every container carries it as a label.
        runtime: the Docker adapter.
        blob_path: where a verified blob lies (to build images from blobs).
        state_dir: where the state file lives (instance list, health records); None keeps them
            in memory only.
        settle_s: the stability window after which a running container counts as active.
        backoff: the restart backoff when an item's `runParameters` name none.
        max_dmips: the node's CPU in DMIPS, what a `cpuDmipsLimit` is a part of; None counts
            `quotas.DEFAULT_DMIPS_PER_CORE` per CPU.
        cpus: the engine's CPU count; by default this host's (right for a local engine).
        poll_s: how often the supervisor lists the containers to notice a change.
        clock: wall-clock seconds (a fake one in tests).
        host_boot: when the host booted; by default /proc/stat's.
        supervise: run the supervisor task (started on the first call inside the event loop).
    """

    def __init__(
        self,
        node_id: str,
        unit_id: str,
        runtime: DockerRuntime,
        blob_path: Callable[[str], Path],
        *,
        state_dir: Path | None = None,
        settle_s: float = health.SETTLE_S,
        backoff: Backoff | None = None,
        max_dmips: int | None = None,
        cpus: int | None = None,
        poll_s: float = POLL_S,
        clock: Callable[[], float] = time.time,
        host_boot: float | None = None,
        supervise: bool = True,
    ) -> None:
        self.node_id = node_id
        self.unit_id = unit_id
        self._runtime = runtime
        self._blob_path = blob_path
        self._executor = ThreadPoolExecutor(ENGINE_WORKERS, thread_name_prefix=f"sm-{node_id}")
        self._state = SmState(state_dir / FILE_NAME if state_dir is not None else None)
        self._settle_s = settle_s
        self._backoff = backoff or Backoff()
        self._item_configs = ItemConfigs(
            blob_path, max_dmips=max_dmips, cpus=cpus or os.cpu_count() or 1, backoff=self._backoff
        )
        self._poll_s = poll_s
        self._clock = clock
        self._started = clock()
        self._host_boot = host_boot_time() if host_boot is None else host_boot
        self._supervise = supervise
        self._supervisor: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.changed = asyncio.Event()
        """Set after every supervisor pass that converged (an instance may have become active,
        crashed, been replaced): whoever reports statuses reads them again at once."""
        self._due: float | None = None
        self._seen: tuple[tuple[str, str, str | None], ...] | None = None
        self._platform: Platform | None = None
        self._closed = False
        self._dirty = False  # health records changed since the state file was written
        self._actions: dict[str, Action] = {
            "remove": self._remove,
            "retire": self._retire,
            "rollback": self._rollback,
            "set_restart_policy": self._set_restart_policy,
            "load_image": self._load_image,
            "create": self._create,
            "start": self._start,
            "unpause": self._unpause,
        }

    # --- plumbing --------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _ours(self) -> dict[str, str]:
        return {LABEL_UNIT: self.unit_id, LABEL_NODE: self.node_id}

    def _facts(self) -> Facts:
        return Facts(self._clock(), self._settle_s, self._started, self._host_boot)

    def _context(self) -> Context:
        return Context(self._facts(), self._state.health, self._state.backoffs, self._backoff)

    def _record(self, key: InstanceKey) -> HealthRecord:
        spec = (self._state.wanted or {}).get(key)
        target = health.target_of(spec) if spec else ""
        return health.record_for(self._state.health.get(key), target)

    def close(self) -> None:
        """Stop the supervisor and the worker thread (an engine call in flight finishes)."""
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def aclose(self) -> None:
        """`close`, waiting for the supervisor task to end."""
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self.close()

    # --- what the CM calls -----------------------------------------------------------------------

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

    async def run_instances(
        self,
        specs: Sequence[InstanceSpec],
        *,
        run_parameters: Mapping[str, Backoff | Mapping[str, Any]] | None = None,
    ) -> list[InstanceStatus]:
        """Make this node run exactly `specs`; return how each one runs now.

        New containers are created and started; a changed instance (version, image or item
        config) is replaced blue-green (the supervisor retires the old container once the new
        one is active); containers nobody wants are removed. An instance that cannot run is
        reported failed with its errorInfo.

        Args:
            specs: the wanted instances.
            run_parameters: item id -> its restart backoff, as a `Backoff` or the item config's
                AosCore `runParameters` object; it wins over the `runParameters` of the item
                config the spec's manifest names.

        Raises:
            RemoteError: invalidArgument for `runParameters` that cannot be read.
            OSError: the state file cannot be written.
        """
        backoffs = {
            item: value if isinstance(value, Backoff) else Backoff.from_run_parameters(value)
            for item, value in (run_parameters or {}).items()
        }
        async with self._lock:
            backoffs = {**await self._call(self._item_configs.backoffs, specs), **backoffs}
            if self._state.set_wanted(specs, backoffs):
                await self._call(self._state.save)
            containers = await self._converge()
        self.start()
        return self._statuses(containers)

    async def instance_statuses(self) -> list[InstanceStatus]:
        """The state of every instance this node runs for the unit, from the engine."""
        async with self._lock:
            containers = await self._observe()
        self.start()
        return self._statuses(containers)

    async def collect_images(self, keep: Collection[str]) -> list[str]:
        """Remove this SM's tags from the images nothing needs any more.

        Only images this SM tagged (`aoscore/<unit>-<node>/...`) are considered; one whose id
        (config digest) is in `keep`, that a wanted instance of this node uses, or that any
        container on the engine was created from, stays. Only its own tags are removed, so an
        image another SM (or anyone) also tagged stays on the engine.

        Returns:
            The ids of the images removed from the engine.
        """
        async with self._lock:
            wanted = {s.image.config_digest for s in (self._state.wanted or {}).values()}
            found = await self._call(self._runtime.list_images)
            in_use = await self._call(self._runtime.images_in_use)
            removed = []
            owner = image_owner(self.unit_id, self.node_id)
            for image in collectable(found, owner, set(keep) | wanted, in_use):
                if await self._call(self._untag, image):
                    removed.append(image.id)
        if removed:
            log.info("images.collected", node=self.node_id, images=removed)
        return removed

    def _untag(self, image: ImageInfo) -> bool:
        """Remove this SM's tags; whether the image left the engine with them."""
        ours = image.tags_of(image_owner(self.unit_id, self.node_id))
        gone = all([self._runtime.remove_image(tag) for tag in ours])
        return gone and len(ours) == len(image.tags)

    # --- statuses --------------------------------------------------------------------------------

    def _statuses(self, containers: Sequence[ContainerInfo]) -> list[InstanceStatus]:
        wanted = None if self._state.wanted is None else list(self._state.wanted.values())
        return [
            InstanceStatus(r.key, r.version, self.node_id, r.state, r.error)
            for r in report(wanted, containers, self._context())
        ]

    # --- converging ------------------------------------------------------------------------------

    async def _observe(self) -> list[ContainerInfo]:
        """List the containers and update each instance's health record from its current one."""
        containers = await self._call(self._runtime.list_containers, self._ours())
        facts = self._facts()
        wanted = self._state.wanted
        if wanted is None:
            wanted = {s.key: s for s in implied_specs(containers)}
        changed = False
        for key, infos in group(containers)[0].items():
            spec = wanted.get(key)
            if spec is None:
                continue  # being removed
            current = split(spec, infos).current
            if current is None:
                continue
            target = health.target_of(spec)
            before = self._state.health.get(key)
            record = health.record_for(before, target)
            text = ""
            identity = health.exit_identity(current)
            if identity and identity != record.last_exit and health.counts_as_crash(current, facts):
                text = await self._call(self._runtime.container_logs, current.id, LOG_LINES)
            backoff = self._state.backoff(key.item_id, self._backoff)
            record = health.observe(record, current, backoff, facts, text)
            if record == before:
                continue
            self._state.health[key] = record
            changed = True
            if record.reason and record.last_exit != (before.last_exit if before else ""):
                log.warning(
                    "instance.crashed",
                    node=self.node_id,
                    instance=str(key),
                    reason=record.reason,
                    exit_code=record.exit_code,
                    crashes=record.crashes,
                    next=f"start again in {max(0, round(record.next_start_at - facts.now))} s",
                )
        if changed:
            await self._call(self._state.save)
        return containers

    async def _converge(self) -> list[ContainerInfo]:
        """One pass: observe, plan, run the steps, and plan again from what the engine shows
        (a failed start is rolled back at once), never repeating a step within the pass.
        Returns the containers as they are after."""
        containers = await self._observe()
        wanted = None if self._state.wanted is None else list(self._state.wanted.values())
        done: set[Step] = set()
        for _ in range(_ROUNDS):
            steps = [s for s in plan(wanted, containers, self._context()) if s not in done]
            if not steps:
                break
            await self._run(steps, _Pass(containers))
            done.update(steps)
            containers = await self._observe()
        self._due = due(wanted, containers, self._context())
        self._seen = tuple(sorted((c.id, c.status, c.health) for c in containers))
        self._wake.set()
        return containers

    async def _run(self, steps: Sequence[Step], work: _Pass) -> None:
        """Run a plan's steps: removals, then image loads, then each instance's own steps in
        order; within each stage, side by side (up to `ENGINE_WORKERS` engine calls). An
        instance whose step failed (or whose image did not load) skips its later steps."""
        failed: set[InstanceKey] = set()
        loads = [s for s in steps if s.action == "load_image"]
        removals = [s for s in steps if s.action == "remove"]
        chains: dict[object, list[Step]] = {}
        for step in steps:
            if step.action not in ("load_image", "remove"):
                chains.setdefault(step.key or step.container_id, []).append(step)
        for stage in ([[s] for s in removals], [[s] for s in loads], list(chains.values())):
            # Every chain ends before anything is raised: none keeps calling the engine after
            # the pass (and its lock) is over.
            results = await asyncio.gather(
                *(self._run_chain(chain, work, failed) for chain in stage), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        if self._dirty:
            await self._call(self._state.save)
            self._dirty = False

    async def _run_chain(
        self, chain: Sequence[Step], work: _Pass, failed: set[InstanceKey]
    ) -> None:
        for step in chain:
            keys = self._affected(step)
            if keys and all(k in failed for k in keys):
                return
            action = self._actions.get(step.action)
            if action is None:
                raise AssertionError(f"the planner made a step the executor lacks: {step}")
            try:
                await action(step, work)
            except AosError as exc:
                failed.update(keys)
                log.error(
                    "step.failed",
                    node=self.node_id,
                    action=step.action,
                    instance=str(step.key) if step.key else None,
                    error=exc.message,
                    next="instance reported failed; others go on",
                )
            else:
                log.info(
                    "step.done",
                    node=self.node_id,
                    action=step.action,
                    instance=str(step.key) if step.key else None,
                    reason=step.reason or None,
                )

    def _affected(self, step: Step) -> list[InstanceKey]:
        wanted = self._state.wanted or {}
        if step.action == "load_image":
            return [k for k, s in wanted.items() if s.image.config_digest == step.image]
        return [step.key] if step.key is not None and step.key in wanted else []

    def _note(
        self,
        keys: Sequence[InstanceKey],
        update: Callable[[HealthRecord, Backoff], HealthRecord],
    ) -> None:
        """Update the health records of `keys` (each with its item's backoff)."""
        for key in keys:
            backoff = self._state.backoff(key.item_id, self._backoff)
            self._state.health[key] = update(self._record(key), backoff)
            self._dirty = True

    # --- the actions: one short function each ----------------------------------------------------

    async def _remove(self, step: Step, work: _Pass) -> None:
        assert step.container_id is not None
        await self._call(self._runtime.remove_container, step.container_id)

    async def _retire(self, step: Step, work: _Pass) -> None:
        # The planner retires only once the new container is active: the old one served until now.
        assert step.container_id is not None
        await self._call(self._runtime.remove_container, step.container_id)
        crashpoint(CONTAINER_REPLACED)

    async def _rollback(self, step: Step, work: _Pass) -> None:
        # The new container failed: count it, then remove it; the old one never stopped.
        assert step.key is not None and step.container_id is not None
        info = work.by_id[step.container_id]
        text = await self._call(self._runtime.container_logs, info.id, LOG_LINES)
        facts = self._facts()
        self._note([step.key], lambda r, b: health.replacement_failed(r, info, b, facts, text))
        await self._call(self._runtime.remove_container, step.container_id)

    async def _set_restart_policy(self, step: Step, work: _Pass) -> None:
        assert step.container_id is not None
        await self._call(self._runtime.set_restart_policy, step.container_id)

    async def _load_image(self, step: Step, work: _Pass) -> None:
        keys = self._affected(step)
        spec = (self._state.wanted or {})[keys[0]]
        try:
            await self._call(self._load, spec)
        except AosError as exc:
            code, message, facts = int(exc.code), exc.message, self._facts()
            self._note(keys, lambda r, b: health.image_failed(r, code, message, b, facts))
            raise
        self._note(keys, lambda r, _: health.image_loaded(r))

    def _load(self, spec: InstanceSpec) -> str:
        if self._platform is None:
            self._platform = self._runtime.platform()
        return self._runtime.ensure_image(
            spec.image.config_digest,
            spec.image.manifest,
            self._blob_path,
            image_tag(image_owner(self.unit_id, self.node_id), spec.key.item_id, spec.version),
            self._platform,
        )

    async def _create(self, step: Step, work: _Pass) -> None:
        assert step.key is not None
        spec = (self._state.wanted or {})[step.key]
        key = step.key
        name = container_name(
            self.unit_id,
            key.item_id,
            key.subject_id,
            key.instance,
            node=self.node_id,
            generation=step.generation,
        )
        labels = {
            LABEL_UNIT: self.unit_id,
            LABEL_NODE: self.node_id,
            LABEL_ITEM: key.item_id,
            LABEL_SUBJECT: key.subject_id,
            LABEL_INSTANCE: str(key.instance),
            LABEL_VERSION: spec.version,
            LABEL_IMAGE: spec.image.config_digest,
            LABEL_GENERATION: str(step.generation),
        }
        item_config = item_config_digest(spec.image.manifest)
        if item_config:
            labels[LABEL_ITEM_CONFIG] = item_config
        try:
            limits = await self._call(self._item_configs.limits, spec)
            work.created[key] = await self._call(
                self._runtime.create_container,
                ContainerSpec(name, spec.image.config_digest, labels, limits=limits),
            )
        except AlreadyExists as exc:
            # Not one of ours: ours are listed, and the planner chose a generation none has.
            self._fail_start(key, "", f"{exc.message}, a container without this node's labels")
            raise
        except AosError as exc:
            self._fail_start(key, "", exc.message)
            raise
        if limits != ContainerLimits():
            log.info(
                "container.limited",
                node=self.node_id,
                instance=str(key),
                item_config=item_config,
                memory=limits.memory,
                pids=limits.pids,
                nano_cpus=limits.nano_cpus,
            )
        crashpoint(CONTAINER_CREATED)

    async def _start(self, step: Step, work: _Pass) -> None:
        assert step.key is not None
        container_id = step.container_id or work.created[step.key]
        try:
            await self._call(self._runtime.start_container, container_id)
        except AosError as exc:
            self._fail_start(step.key, container_id, exc.message)
            raise
        crashpoint(CONTAINER_STARTED)

    def _fail_start(self, key: InstanceKey, container_id: str, message: str) -> None:
        facts = self._facts()
        self._note([key], lambda r, b: health.start_failed(r, container_id, message, 0, b, facts))

    async def _unpause(self, step: Step, work: _Pass) -> None:
        assert step.container_id is not None
        await self._call(self._runtime.unpause_container, step.container_id)

    # --- the supervisor --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the supervisor task unless it runs (call inside the event loop)."""
        if not self._supervise or self._closed:
            return
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.get_running_loop().create_task(
                self._supervise_loop(), name=f"sm-{self.node_id}-supervisor"
            )

    async def _supervise_loop(self) -> None:
        failures = 0
        while not self._closed:
            try:
                await self.supervise_once()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an engine away, a full disk: never stop supervising
                failures += 1
                log.warning(
                    "supervise.failed",
                    node=self.node_id,
                    error=f"{type(exc).__name__}: {exc}",
                    next=f"again in {self._sleep_s(failures):.1f} s",
                )
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._sleep_s(failures))

    def _sleep_s(self, failures: int) -> float:
        if failures:
            return min(_MAX_IDLE_S, self._poll_s * 2**failures)
        if self._due is None:
            return self._poll_s
        return min(self._poll_s, max(0.01, self._due - self._clock()))

    async def supervise_once(self) -> bool:
        """One supervisor round: converge when the containers changed or a due time came.

        Returns:
            Whether it converged.
        """
        if self._due is None or self._clock() < self._due:
            states = await self._call(self._runtime.container_states, self._ours())
            seen = tuple(sorted((i, s, _summary_health(text)) for i, s, text in states))
            if seen == self._seen:
                return False
        async with self._lock:
            await self._converge()
        self.changed.set()
        return True
