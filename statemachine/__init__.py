"""A reusable durable phase engine: a graph, a persisted journal, resume, cancellation,
crash points. It knows nothing of the domain that uses it.

Crash points are imported at once; the engine itself (transitions, peewee) only when first
used, so a process that only passes crash points (a node's service manager) does not carry it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .crashpoints import (
    ENV_VAR,
    FAULT_ENV_VAR,
    InjectedFault,
    committed_point,
    crashpoint,
    parse_spec,
)

if TYPE_CHECKING:
    from .cycle import UPDATE_CYCLE, WORKING_PHASES
    from .errors import IllegalTransition, MachineError, UnknownPhase
    from .graph import Graph
    from .machine import DurableMachine
    from .runner import Outcome, PhaseRunner
    from .store import JournalRecord

_LAZY = {
    "UPDATE_CYCLE": "cycle",
    "WORKING_PHASES": "cycle",
    "IllegalTransition": "errors",
    "MachineError": "errors",
    "UnknownPhase": "errors",
    "Graph": "graph",
    "DurableMachine": "machine",
    "Outcome": "runner",
    "PhaseRunner": "runner",
    "JournalRecord": "store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "ENV_VAR",
    "FAULT_ENV_VAR",
    "UPDATE_CYCLE",
    "WORKING_PHASES",
    "DurableMachine",
    "Graph",
    "IllegalTransition",
    "InjectedFault",
    "JournalRecord",
    "MachineError",
    "Outcome",
    "PhaseRunner",
    "UnknownPhase",
    "committed_point",
    "crashpoint",
    "parse_spec",
]
