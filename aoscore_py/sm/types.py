"""The service manager's plain types: container labels and names, what the engine says about a
container or an image, and a platform. No I/O here, so the pure modules (planner, health, images)
and the Docker adapter can all import it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import orjson

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

# Repository names of the images this agent loads; only these are ever removed. The second is
# what earlier versions wrote (the slash was replaced by an underscore).
IMAGE_REPOSITORY = "aoscore/"
LEGACY_IMAGE_REPOSITORY = "aoscore_"

# Docker's restart policy for our containers: none, the service manager restarts them itself.
RESTART_POLICY = "no"

_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")


@dataclass(frozen=True)
class ContainerSpec:
    """What to create: the name, the loaded image id, our labels, and an optional command."""

    name: str
    image_id: str
    labels: dict[str, str]
    command: list[str] | None = None


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

    @property
    def ours(self) -> bool:
        """Whether this agent loaded it (a tag in our repository)."""
        return any(t.startswith((IMAGE_REPOSITORY, LEGACY_IMAGE_REPOSITORY)) for t in self.tags)


@dataclass(frozen=True)
class Platform:
    """An OS and CPU in OCI spelling (`linux`, `amd64`, variant `v7`)."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


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


def image_tag(item_id: str, version: str) -> str:
    """The tag a loaded image gets: `aoscore/<item>:<version>`, in Docker's alphabet."""
    repository = re.sub(r"[^a-z0-9]+", "-", item_id.lower()).strip("-") or "item"
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", version).lstrip(".-")[:128] or "latest"
    return f"{IMAGE_REPOSITORY}{repository}:{tag}"
