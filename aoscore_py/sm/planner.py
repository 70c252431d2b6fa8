"""Plan a node's containers: a pure function from wanted instances and observed containers to
steps, each a frozen record with an action name (balena's composition steps).

Level-triggered: every run starts from what the engine reports, so an interrupted run simply
plans again. Rules: a container whose labels name no wanted instance, an older version, another
image, or a duplicate is removed; a wanted instance with no container gets load-image, create,
start; one whose container is stopped gets start, a paused one unpause; one the engine is
restarting under its restart policy is left to the engine (and reported failed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ..errors import AosCode
from ..nodes import InstanceKey, InstanceSpec
from ..protocol import ErrorInfo, InstanceState
from .docker_runtime import (
    LABEL_IMAGE,
    LABEL_INSTANCE,
    LABEL_ITEM,
    LABEL_SUBJECT,
    LABEL_VERSION,
    ContainerInfo,
)

# Seconds a container without a health check must run before its instance counts as active.
SETTLE_S = 1.0


@dataclass(frozen=True)
class Step:
    """One thing to do on the engine."""

    action: str  # "remove", "load_image", "create", "start", "unpause"
    key: InstanceKey | None = None
    container_id: str | None = None
    reason: str = ""


def _running_first(info: ContainerInfo) -> tuple[bool, str, str]:
    """Which container of an instance to keep when there are several: a running one."""
    return (info.status != "running", info.name, info.id)


def container_key(info: ContainerInfo) -> InstanceKey | None:
    """The instance a container belongs to, from its labels; None if they are unreadable."""
    labels = info.labels
    try:
        return InstanceKey(labels[LABEL_ITEM], labels[LABEL_SUBJECT], int(labels[LABEL_INSTANCE]))
    except (KeyError, ValueError):
        return None


def plan(specs: Sequence[InstanceSpec], containers: Sequence[ContainerInfo]) -> list[Step]:
    """The steps that make the engine run exactly `specs` (removals first)."""
    wanted = {s.key: s for s in specs}
    keep: dict[InstanceKey, ContainerInfo] = {}
    removals: list[Step] = []
    for info in sorted(containers, key=_running_first):
        key = container_key(info)
        spec = wanted.get(key) if key else None
        if spec is None:
            removals.append(Step("remove", key, info.id, "not wanted"))
        elif info.labels.get(LABEL_VERSION) != spec.version:
            removals.append(
                Step("remove", key, info.id, f"version {info.labels.get(LABEL_VERSION)}")
            )
        elif info.labels.get(LABEL_IMAGE) != spec.image.config_digest:
            removals.append(Step("remove", key, info.id, "other image"))
        elif key in keep:
            removals.append(Step("remove", key, info.id, "duplicate"))
        else:
            keep[key] = info
    steps = list(removals)
    loaded: set[str] = set()
    for key in sorted(wanted):
        spec = wanted[key]
        info = keep.get(key)
        if info is None:
            if spec.image.config_digest not in loaded:
                loaded.add(spec.image.config_digest)
                steps.append(Step("load_image", key, reason=spec.image.config_digest))
            steps.append(Step("create", key))
            steps.append(Step("start", key))
        elif info.status == "paused":
            steps.append(Step("unpause", key, info.id, "was paused"))
        elif info.status not in ("running", "restarting"):
            steps.append(Step("start", key, info.id, f"was {info.status}"))
    return steps


def running_for(info: ContainerInfo, now: float) -> float | None:
    """Seconds since the container last started, from the engine's RFC 3339 StartedAt."""
    if not info.started_at:
        return None
    stamp = info.started_at.rstrip("Z")
    whole, _, fraction = stamp.partition(".")
    try:
        started = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
    return now - started - float(f"0.{fraction or 0}")


def instance_state(
    info: ContainerInfo | None, now: float | None = None, settle_s: float = SETTLE_S
) -> tuple[InstanceState, ErrorInfo | None]:
    """An instance's state as the engine shows its container.

    Running means active only once it has run `settle_s` (or passes its health check): a
    container that exits at once must not be reported active. One the engine has restarted
    that has not yet run `settle_s` is crash-looping, so failed. `now=None` skips the settle
    check (the container is taken as running for long).
    """
    if info is None:
        return InstanceState.FAILED, ErrorInfo(int(AosCode.NOT_FOUND), 0, "container not found")
    if info.status == "running":
        if info.health == "unhealthy":
            return InstanceState.FAILED, ErrorInfo(int(AosCode.FAILED), 0, "health check failing")
        age = None if now is None else running_for(info, now)
        settling = age is not None and age < settle_s
        if settling and info.restart_count > 0:
            return InstanceState.FAILED, ErrorInfo(
                int(AosCode.RUNTIME),
                info.exit_code or 0,
                f"container keeps exiting (restarted {info.restart_count} times)",
            )
        if info.health == "starting" or (settling and info.health is None):
            return InstanceState.ACTIVATING, None
        return InstanceState.ACTIVE, None
    if info.status == "created":
        if info.error:
            return InstanceState.FAILED, ErrorInfo(
                int(AosCode.RUNTIME), info.exit_code or 0, f"container did not start: {info.error}"
            )
        return InstanceState.ACTIVATING, None
    if info.status == "restarting":
        code = info.exit_code or 0
        return InstanceState.FAILED, ErrorInfo(
            int(AosCode.RUNTIME), code, f"container keeps exiting (last exit code {code})"
        )
    if info.status == "paused":
        return InstanceState.INACTIVE, None
    code = info.exit_code or 0
    return InstanceState.FAILED, ErrorInfo(
        int(AosCode.RUNTIME), code, f"container {info.status} with exit code {code}"
    )


def states_by_key(
    containers: Sequence[ContainerInfo],
) -> Mapping[InstanceKey, ContainerInfo]:
    """The best container per instance (running ones first)."""
    out: dict[InstanceKey, ContainerInfo] = {}
    for info in sorted(containers, key=_running_first):
        key = container_key(info)
        if key is not None and key not in out:
            out[key] = info
    return out
