"""An operator's first words about a unit: health from its link and last view, and counts."""

from __future__ import annotations

from typing import Any

import pytest

from aoscore_py.cloud.views import unit_health, view_counts

VIEW: dict[str, Any] = {
    "seq": 9,
    "unitConfig": [{"version": "1.0.0", "state": "installed"}],
    "nodes": [{"state": "provisioned"}, {"state": "paused"}],
    "items": [{"state": "installed"}, {"state": "installed"}],
    "instances": [{"instances": [{"state": "active"}, {"state": "activating"}]}],
}


def test_counts_per_state() -> None:
    assert view_counts(VIEW) == {
        "seq": 9,
        "items": {"installed": 2},
        "instances": {"active": 1, "activating": 1},
        "nodes": {"provisioned": 1, "paused": 1},
        "unitConfig": {"version": "1.0.0", "state": "installed"},
    }


def test_counts_of_nothing_or_of_what_is_not_a_list() -> None:
    empty = {"seq": None, "items": {}, "instances": {}, "nodes": {}, "unitConfig": None}
    assert view_counts({}) == empty
    assert view_counts({"items": "x", "instances": [1, {"instances": None}]}) == empty


@pytest.mark.parametrize(
    ("connected", "change", "health"),
    [
        (False, {}, "offline"),
        (True, None, "unknown"),
        (True, {}, "ok"),
        (True, {"items": [{"state": "failed"}]}, "degraded"),
        (True, {"instances": [{"instances": [{"state": "failed"}]}]}, "degraded"),
        (True, {"nodes": [{"state": "error"}]}, "degraded"),
        (True, {"unitConfig": [{"version": "2", "state": "failed"}]}, "degraded"),
    ],
)
def test_health(connected: bool, change: dict[str, Any] | None, health: str) -> None:
    view = {} if change is None else {**VIEW, **change}
    assert unit_health(connected, view) == health
