"""The service manager's thin adapter over docker-py: our types in, engine calls out.

Every call blocks (docker-py uses requests), so the service manager calls this class from one
worker thread. It holds no domain logic: it loads image archives, creates, starts, lists and
removes containers and images, and turns every engine failure into a RuntimeEngineError that
names the operation and the object. Containers carry `io.aoscore.*` labels, which is how a
restarted agent finds what it runs; their restart policy is `no`, because the service manager
restarts them itself (health.py).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import docker
import docker.errors
import requests

from aoscore_py.errors import AosCode, RuntimeEngineError
from aoscore_py.logs import get_logger

from . import images
from .types import (
    LABEL_GENERATION,
    LABEL_IMAGE,
    LABEL_INSTANCE,
    LABEL_ITEM,
    LABEL_NODE,
    LABEL_PREFIX,
    LABEL_SUBJECT,
    LABEL_UNIT,
    LABEL_VERSION,
    RESTART_POLICY,
    ContainerInfo,
    ContainerSpec,
    ImageInfo,
    Platform,
    container_name,
)

__all__ = [
    "LABEL_GENERATION",
    "LABEL_IMAGE",
    "LABEL_INSTANCE",
    "LABEL_ITEM",
    "LABEL_NODE",
    "LABEL_PREFIX",
    "LABEL_SUBJECT",
    "LABEL_UNIT",
    "LABEL_VERSION",
    "AlreadyExists",
    "ContainerInfo",
    "ContainerSpec",
    "DockerRuntime",
    "container_name",
]

# Docker reports a never-started container with this zero time.
_NEVER = "0001-01-01T00:00:00Z"
# States in which ExitCode tells how the last run ended ("restarting" waits out a backoff).
_EXITED = ("exited", "dead", "restarting")

_log = get_logger("sm.docker")


class AlreadyExists(RuntimeEngineError):
    """A container with that name exists: the caller may adopt it by `container_id`."""

    code = AosCode.ALREADY_EXIST

    def __init__(self, message: str, *, container_id: str) -> None:
        super().__init__(message)
        self.container_id = container_id


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


def _stamp(value: Any) -> str | None:
    return str(value) if value and value != _NEVER else None


def _info(attrs: dict[str, Any]) -> ContainerInfo:
    state = attrs.get("State") or {}
    status = str(state.get("Status", "unknown"))
    health = state.get("Health")
    policy = ((attrs.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name")
    return ContainerInfo(
        id=attrs["Id"],
        name=str(attrs.get("Name", "")).lstrip("/"),
        labels=dict((attrs.get("Config") or {}).get("Labels") or {}),
        status=status,
        health=str(health["Status"]) if health else None,
        exit_code=int(state["ExitCode"]) if status in _EXITED or state.get("Error") else None,
        started_at=_stamp(state.get("StartedAt")),
        image_id=str(attrs.get("Image", "")),
        restart_count=int(attrs.get("RestartCount") or 0),
        error=str(state["Error"]) if state.get("Error") else None,
        finished_at=_stamp(state.get("FinishedAt")),
        restart_policy=str(policy or RESTART_POLICY),
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

    def platform(self) -> Platform:
        """The engine's os and architecture, in OCI spelling."""
        with _engine_errors("ask", "the Docker engine its platform"):
            info = self._client.info()
        return images.normalize(str(info.get("OSType", "")), str(info.get("Architecture", "")))

    # --- images ----------------------------------------------------------------------------------

    def ensure_image(
        self,
        config_digest: str,
        manifest: dict[str, Any],
        blob_path: Callable[[str], Path],
        tag: str | None = None,
        node: Platform | None = None,
    ) -> str:
        """Load `manifest`'s image unless the engine has it; its id (see images.ensure_image)."""
        return images.ensure_image(self, config_digest, manifest, blob_path, tag=tag, node=node)

    def image_platform(self, image: str) -> Platform | None:
        """The platform of an image the engine holds; None when it holds none by that name."""
        with _engine_errors("inspect image", image, missing_ok=True):
            attrs = self._client.api.inspect_image(image)
            return images.normalize(
                str(attrs.get("Os", "")),
                str(attrs.get("Architecture", "")),
                attrs.get("Variant", ""),
            )
        return None

    def load_archive(self, archive: IO[bytes]) -> list[str]:
        """`docker load` a docker-archive stream; the ids of the images it held."""
        with _engine_errors("load image archive", getattr(archive, "name", "(stream)")):
            return [str(image.id) for image in self._client.images.load(archive)]

    def tag_image(self, image: str, tag: str) -> None:
        """Put `tag` (`repository:tag`) on an image the engine holds."""
        repository, _, name = tag.rpartition(":")
        with _engine_errors("tag image", f"{image} as {tag}"):
            self._client.api.tag(image, repository, name)

    def list_images(self) -> list[ImageInfo]:
        """Every image of the engine with its tags (no dangling layers)."""
        with _engine_errors("list images", "(all)"):
            found = self._client.api.images()
        return [ImageInfo(str(i["Id"]), tuple(i.get("RepoTags") or ())) for i in found]

    def remove_image(self, reference: str) -> bool:
        """Remove a tag, or an untagged image by id, never forcing; False when the engine keeps
        it because a container uses it (409). An image already gone is fine."""
        with _engine_errors("remove image", reference, missing_ok=True):
            try:
                self._client.api.remove_image(reference, force=False)
            except docker.errors.APIError as exc:
                if exc.status_code == 409:
                    return False
                raise
            _log.info("image.removed", image=reference)
        return True

    # --- containers ------------------------------------------------------------------------------

    def create_container(self, spec: ContainerSpec) -> str:
        """Create a container with no network, restart policy `no`, the spec's limits; its id.

        Raises:
            AlreadyExists: a container of that name exists (its id is attached).
            RuntimeEngineError: the engine refused (a limit it does not accept, ...).
        """
        api, limits = self._client.api, spec.limits
        with _engine_errors("create container", spec.name):
            host_config = api.create_host_config(
                network_mode="none",
                restart_policy={"Name": RESTART_POLICY},
                mem_limit=limits.memory,
                pids_limit=limits.pids,
                nano_cpus=limits.nano_cpus,
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

    def set_restart_policy(self, container_id: str, policy: str = RESTART_POLICY) -> None:
        """Change a container's restart policy in place (no restart)."""
        with _engine_errors("update restart policy of", container_id):
            self._client.api.update_container(container_id, restart_policy={"Name": policy})

    def list_containers(self, filters: Mapping[str, str]) -> list[ContainerInfo]:
        """All containers, running or not, whose labels have every given `label: value`."""
        labels = [f"{key}={value}" for key, value in filters.items()]
        with _engine_errors("list containers", ",".join(labels) or "(all)"):
            containers = self._client.containers.list(
                all=True, filters={"label": labels} if labels else None, ignore_removed=True
            )
        return [_info(container.attrs) for container in containers]

    def container_states(self, filters: Mapping[str, str]) -> list[tuple[str, str, str]]:
        """(id, state, status text) of the matching containers, from one cheap listing (no
        inspection): enough to notice that something changed."""
        labels = [f"{key}={value}" for key, value in filters.items()]
        with _engine_errors("list containers", ",".join(labels) or "(all)"):
            found = self._client.api.containers(all=True, filters={"label": labels})
        return [(str(c["Id"]), str(c.get("State", "")), str(c.get("Status", ""))) for c in found]

    def images_in_use(self) -> set[str]:
        """The image ids of every container on the engine, ours or not."""
        with _engine_errors("list containers", "(all)"):
            found = self._client.api.containers(all=True)
        return {str(c.get("ImageID", "")) for c in found}

    def container_logs(self, container_id: str, lines: int = 5) -> str:
        """The last `lines` of a container's output (stdout and stderr); empty if none."""
        with _engine_errors("read the log of", container_id, missing_ok=True):
            data = self._client.api.logs(container_id, tail=lines, timestamps=False)
            return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        return ""
