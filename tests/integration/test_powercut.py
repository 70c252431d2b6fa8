"""The power-cut matrix, as an operator runs it: `aoscore powercut --json FILE`."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from aoscore_py.powercut import CRASH_POINTS
from aoscore_py.powercut.testbed import aoscore_cmd

pytestmark = pytest.mark.integration


@pytest.mark.timeout(1300)
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


def test_an_interrupted_matrix_leaves_no_process_behind(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        aoscore_cmd(
            "powercut", "--points", "cycle.launching.committed", "--work-dir", str(tmp_path)
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(tmp_path.glob("pc-*/agent-*.log")):
        time.sleep(0.1)
    assert list(tmp_path.glob("pc-*/agent-*.log")), "the matrix started an agent"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert left.stdout == "", f"processes left: {left.stdout}"
