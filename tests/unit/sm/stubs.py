"""Doubles for the service manager's tests: a fake clock, OCI blobs on disk, and a fake Docker
engine with memory that implements what DockerServiceManager calls on DockerRuntime.

The fake engine's containers follow their image's `Behaviour` on the fake clock: run for ever,
exit after some seconds with a code, refuse to start, or report a health status. Loading goes
through the real `images.ensure_image` (platform check, archive with zstd layers decompressed);
only the final `docker load` is imitated by reading the archive's manifest.json.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
import zstandard

from aoscore_py.errors import AosError, RuntimeEngineError
from aoscore_py.nodes import ImageLayout, InstanceKey, InstanceSpec
from aoscore_py.sm import images
from aoscore_py.sm.docker_runtime import AlreadyExists
from aoscore_py.sm.types import (
    LABEL_IMAGE,
    LABEL_INSTANCE,
    LABEL_ITEM,
    LABEL_ITEM_CONFIG,
    LABEL_SUBJECT,
    LABEL_VERSION,
    RESTART_POLICY,
    ContainerInfo,
    ContainerLimits,
    ContainerSpec,
    ImageInfo,
    Platform,
    item_config_digest,
)

T0 = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC).timestamp()


def stamp(t: float | None) -> str | None:
    """The engine's RFC 3339 spelling of a time (nanoseconds, as Docker writes them)."""
    if t is None:
        return None
    moment = datetime.fromtimestamp(t, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}000Z"


@dataclass
class FakeClock:
    """Wall-clock seconds that move only when told."""

    now: float = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- OCI blobs ----------------------------------------------------------------------------------


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass(frozen=True)
class Blobs:
    """An image as blobs in a folder laid out as the image manager's: `<root>/sha256/<hex>`."""

    root: Path
    manifest: dict[str, Any]
    config_digest: str
    manifest_digest: str
    plain_layers: tuple[bytes, ...]

    def path(self, digest: str) -> Path:
        algorithm, hex_digest = digest.split(":", 1)
        return self.root / algorithm / hex_digest

    def layout(self) -> ImageLayout:
        return ImageLayout(
            "sha256:" + "9" * 64,
            self.manifest_digest,
            self.manifest,
            self.config_digest,
            tuple(layer["digest"] for layer in self.manifest["layers"]),
        )


def make_blobs(
    root: Path,
    *,
    name: str = "img",
    os_name: str = "linux",
    architecture: str = "amd64",
    variant: str | None = None,
    compressions: tuple[str, ...] = ("gzip",),
    media_types: tuple[str | None, ...] | None = None,
    item_config: bytes | None = None,
) -> Blobs:
    """Write an image's config and layers (one per compression) under `root`, and the item
    config (raw JSON, so a test can write one that does not read) that its manifest names."""
    plain = tuple(
        layer_tar({f"{name}/{n}.txt": f"{name} layer {n}\n".encode()})
        for n in range(len(compressions))
    )
    blobs: dict[str, bytes] = {}
    layers = []
    for n, (kind, tar) in enumerate(zip(compressions, plain, strict=True)):
        if kind == "gzip":
            data, media = gzip.compress(tar, mtime=0), images_media("gzip")
        elif kind == "zstd":
            data, media = zstandard.ZstdCompressor().compress(tar), images_media("zstd")
        else:
            data, media = tar, images_media("")
        if media_types is not None:
            media = media_types[n]
        blobs[digest_of(data)] = data
        entry = {"digest": digest_of(data), "size": len(data)}
        if media is not None:
            entry["mediaType"] = media
        layers.append(entry)
    config_json: dict[str, Any] = {
        "os": os_name,
        "architecture": architecture,
        "config": {"Cmd": ["/bin/run"]},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(t) for t in plain]},
    }
    if variant:
        config_json["variant"] = variant
    config = orjson.dumps(config_json)
    blobs[digest_of(config)] = config
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "config": {"digest": digest_of(config), "size": len(config)},
        "layers": layers,
    }
    if item_config is not None:
        blobs[digest_of(item_config)] = item_config
        manifest["aosItemConfig"] = {"digest": digest_of(item_config), "size": len(item_config)}
    manifest_bytes = orjson.dumps(manifest)
    out = Blobs(root, manifest, digest_of(config), digest_of(manifest_bytes), plain)
    for digest, data in blobs.items():
        path = out.path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return out


def images_media(suffix: str) -> str:
    base = "application/vnd.oci.image.layer.v1.tar"
    return f"{base}+{suffix}" if suffix else base


def read_archive(archive: IO[bytes]) -> dict[str, bytes]:
    """Every member of a docker-archive, by name."""
    with tarfile.open(fileobj=archive, mode="r") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


# --- specs and containers -----------------------------------------------------------------------

IMG1 = "sha256:" + "1" * 64
IMG2 = "sha256:" + "2" * 64


