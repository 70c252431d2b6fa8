"""A reusable durable phase engine: a graph, a persisted journal, resume, cancellation,
crash points. It knows nothing of the domain that uses it."""

from .crashpoints import (
    ENV_VAR,
    FAULT_ENV_VAR,
    InjectedFault,
    committed_point,
    crashpoint,
    parse_spec,
)
from .cycle import UPDATE_CYCLE, WORKING_PHASES
from .errors import IllegalTransition, MachineError, UnknownPhase
from .graph import Graph
from .machine import DurableMachine
from .runner import Outcome, PhaseRunner
from .store import JournalRecord

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
