"""A phase graph: phases, events, and the one next phase for each (phase, event).

The table is plain data so it can be read top to bottom, tested alone, and drawn
(`Graph.to_mermaid`). Legality is declared by a `transitions.Machine` built from the same
table; `declared_moves` reads the moves back from that machine once, so a durable machine
checks each move with one lookup in what the library declared instead of a hand-written rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from transitions import Machine

from .errors import IllegalTransition


@dataclass(frozen=True)
class Graph:
    """Phases and their transitions.

    Args:
        name: the graph's name, used in errors and in the journal.
        initial: the phase of a machine that has never run.
        table: phase -> event -> next phase. Every phase must appear as a key.
        resting: phases in which no work runs (the runner stops there).
    """

    name: str
    initial: str
    table: Mapping[str, Mapping[str, str]]
    resting: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        frozen = {p: MappingProxyType(dict(ev)) for p, ev in self.table.items()}
        object.__setattr__(self, "table", MappingProxyType(frozen))
        object.__setattr__(self, "resting", frozenset(self.resting))
        phases = set(self.table)
        if self.initial not in phases:
            raise ValueError(f"initial phase {self.initial!r} is not in the table")
        for phase, events in self.table.items():
            for event, target in events.items():
                if target not in phases:
                    raise ValueError(f"{phase} --{event}--> {target}: unknown target phase")
        if not self.resting <= phases:
            raise ValueError(f"resting phases {sorted(self.resting - phases)} are not in the table")

    @property
    def phases(self) -> tuple[str, ...]:
        return tuple(self.table)

    @property
    def events(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for events in self.table.values():
            seen.update(dict.fromkeys(events))
        return tuple(seen)

    def next(self, phase: str, event: str) -> str:
        """The phase that `event` leads to from `phase`.

        Raises:
            IllegalTransition: the table has no such move.
        """
        try:
            return self.table[phase][event]
        except KeyError:
            raise IllegalTransition(self.name, phase, event) from None

    def build_machine(self, model: object, initial: str) -> Machine:
        """A `transitions.Machine` over `model`, set to `initial` without running callbacks."""
        transitions = [
            {"trigger": event, "source": phase, "dest": target}
            for phase, events in self.table.items()
            for event, target in events.items()
        ]
        return Machine(
            model=model,
            states=list(self.phases),
            transitions=transitions,
            initial=initial,
            auto_transitions=False,
            ignore_invalid_triggers=False,
            model_attribute="phase",
        )

    def to_mermaid(self) -> str:
        """A Mermaid state diagram of the table, so published diagrams come from the code."""
        lines = ["stateDiagram-v2", f"    [*] --> {self.initial}"]
        for phase, events in self.table.items():
            for event, target in events.items():
                lines.append(f"    {phase} --> {target}: {event}")
        return "\n".join(lines) + "\n"


def declared_moves(machine: Machine) -> dict[tuple[str, str], str]:
    """(phase, event) -> next phase, as declared in `machine`.

    Read once when a durable machine is built: checking a move is then one dictionary lookup,
    instead of running the library's trigger machinery on every move (it walks every event and
    queues callbacks we do not use). The moves come from the `transitions` machine, so the
    library's declaration stays the one that decides what is legal.

    Raises:
        ValueError: a move has conditions, callbacks or several destinations, which a lookup
            would skip or could not decide.
    """
    moves: dict[tuple[str, str], str] = {}
    for event, declared in machine.events.items():
        for source, candidates in declared.transitions.items():
            move = candidates[0]
            if len(candidates) != 1 or move.conditions or move.prepare or move.before or move.after:
                raise ValueError(f"{source} --{event}-->: not one plain, unconditional move")
            moves[(source, event)] = move.dest
    return moves
