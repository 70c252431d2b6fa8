"""The main node's service manager as a child process of the agent, kept running.

The main node's SM is a process like every other node's (`aoscore sm`), so the CM drives all
nodes over the same link and an SM crash never takes the CM down. The agent starts it, starts
it again with backoff when it dies (its containers keep running meanwhile and it reports them
when it is back), and stops it on exit with SIGTERM, then SIGKILL after a grace period.

The child is told its parent's pid (`PARENT_PID_ENV`): it asks the kernel to kill it when the
agent dies (`die_with_parent`), so an agent killed with SIGKILL leaves no SM behind holding the
SM's data dir, and the next agent starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .backoff import Backoff
from .lifeline import set_parent_death_signal
from .logs import get_logger

log = get_logger("localsm")

PARENT_PID_ENV = "AOSCORE_PARENT_PID"
"""Set for a child SM: the agent's pid. The child dies with it."""

STOP_GRACE_S = 10.0
"""How long a stopping SM may take to close its link before it is killed."""

HEALTHY_S = 60.0
"""A child that ran this long resets the restart backoff."""


def die_with_parent() -> None:
    """In a child started by the agent: be killed when the agent dies (Linux prctl), and exit at
    once if it is already gone (its pid is no longer our parent)."""
    parent = os.environ.pop(PARENT_PID_ENV, None)
    if not parent or not sys.platform.startswith("linux"):
        return
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != int(parent):
        os._exit(1)


class LocalSM:
    """Runs `aoscore sm ARGS` as a child for as long as `run` runs.

    Args:
        args: the `aoscore sm` options (node id, CM address, data dir, TLS files...).
        log_path: where its output goes; None: the agent's own stderr.
    """

    def __init__(self, args: Sequence[str], log_path: Path | None = None) -> None:
        self.args = [sys.executable, "-m", "aoscore_py", "sm", *args]
        self.log_path = log_path
        self.pid: int | None = None
        self.starts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = False

    async def run(self) -> None:
        """Start the SM and start it again whenever it exits, until cancelled or `stop`."""
        backoff = Backoff(initial=1.0, factor=2.0, cap=30.0, jitter=0.1)
        loop = asyncio.get_running_loop()
        while not self._stopping:
            started = loop.time()
            try:
                code = await self._run_once()
            except OSError as exc:
                code = None
                log.error("localsm.spawn_failed", error=f"{type(exc).__name__}: {exc}")
            if self._stopping:
                return
            if loop.time() - started >= HEALTHY_S:
                backoff.reset()
            delay = backoff.next()
            log.error(
                "localsm.exited",
                code=code,
                pid=self.pid,
                next=f"starting it again in {delay:.1f} s; its containers keep running",
            )
            await asyncio.sleep(delay)

    async def _run_once(self) -> int | None:
        env = {**os.environ, PARENT_PID_ENV: str(os.getpid())}
        out = None
        if self.log_path is not None:
            out = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.args, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
            )
        finally:
            if out is not None:
                out.close()
        self.pid = self._proc.pid
        self.starts += 1
        log.info("localsm.started", pid=self.pid, starts=self.starts)
        return await self._proc.wait()

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the SM: SIGTERM, then SIGKILL after `grace_s`. Its containers keep running."""
        self._stopping = True
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            log.warning("localsm.kill", pid=proc.pid, grace_s=grace_s)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        log.info("localsm.stopped", pid=proc.pid, code=proc.returncode)