def layout(config: str = IMG1, item_config: str | None = None) -> ImageLayout:
    manifest = {"aosItemConfig": {"digest": item_config}} if item_config else {}
    return ImageLayout("sha256:" + "9" * 64, "sha256:" + "8" * 64, manifest, config, ())


def spec(
    item: str, index: int = 0, version: str = "1.0", image: str | ImageLayout = IMG1
) -> InstanceSpec:
    image_layout = image if isinstance(image, ImageLayout) else layout(image)
    return InstanceSpec(InstanceKey(item, "subj", index), "service", version, image_layout)


def labels_for(s: InstanceSpec, generation: int | None = None) -> dict[str, str]:
    labels = {
        LABEL_ITEM: s.key.item_id,
        LABEL_SUBJECT: s.key.subject_id,
        LABEL_INSTANCE: str(s.key.instance),
        LABEL_VERSION: s.version,
        LABEL_IMAGE: s.image.config_digest,
    }
    if item_config_digest(s.image.manifest):
        labels[LABEL_ITEM_CONFIG] = item_config_digest(s.image.manifest)
    if generation is not None:
        labels["io.aoscore.generation"] = str(generation)
    return labels


def container(
    cid: str,
    s: InstanceSpec | None = None,
    *,
    status: str = "running",
    health: str | None = None,
    exit_code: int | None = None,
    started: float | None = None,
    finished: float | None = None,
    error: str | None = None,
    generation: int | None = None,
    restart_policy: str = RESTART_POLICY,
    **label_overrides: str,
) -> ContainerInfo:
    labels = labels_for(s, generation) if s is not None else {}
    labels.update({f"io.aoscore.{k}": v for k, v in label_overrides.items()})
    return ContainerInfo(
        id=cid,
        name=f"name-{cid}",
        labels=labels,
        status=status,
        health=health,
        exit_code=exit_code,
        started_at=stamp(started),
        image_id="sha256:" + "f" * 64,
        error=error,
        finished_at=stamp(finished),
        restart_policy=restart_policy,
    )


