"""The durable machine: commits before it moves, refuses illegal moves, resumes, journals."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import peewee
import pytest
from transitions import Machine

from statemachine import (
    FAULT_ENV_VAR,
    UPDATE_CYCLE,
    DurableMachine,
    Graph,
    IllegalTransition,
    InjectedFault,
    UnknownPhase,
)
from statemachine.graph import declared_moves


def open_db(path: Path) -> peewee.SqliteDatabase:
    db = peewee.SqliteDatabase(
        str(path), pragmas={"journal_mode": "wal", "synchronous": "full", "foreign_keys": 1}
    )
    db.connect()
    return db


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


def stored_phase(path: Path, machine: str) -> tuple[str, bytes | None]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "select phase, payload from sm_phase where machine = ?", (machine,)
        ).fetchone()


def dump(path: Path) -> tuple[list[tuple], list[tuple]]:
    """Every phase row and journal row on disk, read by another connection."""
    with sqlite3.connect(path) as conn:
        return (
            conn.execute("select * from sm_phase order by machine").fetchall(),
            conn.execute("select * from sm_journal order by id").fetchall(),
        )


class TestResume:
    def test_new_machine_starts_at_initial_phase(self, db_path: Path) -> None:
        m = DurableMachine("cycle", UPDATE_CYCLE, open_db(db_path))
        assert m.phase == "none"
        assert m.payload is None

    def test_resumes_at_stored_phase_and_payload(self, db_path: Path) -> None:
        db = open_db(db_path)
        m = DurableMachine("cycle", UPDATE_CYCLE, db)
        m.fire("start", {"ds": "abc"})
        m.fire("done", {"ds": "abc", "step": 2})
        m.fire("done")
        db.close()

        again = DurableMachine("cycle", UPDATE_CYCLE, open_db(db_path))
        assert again.phase == "installing"
        assert again.payload == {"ds": "abc", "step": 2}
        assert again.revision == 3

    def test_each_move_is_on_disk_before_fire_returns(self, db_path: Path) -> None:
        m = DurableMachine("cycle", UPDATE_CYCLE, open_db(db_path))
        m.fire("start", {"x": 1})
        assert stored_phase(db_path, "cycle")[0] == "downloading"
        m.fire("done")
        assert stored_phase(db_path, "cycle")[0] == "pending"

    def test_machines_sharing_a_file_are_independent(self, db_path: Path) -> None:
        db = open_db(db_path)
        a = DurableMachine("a", UPDATE_CYCLE, db)
        b = DurableMachine("b", UPDATE_CYCLE, db)
        a.fire("start")
        assert (a.phase, b.phase) == ("downloading", "none")
        assert [r.machine for r in b.journal()] == []

    def test_unknown_stored_phase_is_refused(self, db_path: Path) -> None:
        DurableMachine("cycle", UPDATE_CYCLE, open_db(db_path))
        with sqlite3.connect(db_path) as conn:
            conn.execute("update sm_phase set phase = 'bogus'")
        with pytest.raises(UnknownPhase, match="bogus"):
            DurableMachine("cycle", UPDATE_CYCLE, open_db(db_path))


class TestIllegalMoves:
    @pytest.mark.parametrize(
        ("path", "event"),
        [
            ((), "done"),
            ((), "supersede"),
            (("start",), "start"),
            (("start", "done"), "timeout"),
            (("start", "crash"), "done"),
        ],
    )
    def test_refused_and_nothing_changes(self, db_path: Path, path: tuple, event: str) -> None:
        m = DurableMachine("cycle", UPDATE_CYCLE, open_db(db_path))
        for e in path:
            m.fire(e, {"p": e})
        before = (m.phase, m.payload, m.revision, len(m.journal()))
        on_disk = stored_phase(db_path, "cycle")
        with pytest.raises(IllegalTransition) as err:
            m.fire(event, {"new": True})
        assert err.value.phase == m.phase and err.value.event == event
        assert event in str(err.value) and m.phase in str(err.value)
        assert (m.phase, m.payload, m.revision, len(m.journal())) == before
        assert stored_phase(db_path, "cycle") == on_disk

    @pytest.mark.parametrize("event", [*UPDATE_CYCLE.events, "bogus"])
    def test_every_refused_event_leaves_every_row_and_memory_alone(
        self, db_path: Path, event: str
    ) -> None:
        ticks = iter(range(1, 100))
        m = DurableMachine("cycle", UPDATE_CYCLE, open_db(db_path), clock=lambda: next(ticks))
        m.fire("start", {"ds": 1})
        m.fire("crash", {"error": "boom"})
        if m.can(event):
            return
        before = (m.phase, m.payload, m.revision, m.journal())
        on_disk = dump(db_path)
        with pytest.raises(IllegalTransition):
            m.fire(event, {"new": True}, note="refused")
        assert (m.phase, m.payload, m.revision, m.journal()) == before
        assert dump(db_path) == on_disk

    def test_failed_is_sticky_until_new_input(self, db_path: Path) -> None:
        m = DurableMachine("cycle", UPDATE_CYCLE, open_db(db_path))
        m.fire("start")
        m.fire("crash", {"error": "boom"})
        assert m.phase == "failed"
        for event in ("done", "fail", "supersede", "timeout", "crash"):
            assert not m.can(event)
        assert m.fire("start") == "downloading"


class TestJournal:
    def test_every_move_is_journalled_with_time_and_note(self, db_path: Path) -> None:
        ticks = iter(range(100, 200))
        m = DurableMachine("cycle", UPDATE_CYCLE, open_db(db_path), clock=lambda: next(ticks))
        m.fire("start", {"ds": 1}, note="new desired status")
        m.fire("supersede", {"ds": 2}, note="newer one")
        m.note("interrupted", "shutdown")
        rows = m.journal()
        assert [(r.from_phase, r.event, r.to_phase) for r in rows] == [
            ("none", "start", "downloading"),
            ("downloading", "supersede", "downloading"),
            ("downloading", "interrupted", "downloading"),
        ]
        assert [r.payload for r in rows] == [{"ds": 1}, {"ds": 2}, None]
        assert [r.note for r in rows] == ["new desired status", "newer one", "shutdown"]
        assert all(r.at >= 100 for r in rows)
        assert rows == sorted(rows, key=lambda r: r.seq)
        assert m.journal(limit=1) == rows[-1:]

    def test_full_cycle_journal(self, db_path: Path) -> None:
        m = DurableMachine("cycle", UPDATE_CYCLE, open_db(db_path))
        m.fire("start")
        while m.phase != "none":
            m.fire("done")
        assert [r.to_phase for r in m.journal()] == [
            "downloading",
            "pending",
            "installing",
            "launching",
            "waitingActive",
            "finalizing",
            "none",
        ]


class TestMove:
    def test_revision_grows_by_one_per_move_in_memory_and_on_disk(self, db_path: Path) -> None:
        m = DurableMachine("cycle", UPDATE_CYCLE, open_db(db_path))
        assert m.revision == 0
        for n, event in enumerate(["start", "done", "supersede", "done", "fail"], start=1):
            m.fire(event)
            assert m.revision == n
            assert dump(db_path)[0][0][3] == n
        m.note("interrupted", "a note is not a move")
        assert m.revision == 5 and dump(db_path)[0][0][3] == 5

    def test_the_phase_row_and_journal_row_hold_the_move(self, db_path: Path) -> None:
        m = DurableMachine("cycle", UPDATE_CYCLE, open_db(db_path), clock=lambda: 1234.5)
        assert m.fire("start", {"ds": "d1", "n": 1}, note="new desired status") == "downloading"
        phases, journal = dump(db_path)
        payload = orjson.dumps({"ds": "d1", "n": 1})
        assert phases == [("cycle", "downloading", payload, 1, 1234.5)]
        assert [row[1:] for row in journal] == [
            ("cycle", "none", "start", "downloading", payload, "new desired status", 1234.5)
        ]
        [record] = m.journal()
        assert record.seq == journal[0][0]
        assert (record.payload, record.at) == ({"ds": "d1", "n": 1}, 1234.5)

    def test_an_omitted_payload_is_kept_and_none_clears_it(self, db_path: Path) -> None:
        m = DurableMachine("cycle", UPDATE_CYCLE, open_db(db_path))
        m.fire("start", {"ds": "d1"})
        m.fire("done")
        assert m.payload == {"ds": "d1"}
        assert [r.payload for r in m.journal()] == [{"ds": "d1"}, {"ds": "d1"}]
        m.fire("done", None)
        assert m.payload is None and dump(db_path)[0][0][2] is None

    def test_a_failed_commit_changes_neither_row_nor_memory(self, db_path: Path) -> None:
        db = open_db(db_path)
        m = DurableMachine("cycle", UPDATE_CYCLE, db)
        m.fire("start", {"ds": "d1"})
        db.execute_sql(
            "create trigger refuse before insert on sm_journal "
            "begin select raise(abort, 'journal refused'); end"
        )
        on_disk = dump(db_path)
        with pytest.raises(peewee.IntegrityError, match="journal refused"):
            m.fire("done", {"ds": "d2"})
        assert (m.phase, m.payload, m.revision) == ("downloading", {"ds": "d1"}, 1)
        assert dump(db_path) == on_disk, "the phase row update was rolled back with the journal"
        db.execute_sql("drop trigger refuse")
        assert m.fire("done") == "pending"

    def test_the_committed_point_is_passed_after_the_commit(
        self, db_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        m = DurableMachine("faulted", UPDATE_CYCLE, open_db(db_path))
        monkeypatch.setenv(FAULT_ENV_VAR, "faulted.downloading.committed")
        with pytest.raises(InjectedFault):
            m.fire("start", {"ds": "d1"})
        assert stored_phase(db_path, "faulted")[0] == "downloading"
        assert [r.to_phase for r in m.journal()] == ["downloading"]
        assert (m.phase, m.revision) == ("downloading", 1)

    def test_a_move_inside_the_callers_transaction_joins_it(self, db_path: Path) -> None:
        db = open_db(db_path)
        m = DurableMachine("cycle", UPDATE_CYCLE, db)
        with db.atomic("IMMEDIATE"):
            m.fire("start")
        assert stored_phase(db_path, "cycle")[0] == "downloading"


class TestGraph:
    def test_table_validation(self) -> None:
        with pytest.raises(ValueError, match="unknown target"):
            Graph("g", "a", {"a": {"go": "b"}})
        with pytest.raises(ValueError, match="initial"):
            Graph("g", "z", {"a": {}})

    def test_every_working_phase_can_be_superseded_failed_and_crashed(self) -> None:
        for phase in UPDATE_CYCLE.phases:
            if phase in UPDATE_CYCLE.resting:
                continue
            events = UPDATE_CYCLE.table[phase]
            assert events["supersede"] == "downloading"
            assert events["fail"] == "none"
            assert events["crash"] == "failed"

    def test_the_declared_moves_are_the_table(self) -> None:
        model = type("Model", (), {})()
        declared = declared_moves(UPDATE_CYCLE.build_machine(model, UPDATE_CYCLE.initial))
        table = {(p, e): t for p, events in UPDATE_CYCLE.table.items() for e, t in events.items()}
        assert declared == table

    def test_can_agrees_with_the_table_in_every_phase(self, db_path: Path) -> None:
        DurableMachine("cycle", UPDATE_CYCLE, open_db(db_path))
        for phase in UPDATE_CYCLE.phases:
            with sqlite3.connect(db_path) as conn:
                conn.execute("update sm_phase set phase = ?", (phase,))
            m = DurableMachine("cycle", UPDATE_CYCLE, open_db(db_path))
            allowed = {e for e in UPDATE_CYCLE.events if m.can(e)}
            assert allowed == set(UPDATE_CYCLE.table[phase]), phase

    def test_a_conditional_move_cannot_be_read_as_a_lookup(self) -> None:
        machine = Machine(
            states=["a", "b"],
            transitions=[{"trigger": "go", "source": "a", "dest": "b", "conditions": "ok"}],
            initial="a",
            auto_transitions=False,
        )
        with pytest.raises(ValueError, match="a --go-->"):
            declared_moves(machine)

    def test_mermaid_lists_every_move(self) -> None:
        text = UPDATE_CYCLE.to_mermaid()
        assert "waitingActive --> finalizing: timeout" in text
        moves = sum(len(e) for e in UPDATE_CYCLE.table.values())
        assert text.count(" --> ") == moves + 1
