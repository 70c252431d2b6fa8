"""Runs a durable machine's phases, each as an asyncio task that can be cancelled anywhere.

`transitions`' AsyncMachine swallows CancelledError inside callbacks, so no work runs inside the
library: the runner starts the handler of the current phase as its own task, waits for it, and
only then moves the machine with the event the handler returned. Cancelling the runner cancels
the phase task at its next await; the phase stays committed, so the next run resumes there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .machine import _KEEP, DurableMachine


@dataclass(frozen=True)
class Outcome:
    """What a phase handler returns: the event to fire and, optionally, the next payload."""

    event: str
    payload: dict[str, Any] | None = _KEEP
    note: str = ""


PhaseHandler = Callable[[dict[str, Any] | None], Awaitable[Outcome]]
PhaseListener = Callable[[str, str, str], None]


class PhaseRunner:
    """Drive `machine` through its phases with one handler per working phase.

    Args:
        machine: the durable machine to move.
        handlers: phase -> coroutine function taking the phase's payload; one for every phase
            that is not resting.
        on_move: called with (from_phase, event, to_phase) after each committed move.
        crash_event: event fired, when the current phase allows it, if a handler raises
            an unexpected exception (the sticky failure). Otherwise the exception propagates.
    """

    def __init__(
        self,
        machine: DurableMachine,
        handlers: Mapping[str, PhaseHandler],
        *,
        on_move: PhaseListener | None = None,
        crash_event: str = "crash",
    ) -> None:
        missing = [p for p in machine.graph.phases if p not in machine.graph.resting]
        missing = [p for p in missing if p not in handlers]
        if missing:
            raise ValueError(f"no handler for working phases {missing}")
        self.machine = machine
        self._handlers = dict(handlers)
        self._on_move = on_move
        self._crash_event = crash_event
        self._task: asyncio.Task[str] | None = None
        self._phase_task: asyncio.Task[Outcome] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> asyncio.Task[str]:
        """Start running from the stored phase in the background; returns the task."""
        if self.running:
            raise RuntimeError(f"{self.machine.name}: already running")
        self._task = asyncio.create_task(self.run(), name=f"{self.machine.name}.run")
        return self._task

    async def wait(self) -> str | None:
        """Wait for the background run to reach a resting phase; returns that phase."""
        if self._task is None:
            return None
        return await self._task

    async def run(self) -> str:
        """Run phases until a resting one; return it."""
        machine = self.machine
        while not machine.resting:
            phase = machine.phase
            handler = self._handlers[phase]
            self._phase_task = asyncio.create_task(
                handler(machine.payload), name=f"{machine.name}.{phase}"
            )
            try:
                outcome = await self._phase_task
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not machine.can(self._crash_event):
                    raise
                outcome = Outcome(
                    self._crash_event,
                    {
                        **(machine.payload or {}),
                        "error": f"{type(exc).__name__}: {exc}",
                        "phase": phase,
                    },
                    note=f"unexpected error in {phase}",
                )
            finally:
                self._phase_task = None
            target = machine.fire(outcome.event, outcome.payload, outcome.note)
            if self._on_move is not None:
                self._on_move(phase, outcome.event, target)
        return machine.phase

    async def cancel(self, reason: str) -> float:
        """Cancel the running phase at its next await and wait until it has finished.

        The phase stays as committed; the journal records the interruption and `reason`.

        Returns:
            Seconds from the request to the phase task's end (0 when nothing ran).
        """
        task = self._task
        if task is None or task.done():
            return 0.0
        started = time.monotonic()
        phase = self.machine.phase
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        except Exception:
            pass
        elapsed = time.monotonic() - started
        self.machine.note("interrupted", f"{reason}; phase {phase} stopped in {elapsed:.3f}s")
        return elapsed
