"""The network runner's pure judgements: what counts as a complete, ordered timeline, when a
step met the profile, how long a step may take, and reading a row's figures back."""

from __future__ import annotations

from typing import Any

import pytest

from aoscore_py.powercut.linkproxy import LinkStats
from aoscore_py.powercut.netprofiles import CELLULAR, FLAKY, PROFILES
from aoscore_py.powercut.network import figures, met_event, since, step_timeout_s
from aoscore_py.powercut.network import timeline_problems as check
from aoscore_py.powercut.results import Row


def rec(seq: int, boot: str = "b1", **extra: Any) -> dict[str, Any]:
    return {"unitStatus": {"seq": seq, "bootId": boot, **extra}}


class TestTimeline:
    def test_complete_and_ordered_passes(self) -> None:
        counts, problems = check([rec(1), rec(2), rec(3)], made=[1, 2, 3])
        assert problems == [] and counts["statuses"] == 3

    def test_a_gap_a_duplicate_a_late_one_and_a_lost_one_are_named(self) -> None:
        assert check([rec(1), rec(3)], [1, 3])[1] == ["1 missing"]
        assert check([rec(1), rec(2), rec(2)], [1, 2])[1] == ["1 duplicates"]
        late = check([rec(1), rec(3), rec(2)], [1, 2, 3])[1]
        assert "1 late" in late and "the cloud recorded statuses out of the unit's order" in late
        assert check([rec(1), rec(2)], [1, 2, 3])[1] == ["statuses [3] made but never recorded"]

    def test_a_new_boot_and_folded_statuses_are_no_gap(self) -> None:
        assert check([rec(1), rec(100, "b2")], [1, 100])[1] == []
        assert check([rec(1), rec(4, foldedSeqs=[[2, 3]])], [1, 4])[1] == []


class TestMetEvent:
    def test_a_spike_or_a_reset_counts_a_loss_stall_does_not(self) -> None:
        assert met_event(CELLULAR, LinkStats(spiked=1))
        assert not met_event(CELLULAR, LinkStats(stalled=50))
        assert met_event(FLAKY, LinkStats(outages=1, resets=2))
        assert not met_event(FLAKY, LinkStats(outages=1))  # nothing was open to reset
        assert met_event(PROFILES["clean"], LinkStats())

    def test_since_subtracts_every_counter(self) -> None:
        assert since(LinkStats(resets=5, spiked=9), LinkStats(resets=2)) == LinkStats(
            resets=3, spiked=9
        )


def test_step_timeout_grows_with_the_download_at_the_rate() -> None:
    assert step_timeout_s(PROFILES["clean"], 10 << 20) == 90.0
    full = step_timeout_s(CELLULAR, 6 << 20)
    assert full == pytest.approx(90 + 3 * 8 * (6 << 20) / 256_000 + 60 + 140)
    assert step_timeout_s(CELLULAR.scaled(0.1), 6 << 20) < full / 3


def test_figures_read_back_what_the_detail_says() -> None:
    detail = (
        "held through the next event; 4 stalls, 25 spiked segments, 1 outages, 3 resets, "
        "7 KiB down, 1 KiB up; timeline 6 statuses in 1 boot(s), 0 missing, 0 late, 2 duplicates"
    )
    got = figures(Row("cellular install", "x", True, True, 1.0, detail))
    assert got == {
        "stalls": 4,
        "spiked": 25,
        "outages": 1,
        "resets": 3,
        "statuses": 6,
        "missing": 0,
        "late": 0,
        "duplicates": 2,
    }
