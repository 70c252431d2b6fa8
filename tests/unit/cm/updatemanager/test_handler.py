"""The desired status handler's central rule, phase by phase, against stubs and a real SQLite file.

- In every working phase: an identical desired status is ignored and the phase keeps running;
  a different one is stored before `accept` returns, cancels the phase, and the cycle restarts at
  downloading with it.
- In every phase: a handler built again over the same file (a restart) resumes at that phase;
  a desired status stored but not yet applied restarts the cycle with it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from aoscore_py.cm.updatemanager.handler import digest_of
from aoscore_py.errors import Retry
from aoscore_py.protocol import dump_message
from statemachine import UPDATE_CYCLE, WORKING_PHASES

from .rig import Rig, desired, same_as
from .stubs import settle

EVERY_PHASE = UPDATE_CYCLE.phases
FIRST, SECOND = desired("1.0.0"), desired("2.0.0")


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path / "data")
    yield rig
    await rig.close()


def moves(rig: Rig, start: int) -> list[tuple[str, str, str]]:
    return [(r.from_phase, r.event, r.to_phase) for r in rig.journal_since(start)]


@pytest.mark.parametrize("phase", WORKING_PHASES)
async def test_an_identical_desired_status_is_ignored_and_the_phase_keeps_running(
    rig: Rig, phase: str
) -> None:
    handler = await rig.hold_in(FIRST, phase)
    start = len(rig.machine.journal())
    stored = rig.stored()

    await handler.accept(same_as(FIRST), time.monotonic())

    assert rig.machine.phase == phase and handler.runner.running
    assert rig.journal_since(start) == [], "nothing moved, nothing was interrupted"
    assert rig.stored() == stored, "the identical one is not stored again"
    gate = rig.gate_of(phase)
    assert gate is None or gate.cancelled == 0, "the phase's work was not cancelled"

    assert await rig.run_to_rest() == "none"
    journal = moves(rig, start)
    assert journal[0][:2] == (phase, "done")
    assert all(event != "supersede" for _, event, _ in journal)
    assert rig.images.downloads.count(FIRST) == (1 if phase == "downloading" else 0)


@pytest.mark.parametrize("phase", WORKING_PHASES)
async def test_a_different_desired_status_is_stored_cancels_the_phase_and_restarts(
    rig: Rig, phase: str
) -> None:
    handler = await rig.hold_in(FIRST, phase)
    start = len(rig.machine.journal())

    await handler.accept(SECOND, time.monotonic())

    assert rig.stored() == dump_message(SECOND), "stored (committed) before accept returned"
    assert handler.desired == SECOND
    assert rig.status.desired[-1] == SECOND, "the unit status reports the new one's subjects"
    gate = rig.gate_of(phase)
    assert gate is None or gate.cancelled == 1, "the phase's work was cancelled"
    assert moves(rig, start) == [
        (phase, "interrupted", phase),
        (phase, "supersede", "downloading"),
    ]
    assert rig.machine.phase == "downloading"
    assert rig.machine.payload == {"ds": digest_of(dump_message(SECOND))}

    assert await rig.run_to_rest() == "none"
    assert rig.images.downloads[-1] == SECOND
    assert rig.launcher.launches[-1] == SECOND
    assert rig.images.finalized[-1] == (("svc", "2.0.0"),)


async def test_a_desired_status_that_fails_validation_changes_nothing(rig: Rig) -> None:
    from dataclasses import replace

    from aoscore_py.errors import ProtocolError

    handler = await rig.hold_in(FIRST, "downloading")
    start = len(rig.machine.journal())
    twice = replace(SECOND, items=SECOND.items * 2)

    with pytest.raises(ProtocolError, match=r"\$\.items\[1\]: duplicate item"):
        await handler.accept(twice, time.monotonic())

    assert rig.stored() == dump_message(FIRST)
    assert rig.journal_since(start) == [] and handler.runner.running
    assert rig.images.gate.cancelled == 0


@pytest.mark.parametrize("phase", WORKING_PHASES)
async def test_a_restart_resumes_at_the_committed_working_phase(rig: Rig, phase: str) -> None:
    await rig.hold_in(FIRST, phase)
    await rig.handler.stop()  # type: ignore[union-attr]
    start = len(rig.machine.journal())

    handler = rig.build()
    assert handler.desired == FIRST and rig.status.desired[-1] == FIRST
    await handler.start()

    assert rig.machine.phase == phase and handler.runner.running
    assert await rig.run_to_rest() == "none"
    journal = moves(rig, start)
    assert journal[0] == (phase, "done", UPDATE_CYCLE.next(phase, "done"))
    assert [m[0] for m in journal] == list(WORKING_PHASES[WORKING_PHASES.index(phase) :])
    assert all(event == "done" for _, event, _ in journal)


async def test_a_restart_after_a_finished_cycle_stays_idle(rig: Rig) -> None:
    rig.seed(FIRST, "finalizing")
    handler = rig.build()
    await handler.start()
    await settle(handler)
    assert rig.machine.phase == "none"
    start = len(rig.machine.journal())

    handler = rig.build()
    await handler.start()
    await settle(handler)

    assert rig.machine.phase == "none" and handler.idle
    assert rig.journal_since(start) == []
    assert rig.images.downloads == []
    assert rig.clock.waiting == 0, "no retry is scheduled"


async def test_a_restart_in_the_sticky_failed_phase_runs_the_cycle_again(rig: Rig) -> None:
    rig.seed(FIRST, "failed")
    handler = rig.build()
    await handler.start()
    await rig.clock.advance(0.0, handler)

    assert rig.machine.phase == "none"
    assert rig.images.downloads == [FIRST]


@pytest.mark.parametrize("phase", EVERY_PHASE)
async def test_a_stored_desired_status_not_yet_applied_restarts_the_cycle_with_it(
    rig: Rig, phase: str
) -> None:
    rig.seed(FIRST, phase)
    # A cut after the new desired status was stored, before the cycle was moved.
    rig.build()
    assert rig.storage is not None
    rig.storage.save_desired_status(dump_message(SECOND))
    rig.close_gates()
    start = len(rig.machine.journal())

    handler = rig.build()
    assert handler.desired == SECOND
    await handler.start()

    assert rig.machine.phase == "downloading"
    assert rig.machine.payload == {"ds": digest_of(dump_message(SECOND))}
    event = "supersede" if phase in WORKING_PHASES else "start"
    assert moves(rig, start) == [(phase, event, "downloading")]
    assert await rig.run_to_rest() == "none"
    assert rig.images.downloads == [SECOND]


async def test_the_first_desired_status_starts_a_cycle_and_reports_after_it(rig: Rig) -> None:
    handler = rig.build()
    await handler.start()
    assert rig.stored() is None and handler.idle

    await handler.accept(FIRST, time.monotonic())
    assert rig.stored() == dump_message(FIRST)
    await settle(handler)

    assert [m[2] for m in moves(rig, 0)] == [*WORKING_PHASES, "none"]
    assert rig.status.reasons[-1] == "cycle ended in none"
    assert rig.images.finalized == [(("svc", "1.0.0"),)]


async def test_an_identical_desired_status_when_idle_sends_a_full_status(rig: Rig) -> None:
    handler = rig.build()
    await handler.start()
    await handler.accept(FIRST, time.monotonic())
    await settle(handler)
    start = len(rig.machine.journal())

    await handler.accept(same_as(FIRST), time.monotonic())
    assert await rig.status.next_report() == "desired status needs no update"
    assert rig.journal_since(start) == []
    assert rig.images.downloads == [FIRST]


async def test_a_waiting_active_timeout_installs_what_runs_and_retries_the_late_item(
    rig: Rig,
) -> None:
    """AosCore leaves every item pending on this timeout; we install the items whose instances
    became active, keep the late one pending (its version stays) and try the cycle again."""
    handler = rig.build()
    await handler.start()
    rig.launcher.late = [("svc", "1.0.0")]
    await handler.accept(FIRST, time.monotonic())
    await settle(handler)
    assert [m[1:] for m in moves(rig, 0)][-2:] == [("timeout", "finalizing"), ("done", "none")]
    assert rig.images.finalized == [()], "the late item is not installed"
    assert rig.machine.payload is not None
    assert rig.machine.payload["failed_items"] == ["svc"]
    assert handler.failure is Retry.TRANSIENT


async def test_an_older_desired_status_by_seq_is_acked_and_the_newer_stays(rig: Rig) -> None:
    """Reordered by the network, or replayed: the cloud's seq says which is newer."""
    handler = rig.build()
    await handler.start()
    newer, older = replace(SECOND, seq=7), replace(FIRST, seq=6)
    await handler.accept(newer, time.monotonic())
    await settle(handler)
    start = len(rig.machine.journal())
    await handler.accept(older, time.monotonic())  # returns: acked, nothing raised
    await settle(handler)
    assert rig.stored() == dump_message(newer)
    assert rig.journal_since(start) == [], "no cycle for a stale desired status"


async def test_without_seq_arrival_order_decides(rig: Rig) -> None:
    handler = rig.build()
    await handler.start()
    await handler.accept(SECOND, time.monotonic())
    await settle(handler)
    await handler.accept(FIRST, time.monotonic())
    await settle(handler)
    assert rig.stored() == dump_message(FIRST)


async def test_after_a_restart_the_stored_seq_still_orders(rig: Rig) -> None:
    handler = rig.build()
    await handler.start()
    await handler.accept(replace(SECOND, seq=7), time.monotonic())
    await settle(handler)
    await rig.close()
    handler = rig.build()
    await handler.start()
    await handler.accept(replace(FIRST, seq=3), time.monotonic())
    assert rig.stored() == dump_message(replace(SECOND, seq=7))
