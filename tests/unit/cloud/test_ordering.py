"""A unit's timeline read in its own order (bootId, seq): duplicates, late arrivals, and the
statuses of a boot that never arrived; a new boot's jump is not a gap."""

from __future__ import annotations

from typing import Any

from aoscore_py.cloud.ordering import in_unit_order, summary


def rec(boot: str, seq: int | None) -> dict[str, Any]:
    status: dict[str, Any] = {"bootId": boot, "isDeltaInfo": False}
    if seq is not None:
        status["seq"] = seq
    return {"unitStatus": status}


def test_in_order_and_complete_is_all_ok() -> None:
    ordered = in_unit_order([rec("a", 1), rec("a", 2), rec("a", 3)])
    assert [(o.seq, o.duplicate, o.late, o.gap_before) for o in ordered] == [
        (1, False, False, 0),
        (2, False, False, 0),
        (3, False, False, 0),
    ]
    assert summary(ordered) == {
        "statuses": 3,
        "boots": 1,
        "duplicates": 0,
        "late": 0,
        "missing": 0,
    }


def test_reordered_ones_are_sorted_and_flagged_late() -> None:
    ordered = in_unit_order([rec("a", 1), rec("a", 3), rec("a", 2)])
    assert [(o.seq, o.late) for o in ordered] == [(1, False), (2, True), (3, False)]
    assert summary(ordered)["missing"] == 0


def test_a_duplicate_and_a_gap_within_a_boot_are_flagged() -> None:
    ordered = in_unit_order([rec("a", 1), rec("a", 1), rec("a", 4)])
    assert [(o.seq, o.duplicate, o.gap_before) for o in ordered] == [
        (1, False, 0),
        (1, True, 0),
        (4, False, 2),
    ]
    assert summary(ordered) == {
        "statuses": 3,
        "boots": 1,
        "duplicates": 1,
        "late": 0,
        "missing": 2,
    }


def test_a_new_boots_jump_is_not_a_gap() -> None:
    ordered = in_unit_order([rec("a", 1), rec("a", 2), rec("b", 100), rec("b", 101)])
    assert summary(ordered)["missing"] == 0
    assert summary(ordered)["boots"] == 2


def test_statuses_without_seq_come_first_in_arrival_order() -> None:
    ordered = in_unit_order([rec("a", 5), rec("x", None), rec("y", None)])
    assert [(o.boot_id, o.seq) for o in ordered] == [("x", None), ("y", None), ("a", 5)]
