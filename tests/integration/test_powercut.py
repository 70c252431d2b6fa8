"""The power-cut matrix, as an operator runs it: `aoscore powercut --json FILE`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest

from aoscore_py.powercut import CRASH_POINTS
from aoscore_py.testbed import aoscore_cmd

pytestmark = pytest.mark.integration


def test_every_crash_point_is_killed_and_converges(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        aoscore_cmd("powercut", "--json", str(out), "--work-dir", str(tmp_path / "work")),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = orjson.loads(out.read_bytes())
    assert [r["point"] for r in rows] == list(CRASH_POINTS)
    assert all(set(r) == {"point", "killed", "converged", "seconds"} for r in rows)
    assert all(r["killed"] and r["converged"] for r in rows), rows
    for point in CRASH_POINTS:
        assert point in proc.stdout
    assert f"{len(CRASH_POINTS)}/{len(CRASH_POINTS)} converged" in proc.stdout


def test_unknown_crash_point_is_a_usage_error() -> None:
    proc = subprocess.run(
        aoscore_cmd("powercut", "--points", "no.such.point"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "no.such.point" in proc.stderr
