"""A three-node unit on an impaired network (powercut/network.py): its cloud link, blob
downloads and SM links through proxies imposing a profile, each step of the scenario (install,
upgrade, unit config) must converge and the cloud's timeline must hold every status the unit
made, once each, in order.

CI runs each profile compressed (cellular at 0.1: 3 s spikes every 20 s at 2.56 Mbit/s;
flaky at 0.25: a reset every 15 s); the full-size profiles, what `--network` means, are
marked slow. Each test also checks that the profile acted on the traffic (spikes held it,
loss stalled it, disconnects reset it), so a proxy that passed bytes untouched would fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aoscore_py.powercut.network import figures, run_network
from aoscore_py.powercut.results import Row

pytestmark = pytest.mark.integration

STEPS = ("install", "upgrade", "unit config")


def assert_scenario_passed(rows: list[Row], profile: str) -> None:
    assert [r.point for r in rows] == [f"{profile} {s}" for s in STEPS], [r.detail for r in rows]
    for row in rows:
        assert row.kind == "network"
        assert row.converged, row.detail
        assert row.killed, f"{row.point}: the profile never acted on its traffic: {row.detail}"
        counts = figures(row)
        assert counts["missing"] == counts["late"] == counts["duplicates"] == 0, row.detail


def test_cellular_compressed(tmp_path: Path) -> None:
    rows = run_network("cellular", tmp_path, scale=0.1, seed=1)
    assert_scenario_passed(rows, "cellular")
    install = figures(rows[0])
    assert install["stalls"] > 0, "2 % loss stalled no segment of the install's downloads"
    assert sum(figures(r)["spiked"] for r in rows) > 0
    assert sum(figures(r)["outages"] for r in rows) == 0


def test_flaky_compressed(tmp_path: Path) -> None:
    rows = run_network("flaky", tmp_path, scale=0.25, seed=1)
    assert_scenario_passed(rows, "flaky")
    assert all(figures(r)["outages"] >= 1 and figures(r)["resets"] >= 1 for r in rows)
    assert sum(figures(r)["stalls"] + figures(r)["spiked"] for r in rows) == 0


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["cellular", "flaky"])
def test_full_size(tmp_path: Path, profile: str) -> None:
    assert_scenario_passed(run_network(profile, tmp_path, seed=1), profile)
