"""The runner: phases as tasks, cancellation at any await in any phase, sticky failure."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import peewee
import pytest

from statemachine import UPDATE_CYCLE, WORKING_PHASES, DurableMachine, Outcome, PhaseRunner


def open_db(path: Path) -> peewee.SqliteDatabase:
    return peewee.SqliteDatabase(str(path), pragmas={"journal_mode": "wal", "synchronous": "full"})


class Recorder:
    """Phase handlers that record their calls; one phase can be made to block."""

    def __init__(self, block_in: str | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.block_in = block_in
        self.blocked = asyncio.Event()
        self.cleaned: list[str] = []

    def handlers(self) -> dict[str, Any]:
        def make(phase: str) -> Any:
            async def handler(payload: dict[str, Any] | None) -> Outcome:
                self.calls.append((phase, payload))
                if phase == self.block_in:
                    self.blocked.set()
                    try:
                        await asyncio.sleep(3600)
                    finally:
                        self.cleaned.append(phase)
                await asyncio.sleep(0)
                return Outcome("done", {**(payload or {}), phase: True})

            return handler

        return {p: make(p) for p in WORKING_PHASES}


async def test_runs_a_whole_cycle_and_rests(tmp_path: Path) -> None:
    m = DurableMachine("c", UPDATE_CYCLE, open_db(tmp_path / "db"))
    m.fire("start", {})
    rec = Recorder()
    moves: list[tuple[str, str, str]] = []
    runner = PhaseRunner(m, rec.handlers(), on_move=lambda *a: moves.append(a))
    assert await runner.run() == "none"
    assert [c[0] for c in rec.calls] == list(WORKING_PHASES)
    assert moves[-1] == ("finalizing", "done", "none")
    assert m.payload == dict.fromkeys(WORKING_PHASES, True)


@pytest.mark.parametrize("phase", WORKING_PHASES)
async def test_cancel_in_each_phase_stops_it_and_keeps_it_committed(
    tmp_path: Path, phase: str
) -> None:
    path = tmp_path / "db"
    m = DurableMachine("c", UPDATE_CYCLE, open_db(path))
    m.fire("start", {})
    rec = Recorder(block_in=phase)
    runner = PhaseRunner(m, rec.handlers())
    task = runner.start()
    await rec.blocked.wait()
    revision = m.revision
    await runner.cancel("superseded")
    assert task.cancelled() and not runner.running
    assert rec.cleaned == [phase], "the phase's finally block ran"
    assert (m.phase, m.revision) == (phase, revision), "the phase stays as committed"
    last = m.journal()[-1]
    assert (last.event, last.from_phase, last.to_phase) == ("interrupted", phase, phase)
    assert "superseded" in last.note and f"phase {phase} stopped" in last.note

    resumed = DurableMachine("c", UPDATE_CYCLE, open_db(path))
    assert resumed.phase == phase
    rec2 = Recorder()
    assert await PhaseRunner(resumed, rec2.handlers()).run() == "none"
    assert rec2.calls[0][0] == phase, "resumes where it stopped, not from the start"


async def test_cancel_then_supersede_restarts_at_downloading(tmp_path: Path) -> None:
    m = DurableMachine("c", UPDATE_CYCLE, open_db(tmp_path / "db"))
    m.fire("start", {"ds": 1})
    rec = Recorder(block_in="waitingActive")
    runner = PhaseRunner(m, rec.handlers())
    runner.start()
    await rec.blocked.wait()
    await runner.cancel("newer desired status")
    m.fire("supersede", {"ds": 2})
    rec.block_in = None
    runner.start()
    assert await runner.wait() == "none"
    assert rec.calls[-len(WORKING_PHASES) :][0] == ("downloading", {"ds": 2})


async def test_unexpected_error_moves_to_sticky_failed(tmp_path: Path) -> None:
    m = DurableMachine("c", UPDATE_CYCLE, open_db(tmp_path / "db"))
    m.fire("start", {"ds": "d1"})
    handlers = Recorder().handlers()

    async def broken(payload: Any) -> Outcome:
        raise KeyError("lost")

    handlers["installing"] = broken
    assert await PhaseRunner(m, handlers).run() == "failed"
    assert m.payload is not None
    assert m.payload["ds"] == "d1", "the failure keeps what the cycle was applying"
    assert (m.payload["error"], m.payload["phase"]) == ("KeyError: 'lost'", "installing")
    assert m.journal()[-1].note == "unexpected error in installing"


async def test_expected_failure_ends_the_cycle(tmp_path: Path) -> None:
    m = DurableMachine("c", UPDATE_CYCLE, open_db(tmp_path / "db"))
    m.fire("start", {})
    handlers = Recorder().handlers()

    async def refuse(payload: Any) -> Outcome:
        return Outcome("fail", {"error": "no space"})

    handlers["downloading"] = refuse
    assert await PhaseRunner(m, handlers).run() == "none"
    assert m.payload == {"error": "no space"}


async def test_cancel_when_idle_is_harmless(tmp_path: Path) -> None:
    m = DurableMachine("c", UPDATE_CYCLE, open_db(tmp_path / "db"))
    runner = PhaseRunner(m, Recorder().handlers())
    assert await runner.cancel("nothing") == 0.0
    assert m.journal() == []


def test_missing_handler_is_refused(tmp_path: Path) -> None:
    m = DurableMachine("c", UPDATE_CYCLE, open_db(tmp_path / "db"))
    with pytest.raises(ValueError, match="pending"):
        PhaseRunner(m, {"downloading": Recorder().handlers()["downloading"]})
