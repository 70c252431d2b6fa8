"""The service manager's thin adapter over docker-py: our types in, engine calls out.

Every call blocks (docker-py uses requests), so the service manager calls this class from one
worker thread. It holds no domain logic: it loads verified OCI blobs as images, creates, starts,
lists and removes containers, and turns every engine failure into a RuntimeEngineError that names
the operation and the object. Containers carry `io.aoscore.*` labels, which is how a restarted
agent finds what it runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import orjson
import requests

from aoscore_py.errors import AosCode, RuntimeEngineError
from aoscore_py.logs import get_logger

LABEL_PREFIX = "io.aoscore."
LABEL_UNIT = LABEL_PREFIX + "unit"
LABEL_NODE = LABEL_PREFIX + "node"
LABEL_ITEM = LABEL_PREFIX + "item"
LABEL_SUBJECT = LABEL_PREFIX + "subject"
LABEL_INSTANCE = LABEL_PREFIX + "instance"
LABEL_VERSION = LABEL_PREFIX + "version"
LABEL_IMAGE = LABEL_PREFIX + "image"

# Docker reports a never-started container with this zero time.
_NEVER = "0001-01-01T00:00:00Z"
# States in which ExitCode tells how the last run ended ("restarting" waits out a backoff).
_EXITED = ("exited", "dead", "restarting")
_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")

_log = get_logger("sm.docker")


class AlreadyExists(RuntimeEngineError):
    """A container with that name exists: the caller may adopt it by `container_id`."""

    code = AosCode.ALREADY_EXIST

    def __init__(self, message: str, *, container_id: str) -> None:
        super().__init__(message)
        self.container_id = container_id


@dataclass(frozen=True)
class ContainerSpec:
    """What to create: the name, the loaded image id, our labels, and an optional command."""

    name: str
    image_id: str
    labels: dict[str, str]
    command: list[str] | None = None


@dataclass(frozen=True)
class ContainerInfo:
    """What the engine says about one container."""

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


def container_name(unit: str, item: str, subject: str, index: int) -> str:
    """A valid, readable Docker name; the hash of the exact tuple keeps distinct tuples apart."""
    exact = orjson.dumps([unit, item, subject, index])
    suffix = hashlib.sha256(exact).hexdigest()[:8]
    parts = [_UNSAFE.sub("_", part)[:40] for part in (unit, item, subject, str(index))]
    return "-".join(["aos", *parts, suffix])


@contextlib.contextmanager
def _engine_errors(operation: str, target: str, *, missing_ok: bool = False) -> Iterator[None]:
    """Turn docker-py, transport and file failures into one RuntimeEngineError.

    With `missing_ok`, the engine's "no such object" ends the block quietly instead.
    """
    try:
        yield
    except RuntimeEngineError:
        raise
    except docker.errors.NotFound as exc:
        if not missing_ok:
            raise RuntimeEngineError(f"{operation} {target}: {exc}") from exc
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        raise RuntimeEngineError(f"{operation} {target}: {exc}") from exc


def _info(attrs: dict[str, Any]) -> ContainerInfo:
    state = attrs.get("State") or {}
    status = str(state.get("Status", "unknown"))
    health = state.get("Health")
    started = state.get("StartedAt")
    return ContainerInfo(
        id=attrs["Id"],
        name=str(attrs.get("Name", "")).lstrip("/"),
        labels=dict((attrs.get("Config") or {}).get("Labels") or {}),
        status=status,
        health=str(health["Status"]) if health else None,
        exit_code=int(state["ExitCode"]) if status in _EXITED or state.get("Error") else None,
        started_at=started if started and started != _NEVER else None,
        image_id=str(attrs.get("Image", "")),
        restart_count=int(attrs.get("RestartCount") or 0),
        error=str(state["Error"]) if state.get("Error") else None,
    )


class DockerRuntime:
    """One Docker engine.

    Args:
        base_url: the engine's address; None reads DOCKER_HOST and friends.

    Raises:
        RuntimeEngineError: the engine cannot be reached to agree on an API version.
    """

    def __init__(self, base_url: str | None = None) -> None:
        # "auto" asks the engine its API version: the CLI here is newer than the engine.
        with _engine_errors("connect to", base_url or "the Docker engine from the environment"):
            if base_url is None:
                self._client = docker.from_env(version="auto")
            else:
                self._client = docker.DockerClient(base_url=base_url, version="auto")

    @property
    def client(self) -> docker.DockerClient:
        return self._client

    def close(self) -> None:
        self._client.close()

    def ping(self) -> None:
        """Raises RuntimeEngineError unless the engine answers."""
        with _engine_errors("ping", "the Docker engine"):
            self._client.ping()

    def ensure_image(
        self,
        config_digest: str,
        manifest: dict[str, Any],
        blob_path: Callable[[str], Path],
        tag: str | None = None,
    ) -> str:
        """Load the image of `manifest` unless the engine has it; return its image id.

        Docker's id for a loaded archive is the digest of its config, so an image whose id is
        `config_digest` is already this image and needs no load.

        Args:
            config_digest: the manifest's config digest, the expected image id.
            manifest: the verified OCI image manifest.
            blob_path: where the verified blob of a digest lies.
            tag: an optional repository tag for the loaded image.

        Raises:
            RuntimeEngineError: a blob is unreadable, the engine refused the archive, or the
                loaded image has another id.
        """
        with _engine_errors("inspect image", config_digest, missing_ok=True):
            return str(self._client.images.get(config_digest).id)
        if manifest.get("config", {}).get("digest") != config_digest:
            raise RuntimeEngineError(
                f"load image {config_digest}: the manifest names another config"
            )
        with tempfile.TemporaryFile() as archive:
            with _engine_errors("assemble image archive for", config_digest):
                _write_archive(archive, config_digest, manifest, blob_path, tag)
            archive.seek(0)
            with _engine_errors("load image", config_digest):
                loaded = self._client.images.load(archive)
        ids = [image.id for image in loaded]
        if ids != [config_digest]:
            raise RuntimeEngineError(f"load image {config_digest}: the engine loaded {ids}")
        _log.info("image.loaded", image=config_digest, tag=tag, layers=len(manifest["layers"]))
        return config_digest

    def create_container(self, spec: ContainerSpec) -> str:
        """Create a container that restarts with the engine and has no network; return its id.

        Raises:
            AlreadyExists: a container of that name exists (its id is attached).
            RuntimeEngineError: the engine refused.
        """
        api = self._client.api
        with _engine_errors("create container", spec.name):
            host_config = api.create_host_config(
                network_mode="none", restart_policy={"Name": "unless-stopped"}
            )
            try:
                created = api.create_container(
                    image=spec.image_id,
                    command=spec.command,
                    name=spec.name,
                    labels=dict(spec.labels),
                    host_config=host_config,
                    detach=True,
                )
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
                existing = str(api.inspect_container(spec.name)["Id"])
                raise AlreadyExists(
                    f"create container {spec.name}: the name is taken by {existing}",
                    container_id=existing,
                ) from exc
        _log.info("container.created", name=spec.name, id=created["Id"], image=spec.image_id)
        return str(created["Id"])

    def start_container(self, container_id: str) -> None:
        """Start a container; one already running is left as it is (the engine answers 304)."""
        with _engine_errors("start container", container_id):
            self._client.api.start(container_id)

    def unpause_container(self, container_id: str) -> None:
        """Resume a paused container (Docker refuses to `start` one)."""
        with _engine_errors("unpause container", container_id):
            self._client.api.unpause(container_id)

    def stop_container(self, container_id: str, *, timeout_s: float = 5) -> None:
        """Stop a container: SIGTERM, then SIGKILL after `timeout_s`; a stopped one is fine."""
        with _engine_errors("stop container", container_id):
            self._client.api.stop(container_id, timeout=math.ceil(timeout_s))

    def remove_container(self, container_id: str, *, timeout_s: float = 5) -> None:
        """Stop gracefully, then remove; a container that is already gone is not an error."""
        with _engine_errors("remove container", container_id, missing_ok=True):
            self._client.api.stop(container_id, timeout=math.ceil(timeout_s))
            self._client.api.remove_container(container_id, force=True)
            _log.info("container.removed", id=container_id)

    def list_containers(self, filters: dict[str, str]) -> list[ContainerInfo]:
        """All containers, running or not, whose labels have every given `label: value`."""
        labels = [f"{key}={value}" for key, value in filters.items()]
        with _engine_errors("list containers", ",".join(labels) or "(all)"):
            containers = self._client.containers.list(
                all=True, filters={"label": labels} if labels else None, ignore_removed=True
            )
        return [_info(container.attrs) for container in containers]


def _write_archive(
    archive: Any,
    config_digest: str,
    manifest: dict[str, Any],
    blob_path: Callable[[str], Path],
    tag: str | None,
) -> None:
    """A docker-archive for `docker load`: manifest.json, the config and the layer blobs."""
    config_name = config_digest.removeprefix("sha256:") + ".json"
    layer_names: list[str] = []
    with tarfile.open(fileobj=archive, mode="w") as tar:
        tar.add(blob_path(config_digest), arcname=config_name)
        for layer in manifest["layers"]:
            suffix = ".tar.gz" if "gzip" in layer.get("mediaType", "gzip") else ".tar"
            name = str(layer["digest"]).removeprefix("sha256:") + suffix
            tar.add(blob_path(layer["digest"]), arcname=name)
            layer_names.append(name)
        index = orjson.dumps(
            [{"Config": config_name, "RepoTags": [tag] if tag else [], "Layers": layer_names}]
        )
        info = tarfile.TarInfo("manifest.json")
        info.size = len(index)
        tar.addfile(info, fileobj=io.BytesIO(index))
