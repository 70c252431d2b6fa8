"""Errors of the durable phase engine.

- MachineError: base.
  - IllegalTransition: an event that the current phase does not accept; nothing changed.
  - UnknownPhase: the database holds a phase the graph does not know (downgrade or corruption).
"""

from __future__ import annotations


class MachineError(Exception):
    """Base of the engine's errors."""


class IllegalTransition(MachineError):
    """`event` is not accepted in `phase`. Memory and database are left as they were."""

    def __init__(self, machine: str, phase: str, event: str) -> None:
        super().__init__(f"{machine}: event {event!r} is not allowed in phase {phase!r}")
        self.machine = machine
        self.phase = phase
        self.event = event


class UnknownPhase(MachineError):
    """The stored phase is not part of the graph."""

    def __init__(self, machine: str, phase: str) -> None:
        super().__init__(f"{machine}: stored phase {phase!r} is not in the graph")
        self.machine = machine
        self.phase = phase
