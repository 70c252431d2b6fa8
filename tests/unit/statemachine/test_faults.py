"""Injected faults: AOSCORE_FAULT makes the named arrival of a crash point raise, once."""

from __future__ import annotations

import pytest

from statemachine import FAULT_ENV_VAR, InjectedFault, committed_point, crashpoint


def test_an_unarmed_point_raises_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAULT_ENV_VAR, raising=False)
    crashpoint("fault.test.a")


def test_the_named_arrival_raises_and_only_that_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV_VAR, "fault.test.b:2")
    crashpoint("fault.test.b")
    crashpoint("fault.test.other")
    with pytest.raises(InjectedFault, match=r"fault injected at fault.test.b \(arrival 2\)"):
        crashpoint("fault.test.b")
    crashpoint("fault.test.b")


def test_the_committed_point_of_a_phase() -> None:
    assert committed_point("cycle", "launching") == "cycle.launching.committed"
