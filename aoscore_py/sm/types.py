"""The service manager's plain types: container labels and names, what the engine says about a
container or an image, a platform, the limits a container runs under. No I/O here, so the pure
modules (planner, health, images, quotas) and the Docker adapter can all import it.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..blobs import oci
from ..errors import AosError
from ..nodes import InstanceKey

LABEL_PREFIX = "io.aoscore."
LABEL_UNIT = LABEL_PREFIX + "unit"
LABEL_NODE = LABEL_PREFIX + "node"
LABEL_ITEM = LABEL_PREFIX + "item"
LABEL_SUBJECT = LABEL_PREFIX + "subject"
LABEL_INSTANCE = LABEL_PREFIX + "instance"
LABEL_VERSION = LABEL_PREFIX + "version"
LABEL_IMAGE = LABEL_PREFIX + "image"
# Blue-green: each replacement of an instance's container is the next generation (0 first).
LABEL_GENERATION = LABEL_PREFIX + "generation"
# The digest of the item config (aosItemConfig) whose quotas the container runs under; absent
# when the image names none. Another item config is another target, as another version is.
LABEL_ITEM_CONFIG = LABEL_PREFIX + "itemconfig"

# Repository names of the images SMs load: `aoscore/<unit>-<node>/<item>:<version>`. Each SM
# only ever removes its own tags, so SMs sharing one engine (a test rig, a node running two
# units) never take an image from under each other: Docker deletes an image with its last tag,
# and never one a container uses. Tags of earlier versions (`aoscore/<item>`, `aoscore_<item>`)
# are left alone.
IMAGE_REPOSITORY = "aoscore/"

# Docker's restart policy for our containers: none, the service manager restarts them itself.
RESTART_POLICY = "no"

_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")


@dataclass(frozen=True)
class ContainerLimits:
    """What the engine enforces on a container (quotas.py derives it from the item config);
    None is no limit.

    Attributes:
        memory: bytes of RAM (`ramLimit`).
        pids: processes and threads (`pidsLimit`).
        nano_cpus: CPU time in billionths of a CPU (`cpuDmipsLimit`, scaled to this node).
    """

    memory: int | None = None
    pids: int | None = None
    nano_cpus: int | None = None


@dataclass(frozen=True)
class ContainerSpec:
    """What to create: the name, the loaded image id, our labels, an optional command, limits."""

    name: str
    image_id: str
    labels: dict[str, str]
    command: list[str] | None = None
    limits: ContainerLimits = field(default_factory=ContainerLimits)


@dataclass(frozen=True)
class ContainerInfo:
    """What the engine says about one container (times are the engine's RFC 3339 stamps)."""

    id: str
    name: str
    labels: dict[str, str]
    status: str
    health: str | None
    exit_code: int | None
    started_at: str | None
    image_id: str
    restart_count: int = 0
    error: str | None = None
    finished_at: str | None = None
    restart_policy: str = RESTART_POLICY

    @property
    def generation(self) -> int:
        """The blue-green generation from the labels; 0 for a container without one."""
        try:
            return int(self.labels.get(LABEL_GENERATION, "0"))
        except ValueError:
            return 0


@dataclass(frozen=True)
class ImageInfo:
    """One image of the engine: its id and repository tags."""

    id: str
    tags: tuple[str, ...]

    def tags_of(self, owner: str) -> tuple[str, ...]:
        """The tags SM `owner` (see `image_owner`) put on this image."""
        prefix = f"{IMAGE_REPOSITORY}{owner}/"
        return tuple(t for t in self.tags if t.startswith(prefix))


@dataclass(frozen=True)
class Platform:
    """An OS and CPU in OCI spelling (`linux`, `amd64`, variant `v7`)."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


def item_config_digest(manifest: Mapping[str, Any]) -> str:
    """The digest of the item config a manifest names; "" when it names none.

    The manifests the service manager holds were read when their image was fetched (the blob
    cache refuses one whose `aosItemConfig` is no descriptor), so a descriptor that does not
    read here counts as none instead of raising in a pure decision.
    """
    with contextlib.suppress(AosError, AttributeError, TypeError):
        return oci.item_config_digest(dict(manifest)) or ""
    return ""


def container_key(info: ContainerInfo) -> InstanceKey | None:
    """The instance a container belongs to, from its labels; None if they are unreadable."""
    labels = info.labels
    try:
        return InstanceKey(labels[LABEL_ITEM], labels[LABEL_SUBJECT], int(labels[LABEL_INSTANCE]))
    except (KeyError, ValueError):
        return None


def container_name(
    unit: str, item: str, subject: str, index: int, *, node: str = "", generation: int = 0
) -> str:
    """A valid, readable Docker name; the hash of the exact tuple keeps distinct tuples apart.

    The node is part of the name because several nodes may share one engine; the generation
    suffix lets a replacement start beside the container it replaces (blue-green).
    """
    exact: list[object] = [unit, item, subject, index]
    if node or generation:
        exact += [node, generation]
    suffix = hashlib.sha256(orjson.dumps(exact)).hexdigest()[:8]
    visible = [unit, item, subject, str(index)] + ([node] if node else [])
    parts = [_UNSAFE.sub("_", part)[:40] for part in visible]
    name = "-".join(["aos", *parts, suffix])
    return f"{name}-g{generation}" if generation else name


def _path_component(text: str, default: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:64] or default


def image_owner(unit_id: str, node_id: str) -> str:
    """The repository component naming one SM: `<unit>-<node>` in Docker's alphabet."""
    return f"{_path_component(unit_id, 'unit')}-{_path_component(node_id, 'node')}"


def image_tag(owner: str, item_id: str, version: str) -> str:
    """The tag SM `owner` puts on an image it uses: `aoscore/<owner>/<item>:<version>`."""
    repository = _path_component(item_id, "item")
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", version).lstrip(".-")[:128] or "latest"
    return f"{IMAGE_REPOSITORY}{owner}/{repository}:{tag}"
