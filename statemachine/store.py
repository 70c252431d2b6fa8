"""Where a machine's phase and journal live: two tables in the caller's SQLite database.

The caller owns the database (its file, WAL and `synchronous=FULL` pragmas); the engine only
adds its two tables. Model classes are made per database so that machines on different files
never share a binding.

A move is the hot path: its two statements are SQL text made once from the models, run through
the database's own `execute_sql` (so peewee's transaction stack, error types and query hooks
still apply, and `sqlite3` reuses its prepared statements), without building a query per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import peewee


@dataclass(frozen=True)
class JournalRecord:
    """One row of the journal: a move, or a note about the phase (such as a cancellation)."""

    seq: int
    machine: str
    from_phase: str
    event: str
    to_phase: str
    payload: dict[str, Any] | None
    note: str
    at: float


class Tables:
    """The engine's tables, bound to one database."""

    def __init__(self, db: peewee.Database) -> None:
        class Base(peewee.Model):
            class Meta:
                database = db

        class PhaseRow(Base):
            machine = peewee.TextField(primary_key=True)
            phase = peewee.TextField()
            payload = peewee.BlobField(null=True)
            revision = peewee.IntegerField(default=0)
            updated_at = peewee.FloatField()

            class Meta:
                table_name = "sm_phase"

        class JournalRow(Base):
            machine = peewee.TextField(index=True)
            from_phase = peewee.TextField()
            event = peewee.TextField()
            to_phase = peewee.TextField()
            payload = peewee.BlobField(null=True)
            note = peewee.TextField(default="")
            at = peewee.FloatField()

            class Meta:
                table_name = "sm_journal"

        self.db = db
        self.phase_row = PhaseRow
        self.journal_row = JournalRow
        db.create_tables([PhaseRow, JournalRow], safe=True)
        self._move_sql = _update_sql(
            PhaseRow, ("phase", "payload", "revision", "updated_at"), key="machine"
        )
        self._journal_sql = _insert_sql(
            JournalRow, ("machine", "from_phase", "event", "to_phase", "payload", "note", "at")
        )

    def move(
        self,
        machine: str,
        source: str,
        event: str,
        target: str,
        payload: bytes | None,
        note: str,
        revision: int,
        at: float,
    ) -> None:
        """Write the new phase row and its journal row in one `BEGIN IMMEDIATE` transaction,
        so a power cut keeps both or neither."""
        db = self.db
        with db.atomic("IMMEDIATE"):
            db.execute_sql(self._move_sql, (target, payload, revision, float(at), machine))
            db.execute_sql(
                self._journal_sql, (machine, source, event, target, payload, note, float(at))
            )

    def journal_note(self, machine: str, phase: str, event: str, note: str, at: float) -> None:
        """Append a journal row that does not move the phase (in its own transaction)."""
        db = self.db
        with db.atomic("IMMEDIATE"):
            db.execute_sql(self._journal_sql, (machine, phase, event, phase, None, note, float(at)))

    @staticmethod
    def encode(payload: dict[str, Any] | None) -> bytes | None:
        return None if payload is None else orjson.dumps(payload)

    @staticmethod
    def decode(raw: bytes | memoryview | None) -> dict[str, Any] | None:
        return None if raw is None else orjson.loads(bytes(raw))

    def records(self, machine: str, limit: int | None = None) -> list[JournalRecord]:
        """The journal of `machine`, oldest first (the last `limit` rows when given)."""
        row = self.journal_row
        query = row.select().where(row.machine == machine).order_by(row.id.desc())
        if limit is not None:
            query = query.limit(limit)
        rows = list(query)[::-1]
        return [
            JournalRecord(
                seq=r.id,
                machine=r.machine,
                from_phase=r.from_phase,
                event=r.event,
                to_phase=r.to_phase,
                payload=self.decode(r.payload),
                note=r.note,
                at=r.at,
            )
            for r in rows
        ]


def _column(model: type[peewee.Model], field: str) -> str:
    return '"' + model._meta.fields[field].column_name + '"'


def _update_sql(model: type[peewee.Model], fields: tuple[str, ...], *, key: str) -> str:
    """`UPDATE table SET f = ?, ... WHERE key = ?`; parameters in `fields` order, key last."""
    sets = ", ".join(f"{_column(model, f)} = ?" for f in fields)
    return f'UPDATE "{model._meta.table_name}" SET {sets} WHERE {_column(model, key)} = ?'


def _insert_sql(model: type[peewee.Model], fields: tuple[str, ...]) -> str:
    """`INSERT INTO table (f, ...) VALUES (?, ...)`; parameters in `fields` order."""
    columns = ", ".join(_column(model, f) for f in fields)
    marks = ", ".join("?" * len(fields))
    return f'INSERT INTO "{model._meta.table_name}" ({columns}) VALUES ({marks})'