# --- the fake engine ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    """What a container of an image does once started.

    Attributes:
        exit_after_s: it exits this long after each start (None: runs for ever).
        exit_code: the code it exits with.
        start_error: the engine refuses to start it with this error (exec not found).
        health: the health Docker reports while it runs (None: no healthcheck).
        log: what it prints.
    """

    exit_after_s: float | None = None
    exit_code: int = 0
    start_error: str | None = None
    health: str | None = None
    log: str = ""


@dataclass
class FakeContainer:
    id: str
    name: str
    labels: dict[str, str]
    image: str
    status: str = "created"
    started: float | None = None
    finished: float | None = None
    exit_code: int | None = None
    error: str | None = None
    restart_policy: str = RESTART_POLICY


@dataclass
class FakeEngine:
    """A Docker engine with memory, on a fake clock.

    `calls` records every mutating call as (operation, id or name), so tests can check that
    only the intended containers were touched.
    """

    clock: FakeClock
    node_platform: Platform = field(default_factory=lambda: Platform("linux", "amd64"))
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    containers: dict[str, FakeContainer] = field(default_factory=dict)
    images: dict[str, tuple[Platform, list[str]]] = field(default_factory=dict)
    used_by_others: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)
    loads: list[dict[str, bytes]] = field(default_factory=list)
    fail: dict[str, AosError] = field(default_factory=dict)
    ids: itertools.count = field(default_factory=itertools.count)
    limits: dict[str, ContainerLimits] = field(default_factory=dict)  # by container id

    # what tests set up
    def add_image(self, image_id: str, *tags: str, platform: Platform | None = None) -> None:
        self.images[image_id] = (platform or self.node_platform, list(tags))

    def _maybe_fail(self, operation: str) -> None:
        if operation in self.fail:
            raise self.fail[operation]

    def _settle(self, c: FakeContainer) -> None:
        """Let the clock act: a container whose behaviour exits does so on time."""
        b = self.behaviours.get(c.image, Behaviour())
        if c.status == "running" and b.exit_after_s is not None and c.started is not None:
            end = c.started + b.exit_after_s
            if self.clock.now >= end:
                c.status, c.finished, c.exit_code = "exited", end, b.exit_code

    # images
    def platform(self) -> Platform:
        return self.node_platform

    def ensure_image(
        self,
        config_digest: str,
        manifest: dict[str, Any],
        blob_path: Callable[[str], Path],
        tag: str | None = None,
        node: Platform | None = None,
    ) -> str:
        self._maybe_fail("load")
        return images.ensure_image(self, config_digest, manifest, blob_path, tag=tag, node=node)

    def image_platform(self, image: str) -> Platform | None:
        found = self.images.get(image)
        return found[0] if found else None

    def load_archive(self, archive: IO[bytes]) -> list[str]:
        members = read_archive(archive)
        self.loads.append(members)
        (entry,) = orjson.loads(members["manifest.json"])
        image_id = "sha256:" + entry["Config"].removesuffix(".json")
        config = orjson.loads(members[entry["Config"]])
        platform = images.normalize(config["os"], config["architecture"], config.get("variant", ""))
        self.images[image_id] = (platform, list(entry["RepoTags"]))
        self.calls.append(("load", image_id))
        return [image_id]

    def tag_image(self, image: str, tag: str) -> None:
        tags = self.images[image][1]
        if tag not in tags:
            tags.append(tag)
        self.calls.append(("tag", image))

    def list_images(self) -> list[ImageInfo]:
        return [ImageInfo(i, tuple(tags)) for i, (_, tags) in self.images.items()]

    def images_in_use(self) -> set[str]:
        return {c.image for c in self.containers.values()} | self.used_by_others

    def remove_image(self, reference: str) -> bool:
        for image_id, (_, tags) in list(self.images.items()):
            if reference in tags or reference == image_id:
                if image_id in self.images_in_use():
                    return False
                if reference in tags:
                    tags.remove(reference)
                if not tags or reference == image_id:
                    del self.images[image_id]
                self.calls.append(("remove_image", reference))
        return True

    # containers
    def create_container(self, spec: ContainerSpec) -> str:
        self._maybe_fail("create")
        if spec.image_id not in self.images:
            raise RuntimeEngineError(f"create container {spec.name}: no such image")
        for c in self.containers.values():
            if c.name == spec.name:
                raise AlreadyExists(f"create container {spec.name}: taken", container_id=c.id)
        cid = f"c{next(self.ids)}"
        self.containers[cid] = FakeContainer(cid, spec.name, dict(spec.labels), spec.image_id)
        self.limits[cid] = spec.limits
        self.calls.append(("create", spec.name))
        return cid

    def start_container(self, container_id: str) -> None:
        self._maybe_fail("start")
        c = self.containers[container_id]
        self._settle(c)
        b = self.behaviours.get(c.image, Behaviour())
        self.calls.append(("start", c.name))
        if c.status == "running":
            return
        if b.start_error:
            c.error, c.exit_code = b.start_error, 127
            raise RuntimeEngineError(f"start container {container_id}: {b.start_error}")
        c.status, c.started, c.finished, c.exit_code, c.error = (
            "running",
            self.clock.now,
            None,
            None,
            None,
        )

    def unpause_container(self, container_id: str) -> None:
        self.containers[container_id].status = "running"
        self.calls.append(("unpause", self.containers[container_id].name))

    def remove_container(self, container_id: str, *, timeout_s: float = 5) -> None:
        self._maybe_fail("remove")
        c = self.containers.pop(container_id, None)
        if c is not None:
            self.calls.append(("remove", c.name))

    def set_restart_policy(self, container_id: str, policy: str = RESTART_POLICY) -> None:
        self.containers[container_id].restart_policy = policy
        self.calls.append(("update", self.containers[container_id].name))

    def container_logs(self, container_id: str, lines: int = 5) -> str:
        c = self.containers.get(container_id)
        return self.behaviours.get(c.image, Behaviour()).log if c else ""

    def _info(self, c: FakeContainer) -> ContainerInfo:
        self._settle(c)
        b = self.behaviours.get(c.image, Behaviour())
        return ContainerInfo(
            id=c.id,
            name=c.name,
            labels=dict(c.labels),
            status=c.status,
            health=b.health if c.status == "running" else None,
            exit_code=c.exit_code,
            started_at=stamp(c.started),
            image_id=c.image,
            error=c.error,
            finished_at=stamp(c.finished),
            restart_policy=c.restart_policy,
        )

    def list_containers(self, filters: Mapping[str, str]) -> list[ContainerInfo]:
        self._maybe_fail("list")
        return [
            self._info(c)
            for c in self.containers.values()
            if all(c.labels.get(k) == v for k, v in filters.items())
        ]

    def container_states(self, filters: Mapping[str, str]) -> list[tuple[str, str, str]]:
        out = []
        for info in self.list_containers(filters):
            text = f"Up ({info.health})" if info.health else "Up"
            out.append((info.id, info.status, text))
        return out

    # test helpers
    def by_item(self, item: str) -> list[FakeContainer]:
        return [c for c in self.containers.values() if c.labels.get(LABEL_ITEM) == item]

    def crash(self, container_id: str, code: int = 1) -> None:
        c = self.containers[container_id]
        c.status, c.finished, c.exit_code = "exited", self.clock.now, code

    def mutations(self, since: int = 0) -> list[tuple[str, str]]:
        return self.calls[since:]


def with_status(info: ContainerInfo, **changes: Any) -> ContainerInfo:
    return replace(info, **changes)
