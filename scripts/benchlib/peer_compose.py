"""The peer of the `compose` benchmark: a docker-compose 1.29 project (the Debian package
`docker-compose`) with one service per agent instance, shaped like the agent's containers.

`compose_document` is pure (services in, the compose file's content out); `ComposeProject` runs
the CLI on one project and always takes it down again. The file is written as JSON, which is
YAML too, so no YAML library is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMPOSE_FILE_VERSION = "2.4"
# Only the agent's rule is allowed here: containers without a network (ENVIRONMENT.md).
ALLOWED_NETWORK_MODES = ("none",)
PROJECT_LABEL = "com.docker.compose.project"


class ComposeError(Exception):
    """docker-compose is missing, or a command of it failed (the message carries its output)."""


@dataclass(frozen=True)
class ContainerShape:
    """What the agent's containers are created with, read from one of them, for compose to copy:
    the command (the image's own when the agent passes none, as it does), the network mode and
    the restart policy."""

    command: tuple[str, ...] | None
    entrypoint: tuple[str, ...] | None
    network_mode: str
    restart: str


def container_shape(attrs: Mapping[str, Any]) -> ContainerShape:
    """The shape of a container from `docker inspect` (the engine's attributes).

    Raises:
        ComposeError: its network mode is not one the benchmark may give compose.
    """
    config = attrs.get("Config") or {}
    host = attrs.get("HostConfig") or {}
    network_mode = str(host.get("NetworkMode") or "default")
    if network_mode not in ALLOWED_NETWORK_MODES:
        raise ComposeError(
            f"the agent's container has network mode {network_mode!r}; the benchmark only "
            f"gives compose one of {ALLOWED_NETWORK_MODES}"
        )
    cmd, entrypoint = config.get("Cmd"), config.get("Entrypoint")
    return ContainerShape(
        command=tuple(cmd) if cmd else None,
        entrypoint=tuple(entrypoint) if entrypoint else None,
        network_mode=network_mode,
        restart=str((host.get("RestartPolicy") or {}).get("Name") or "no"),
    )


def _literal(arg: str) -> str:
    """An argument as compose must be told it to pass it on unchanged: `$$` for each `$`, or
    compose would substitute variables (the test image's command has a `$!`)."""
    return arg.replace("$", "$$")


def compose_document(
    images: Mapping[str, str], shape: ContainerShape, stop_grace_s: float
) -> dict[str, Any]:
    """A compose file: one service per `name -> image tag`, each with the agent's command,
    network mode and restart policy, and `stop_grace_period` set to the agent's stop timeout
    (what a recreated container gets between SIGTERM and SIGKILL)."""
    services: dict[str, Any] = {}
    for name, image in images.items():
        service: dict[str, Any] = {
            "image": image,
            "network_mode": shape.network_mode,
            "restart": shape.restart,
            "stop_grace_period": f"{stop_grace_s:g}s",
        }
        if shape.entrypoint is not None:
            service["entrypoint"] = [_literal(arg) for arg in shape.entrypoint]
        if shape.command is not None:
            service["command"] = [_literal(arg) for arg in shape.command]
        services[name] = service
    return {"version": COMPOSE_FILE_VERSION, "services": services}


def find_compose() -> str:
    """The docker-compose CLI.

    Raises:
        ComposeError: not installed.
    """
    found = shutil.which("docker-compose")
    if found is None:
        raise ComposeError(
            "docker-compose not found on PATH: run scripts/setup (Debian package docker-compose)"
        )
    return found


def _environment() -> dict[str, str]:
    # The Debian CLI runs on the system Python: keep our venv's settings away from it.
    unset = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    return {k: v for k, v in os.environ.items() if k not in unset}


@dataclass
class ComposeProject:
    """One compose project in its own folder: `up` times the CLI from launch to exit.

    Args:
        name: the project name (lower-case letters and digits: compose 1.x's alphabet).
        folder: where its compose file is written.
        cli: the docker-compose binary.
    """

    name: str
    folder: Path
    cli: str
    timeout_s: float = 300.0

    @property
    def file(self) -> Path:
        return self.folder / "docker-compose.yml"

    def write(self, document: Mapping[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.file.write_text(json.dumps(document, indent=2) + "\n")

    def _run(self, *args: str) -> tuple[float, str]:
        command = [self.cli, "--ansi", "never", "-p", self.name, "-f", str(self.file), *args]
        started = time.perf_counter()
        try:
            done = subprocess.run(
                command,
                env=_environment(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ComposeError(f"{' '.join(command)} took over {self.timeout_s} s") from exc
        elapsed = time.perf_counter() - started
        output = (done.stdout + done.stderr).decode(errors="replace")
        if done.returncode != 0:
            raise ComposeError(f"{' '.join(command)} exited with {done.returncode}:\n{output}")
        return elapsed, output

    def up(self) -> float:
        """`docker-compose up -d`: seconds from the CLI's launch to its exit.

        Raises:
            ComposeError: it failed.
        """
        return self._run("up", "-d")[0]

    def down(self, stop_grace_s: float) -> None:
        """`docker-compose down` (containers and anything else of the project).

        Raises:
            ComposeError: it failed.
        """
        self._run("down", "--remove-orphans", "-t", f"{max(0, round(stop_grace_s))}")


def cli_start_s(cli: str, samples: int = 3) -> float:
    """The best time of `docker-compose version`: what the CLI costs before it talks to the
    engine (a Python program starting), part of every `up` it times."""
    best = float("inf")
    for _ in range(samples):
        started = time.perf_counter()
        subprocess.run(
            [cli, "version", "--short"],
            env=_environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=True,
        )
        best = min(best, time.perf_counter() - started)
    return best


def services_of(names: Sequence[str]) -> dict[str, str]:
    """Compose service names for item ids (compose 1.x allows [a-zA-Z0-9._-])."""
    return {name: "".join(c if c.isalnum() or c in "._-" else "-" for c in name) for name in names}
