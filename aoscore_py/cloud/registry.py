"""A real OCI registry (Debian's `docker-registry`) on loopback, owned by whoever starts it.

The reference cloud serves blob URLs from a real registry, and tests need one per session. It is
a child process in its own process group with its own storage folder and log, so stopping it
leaves nothing behind and a failed start points at the log that says why.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import httpx
import orjson

from aoscore_py.errors import LocalError
from aoscore_py.lifeline import dies_with_parent
from aoscore_py.logs import get_logger

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0

_log = get_logger("cloud.registry")


def find_docker_registry() -> str:
    """The path of the `docker-registry` binary.

    Raises:
        LocalError: it is not installed.
    """
    path = shutil.which("docker-registry")
    if path is None:
        raise LocalError(
            "docker-registry not found on PATH: install the Debian package `docker-registry`"
        )
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # The registry leads its own group (start_new_session), so this reaches only it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _config(data: Path, port: int) -> str:
    # JSON strings are valid YAML scalars, which quotes any path safely.
    return (
        "version: 0.1\n"
        "log:\n"
        "  level: warn\n"
        "  accesslog:\n"
        "    disabled: true\n"
        "storage:\n"
        "  filesystem:\n"
        f"    rootdirectory: {orjson.dumps(str(data)).decode()}\n"
        "  delete:\n"
        "    enabled: true\n"
        "http:\n"
        f"  addr: 127.0.0.1:{port}\n"
        f"  secret: {secrets.token_hex(16)}\n"
    )


class Registry:
    """A `docker-registry serve` child process listening on 127.0.0.1.

    Args:
        root: a folder for its config, storage (`data/`), log and pid file.
        port: the port to listen on; a free one is picked when None.
    """

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.port = port
        self.log_path = self.root / "registry.log"
        self.pid_path = self.root / "registry.pid"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise LocalError("the registry has no port yet: start it first")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> Registry:
        """Start the registry and wait until `GET /v2/` answers 200.

        Raises:
            LocalError: the binary is missing, or the registry did not answer in time.
        """
        if self._process is not None:
            return self
        binary = find_docker_registry()
        if self.port is None:
            self.port = _free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        config.write_text(_config(self.root / "data", self.port))
        # REGISTRY_* variables would override the config file: keep them out.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [binary, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=dies_with_parent(),  # a killed `cloud serve` leaves no registry
            )
        self.pid_path.write_text(f"{self._process.pid}\n")
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        _log.info("registry.started", url=self.url, pid=self._process.pid, root=str(self.root))
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise LocalError(
                        f"docker-registry exited with {self._process.returncode} "
                        f"before answering on {self.url}; see {self.log_path}"
                    )
                try:
                    if client.get(f"{self.url}/v2/").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise LocalError(
            f"docker-registry did not answer GET {self.url}/v2/ within {START_TIMEOUT_S:.0f} s; "
            f"see {self.log_path}"
        )

    def stop(self) -> None:
        """Terminate the registry's process group, kill it if it lingers, and reap it."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
        self.pid_path.unlink(missing_ok=True)
        _log.info("registry.stopped", pid=process.pid, code=process.returncode)

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
