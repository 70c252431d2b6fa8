"""The laboratory's handle on one lossy mount: start the file system process, cut it as a power
loss would, mount it again, stop it cleanly.

The file system runs as `aoscore powercut lossyfs BACKING MOUNTPOINT` (pyfuse3 needs trio, and
a process of its own keeps its event loop out of the laboratory's); this class talks to it over
its control socket.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson

from ...errors import LocalError
from ...lifeline import dies_with_parent
from ...logs import get_logger
from .. import interrupts
from .fuse import default_control, unmount

log = get_logger("lossyfs")

MOUNT_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0


def ask(control: Path, command: str, timeout_s: float = 10.0) -> dict:
    """Send one command (`cut`, `sync`, `status`) to a lossy file system's control socket and
    return its answer.

    Raises:
        OSError: nothing listens there.
        ValueError: the answer is not JSON.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout_s)
        conn.connect(str(control))
        conn.sendall(command.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    return orjson.loads(data)


class LossyMount:
    """A lossy file system over `backing`, seen at `mountpoint`.

    Args:
        backing: the folder that holds what is durable (made if missing).
        mountpoint: where the view is mounted (made if missing).
        torn: tear the last write at each cut (512-byte sectors).
        seed: the seed of the torn write's sectors (each mount adds its count, so successive
            cuts differ but a run repeats).
        log_path: where the file system process writes its log (default: beside the backing
            folder, `<backing>.log`).
    """

    def __init__(
        self,
        backing: Path,
        mountpoint: Path,
        *,
        torn: bool = False,
        seed: int = 0,
        log_path: Path | None = None,
    ) -> None:
        self.backing = Path(backing)
        self.mountpoint = Path(mountpoint)
        self.torn = torn
        self.seed = seed
        self.log_path = log_path or self.backing.with_name(self.backing.name + ".log")
        self.control = default_control(self.backing)
        self.mounts = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def mounted(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def mount(self) -> LossyMount:
        """Start the file system and wait until it serves; a stale mount left by a process
        that died is detached first.

        Raises:
            LocalError: it did not come up (its log's end says why).
        """
        if self.mounted:
            return self
        self.backing.mkdir(parents=True, exist_ok=True)
        unmount(self.mountpoint)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "aoscore_py", "powercut", "lossyfs"]
        args += [str(self.backing), str(self.mountpoint), "--log-format", "json"]
        if self.torn:
            args += ["--torn", "--seed", str(self.seed + self.mounts)]
        self.mounts += 1
        with open(self.log_path, "ab") as out, interrupts.held():
            self.proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=dies_with_parent(signal.SIGTERM),  # a dead laboratory unmounts it
            )
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if os.path.ismount(self.mountpoint) and self._ask("status", quiet=True):
                return self
            time.sleep(0.02)
        self._kill()
        raise LocalError(
            f"the lossy file system did not mount at {self.mountpoint}: {self._log_tail()}"
        )

    def cut(self) -> dict:
        """Cut the power: the file system drops what was not durable, stops serving and
        unmounts. Returns what it dropped. Processes still inside it see their files vanish
        ("Transport endpoint is not connected"), as on a dead disk.

        Raises:
            LocalError: the file system had died before the cut (then nothing says what a cut
                would have dropped), did not answer, or answered some operation with EIO for a
                bug of its own: the laboratory's verdict would not be worth anything.
        """
        if not self.mounted:
            code = self.proc.poll() if self.proc is not None else None
            self.proc = None
            unmount(self.mountpoint)
            raise LocalError(
                f"the lossy file system at {self.mountpoint} had died before the cut "
                f"(exit {code}): {self._log_tail()}"
            )
        answer = self._ask("cut")
        self._wait_exit()
        unmount(self.mountpoint)
        if answer is None or not answer.get("ok"):
            raise LocalError(f"the lossy file system at {self.mountpoint} did not answer the cut")
        if answer.get("bugs"):
            raise LocalError(
                f"the lossy file system at {self.mountpoint} answered {answer['bugs']} "
                f"operations with EIO for a bug of its own (lossyfs.bug in {self.log_path})"
            )
        return answer.get("cut") or {}

    def remount(self) -> dict:
        """A cut, then the file system mounted again over what survived."""
        loss = self.cut()
        self.mount()
        return loss

    def sync(self) -> None:
        """Make everything durable (as `sync` does)."""
        self._ask("sync")

    def stop(self) -> None:
        """A clean unmount: everything becomes durable, then the process exits (a process
        that had died is only cleaned up after)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
        self._wait_exit()
        unmount(self.mountpoint)

    def _ask(self, command: str, quiet: bool = False) -> dict | None:
        try:
            return ask(self.control, command)
        except (OSError, ValueError) as exc:
            if not quiet:
                log.warning(
                    "lossyfs.control_unanswered",
                    mountpoint=str(self.mountpoint),
                    command=command,
                    error=str(exc),
                )
            return None

    def _wait_exit(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("lossyfs.stop_timeout", mountpoint=str(self.mountpoint), next="SIGKILL")
            self._kill()
        self.proc = None

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        unmount(self.mountpoint)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-1500:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> LossyMount:
        return self.mount()

    def __exit__(self, *exc: object) -> None:
        self.stop()
