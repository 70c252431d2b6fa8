"""A phase machine whose every move is committed before anything else happens.

`fire(event)` checks the move against the graph, writes the new phase, its payload and a
journal row in one SQLite transaction, then moves the in-memory model, then passes the crash
point `<machine>.<phase>.committed`. A refused move changes nothing. On construction the machine
resumes at the stored phase without running any callback, which is what resuming after a power
cut wants.

A move should cost about one durable commit, so legality is checked once: the moves are read
back from the `transitions` machine at construction (`declared_moves`) and each `fire` is one
lookup; the model is then set with `set_state`, since the trigger machinery would only check the
same move again and run callbacks the graph does not have.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import peewee

from .crashpoints import committed_point, crashpoint
from .errors import IllegalTransition, UnknownPhase
from .graph import Graph, declared_moves
from .store import JournalRecord, Tables

_KEEP: Any = object()


class _Model:
    """The object `transitions` moves; it holds nothing but the phase."""

    phase: str


class DurableMachine:
    """One named machine of a graph, persisted in `db`.

    Args:
        name: unique name of this machine in the database (several may share a file).
        graph: the phase graph.
        db: an open peewee database; the caller owns its pragmas and lifetime.
        clock: time source for the journal (seconds since the epoch).
    """

    def __init__(
        self,
        name: str,
        graph: Graph,
        db: peewee.Database,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.graph = graph
        self._tables = Tables(db)
        self._clock = clock
        row = self._tables.phase_row.get_or_none(self._tables.phase_row.machine == name)
        if row is None:
            with db.atomic("IMMEDIATE"):
                row = self._tables.phase_row.create(
                    machine=name, phase=graph.initial, payload=None, updated_at=clock()
                )
        if row.phase not in graph.table:
            raise UnknownPhase(name, row.phase)
        self._payload: dict[str, Any] | None = Tables.decode(row.payload)
        self._revision: int = row.revision
        self._model = _Model()
        self._machine = graph.build_machine(self._model, row.phase)
        self._moves = declared_moves(self._machine)

    @property
    def phase(self) -> str:
        return self._model.phase

    @property
    def payload(self) -> dict[str, Any] | None:
        return self._payload

    @property
    def revision(self) -> int:
        """How many moves this machine has made, ever; grows by one per committed move."""
        return self._revision

    @property
    def resting(self) -> bool:
        return self.phase in self.graph.resting

    def can(self, event: str) -> bool:
        return (self._model.phase, event) in self._moves

    def fire(self, event: str, payload: dict[str, Any] | None = _KEEP, note: str = "") -> str:
        """Commit the move `event` from the current phase, then make it in memory.

        Args:
            event: the event; it must be allowed in the current phase.
            payload: the new phase's payload; omitted keeps the current one.
            note: free text kept in the journal (why this move happened).

        Raises:
            IllegalTransition: the move is not in the graph; nothing changed.
        """
        source = self._model.phase
        target = self._moves.get((source, event))
        if target is None:
            raise IllegalTransition(self.name, source, event)
        new_payload = self._payload if payload is _KEEP else payload
        self._tables.move(
            self.name,
            source,
            event,
            target,
            Tables.encode(new_payload),
            note,
            self._revision + 1,
            self._clock(),
        )
        self._machine.set_state(target, model=self._model)
        self._payload = new_payload
        self._revision += 1
        crashpoint(committed_point(self.name, target))
        return target

    def note(self, event: str, note: str) -> None:
        """Journal something that happened in the current phase without moving."""
        self._tables.journal_note(self.name, self.phase, event, note, self._clock())

    def journal(self, limit: int | None = None) -> list[JournalRecord]:
        """Every move and note of this machine, oldest first."""
        return self._tables.records(self.name, limit)
