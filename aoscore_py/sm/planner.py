"""Plan a node's containers: a pure function from wanted instances, observed containers and
health records to steps, each a frozen record with an action name (balena's composition steps).

Level-triggered: every run starts from what the engine reports, so an interrupted run simply
plans again, and a step that waits for time (a backoff, a stability window) is planned on a
later run. Rules, per instance:

- Containers whose labels name no wanted instance (or that cannot be read) are removed.
  Containers without this unit's and node's labels are never listed, so never touched.
- The current container is one of the wanted version, image and item config (running first,
  then the newest generation); a second one is a duplicate and removed.
- Blue-green. A running container of another version, image or item config (its quotas) keeps
  serving while a new container, the next generation under another name, is created and
  started beside it. Once the new one is active it is retired (removed); if the new one fails
  it is rolled back (removed) and the old one goes on serving; the replacement is tried again
  after the backoff. An old container that is not running serves nobody and is removed first.
- Restarts are ours: Docker's restart policy is `no` (a container created with another is
  switched to it). A stopped current container is started again once its backoff is over; a
  paused one is unpaused; one that never started is started.
- With no instance list yet (`specs` None) each instance's newest generation is taken as
  wanted (`implied_specs`): crashed containers are restarted and a replacement under way is
  finished or rolled back, but nothing is created, and no instance is removed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..blobs.oci import ITEM_CONFIG_KEY
from ..nodes import ImageLayout, InstanceKey, InstanceSpec
from ..protocol import ErrorInfo, InstanceState
from .health import (
    Backoff,
    Facts,
    HealthRecord,
    container_state,
    instance_state,
    may_start,
    next_due,
    record_for,
    target_of,
)
from .types import (
    LABEL_IMAGE,
    LABEL_ITEM_CONFIG,
    LABEL_VERSION,
    RESTART_POLICY,
    ContainerInfo,
    container_key,
    item_config_digest,
)

# What the executor knows how to do (manager.py maps each to one short function).
ACTIONS = (
    "remove",  # a container nobody wants
    "retire",  # blue-green: the replaced container, once the new one is active
    "rollback",  # blue-green: the new container, which failed; the old one keeps serving
    "set_restart_policy",  # to `no`: the service manager restarts containers itself
    "load_image",
    "create",
    "start",
    "unpause",
)


@dataclass(frozen=True)
class Step:
    """One thing to do on the engine."""

    action: str
    key: InstanceKey | None = None
    container_id: str | None = None
    reason: str = ""
    image: str | None = None  # load_image: the config digest
    generation: int = 0  # create: the new container's generation


@dataclass(frozen=True)
class Context:
    """The facts a plan needs besides the containers (balena's context object).

    The default is "long after": every stability window and backoff is over.
    """

    facts: Facts = field(default_factory=lambda: Facts(now=math.inf))
    health: Mapping[InstanceKey, HealthRecord] = field(default_factory=dict)
    backoffs: Mapping[str, Backoff] = field(default_factory=dict)
    default_backoff: Backoff = field(default_factory=Backoff)

    def record(self, key: InstanceKey, target: str) -> HealthRecord:
        return record_for(self.health.get(key), target)

    def backoff(self, key: InstanceKey) -> Backoff:
        return self.backoffs.get(key.item_id, self.default_backoff)


@dataclass(frozen=True)
class Split:
    """An instance's containers, sorted by role."""

    current: ContainerInfo | None
    serving: ContainerInfo | None  # a running container of another version, kept for now
    duplicates: tuple[ContainerInfo, ...]
    stale: tuple[ContainerInfo, ...]  # of another version and not serving


def _preferred(info: ContainerInfo) -> tuple[bool, int, str, str]:
    """Which container of an instance comes first: a running one, then the newest."""
    return (info.status != "running", -info.generation, info.name, info.id)


def _matches(info: ContainerInfo, spec: InstanceSpec) -> bool:
    return (
        info.labels.get(LABEL_VERSION) == spec.version
        and info.labels.get(LABEL_IMAGE) == spec.image.config_digest
        and info.labels.get(LABEL_ITEM_CONFIG, "") == item_config_digest(spec.image.manifest)
    )


def split(spec: InstanceSpec, infos: Sequence[ContainerInfo]) -> Split:
    """Sort one wanted instance's containers into current, serving, duplicates and stale."""
    matching = sorted((i for i in infos if _matches(i, spec)), key=_preferred)
    others = sorted((i for i in infos if not _matches(i, spec)), key=_preferred)
    serving = others[0] if others and others[0].status == "running" else None
    return Split(
        current=matching[0] if matching else None,
        serving=serving,
        duplicates=tuple(matching[1:]),
        stale=tuple(o for o in others if o is not serving),
    )


def _why(info: ContainerInfo, spec: InstanceSpec) -> str:
    if info.labels.get(LABEL_VERSION) != spec.version:
        return f"version {info.labels.get(LABEL_VERSION)}"
    if info.labels.get(LABEL_IMAGE) != spec.image.config_digest:
        return "other image"
    return "other item config"


def group(
    containers: Sequence[ContainerInfo],
) -> tuple[dict[InstanceKey, list[ContainerInfo]], list[ContainerInfo]]:
    """Containers by instance, and those whose labels name none."""
    by_key: dict[InstanceKey, list[ContainerInfo]] = {}
    unreadable: list[ContainerInfo] = []
    for info in containers:
        key = container_key(info)
        if key is None:
            unreadable.append(info)
        else:
            by_key.setdefault(key, []).append(info)
    return by_key, unreadable


def implied_specs(containers: Sequence[ContainerInfo]) -> list[InstanceSpec]:
    """With no instance list (a service manager restarted before its CM spoke), what each
    instance's containers imply is wanted: the target of its newest generation, which the
    service manager created last. A replacement under way is finished or rolled back by the
    same rules, and containers of an older version that do not run are removed; but nothing
    is created, and no instance loses its last container, for want of a list."""
    by_key, _ = group(containers)
    out = []
    for key, infos in sorted(by_key.items()):
        newest = max(infos, key=lambda i: (i.generation, i.status == "running", i.id))
        item_config = newest.labels.get(LABEL_ITEM_CONFIG)
        manifest = {ITEM_CONFIG_KEY: {"digest": item_config}} if item_config else {}
        layout = ImageLayout("", "", manifest, newest.labels.get(LABEL_IMAGE, ""), ())
        version = newest.labels.get(LABEL_VERSION, "")
        out.append(InstanceSpec(key, "service", version, layout))
    return out


def _restart_steps(
    key: InstanceKey, info: ContainerInfo, record: HealthRecord, facts: Facts
) -> list[Step]:
    """What keeps one current container running: the policy, then start or unpause."""
    steps = []
    if info.restart_policy != RESTART_POLICY:
        steps.append(Step("set_restart_policy", key, info.id, f"was {info.restart_policy}"))
    if info.status == "paused":
        steps.append(Step("unpause", key, info.id, "was paused"))
    elif info.status == "created" and not info.error:
        steps.append(Step("start", key, info.id, "never started"))
    elif info.status in ("exited", "dead", "created") and may_start(record, facts):
        why = f"crash {record.crashes}, backoff over" if record.crashes else f"was {info.status}"
        steps.append(Step("start", key, info.id, why))
    return steps


def plan(
    specs: Sequence[InstanceSpec] | None,
    containers: Sequence[ContainerInfo],
    ctx: Context | None = None,
) -> list[Step]:
    """The next steps toward running exactly `specs` (removals first).

    Args:
        specs: the wanted instances; None when no list has been received yet.
        containers: this unit's and node's containers, as the engine lists them.
        ctx: the time, the health records and the backoffs.
    """
    ctx = ctx or Context()
    facts = ctx.facts
    by_key, unreadable = group(containers)
    removals = [Step("remove", None, i.id, "not wanted") for i in unreadable]
    steps: list[Step] = []
    creating = specs is not None
    if specs is None:
        specs = implied_specs(containers)
    wanted = {s.key: s for s in specs}
    for key in sorted(k for k in by_key if k not in wanted):
        removals += [Step("remove", key, i.id, "not wanted") for i in by_key[key]]
    loaded: set[str] = set()
    for key in sorted(wanted):
        spec, infos = wanted[key], by_key.get(key, [])
        parts = split(spec, infos)
        removals += [Step("remove", key, i.id, "duplicate") for i in parts.duplicates]
        removals += [Step("remove", key, i.id, _why(i, spec)) for i in parts.stale]
        record = ctx.record(key, target_of(spec))
        current, serving = parts.current, parts.serving
        if current is None:
            if not creating or not may_start(record, facts):
                continue
            digest = spec.image.config_digest
            if digest not in loaded:
                loaded.add(digest)
                steps.append(Step("load_image", key, reason=digest, image=digest))
            generation = max((i.generation for i in infos), default=-1) + 1
            steps.append(Step("create", key, generation=generation))
            steps.append(Step("start", key))
            continue
        if serving is None:
            steps += _restart_steps(key, current, record, facts)
            continue
        state = container_state(current, facts)
        if state == InstanceState.ACTIVE:
            steps.append(Step("retire", key, serving.id, f"replaced by {current.name}"))
        elif state == InstanceState.FAILED:
            old = serving.labels.get(LABEL_VERSION, "?")
            steps.append(Step("rollback", key, current.id, f"failed; version {old} serves on"))
        elif current.status == "created" and not current.error:
            steps.append(Step("start", key, current.id, "never started"))
        elif current.status == "paused":
            steps.append(Step("unpause", key, current.id, "was paused"))
    return removals + steps


@dataclass(frozen=True)
class Report:
    """How one instance runs, as the service manager reports it."""

    key: InstanceKey
    version: str
    state: InstanceState
    error: ErrorInfo | None


def report(
    specs: Sequence[InstanceSpec] | None,
    containers: Sequence[ContainerInfo],
    ctx: Context | None = None,
) -> list[Report]:
    """Every wanted instance's state (or, with no list yet, every instance that has a
    container), from its current container and its health record."""
    ctx = ctx or Context()
    by_key, _ = group(containers)
    out = []
    if specs is None:
        specs = implied_specs(containers)
    for spec in sorted(specs, key=lambda s: s.key):
        parts = split(spec, by_key.get(spec.key, []))
        serving = parts.serving.labels.get(LABEL_VERSION) if parts.serving else None
        record = ctx.record(spec.key, target_of(spec))
        state, error = instance_state(parts.current, record, ctx.facts, serving)
        out.append(Report(spec.key, spec.version, state, error))
    return out


def due(
    specs: Sequence[InstanceSpec] | None,
    containers: Sequence[ContainerInfo],
    ctx: Context | None = None,
) -> float | None:
    """The earliest time a plan may change without an engine event (None: not before one)."""
    ctx = ctx or Context()
    by_key, _ = group(containers)
    times = []
    for spec in implied_specs(containers) if specs is None else specs:
        parts = split(spec, by_key.get(spec.key, []))
        record = ctx.record(spec.key, target_of(spec))
        times.append(next_due(parts.current, record, ctx.backoff(spec.key), ctx.facts))
    found = [t for t in times if t is not None]
    return min(found) if found else None
