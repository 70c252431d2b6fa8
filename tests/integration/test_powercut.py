"""The power-cut matrix, as an operator runs it: `aoscore powercut --json FILE`.

The matrix kills the CM or an SM of a three-node unit at every crash point. A few rows run in
every test run, points the issue names on each side (a node's answer in the CM; the SM's
instance record and its blob cache in node-2's SM); the whole matrix takes long, so it runs
only when asked for: `pytest -m slow` or `make powercut`.
"""

from __future__ import annotations

import signal
import socket
import socketserver
import subprocess
import threading
import time
from pathlib import Path
from xml.etree import ElementTree

import orjson
import pytest

from aoscore_py.powercut.gate import TcpGate
from aoscore_py.powercut.matrix import ALL_ROWS
from aoscore_py.powercut.randomcuts import schedule
from aoscore_py.powercut.testbed import aoscore_cmd

pytestmark = pytest.mark.integration

FEW_ROWS = (
    "launcher.node.answered",
    "sm.state.stored",
    "imagemanager.blob.transfer:1@node-2",
)


@pytest.fixture
def asked_for_slow(request: pytest.FixtureRequest) -> None:
    """Skip unless the run selects slow tests by marker (`-m slow`)."""
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the whole matrix runs with `pytest -m slow` or `make powercut`")


def run_rows(
    tmp_path: Path, rows: tuple[str, ...] | None, timeout_s: float, *extra: str
) -> tuple[list, str]:
    """`aoscore powercut` on `rows` (None: all) with `extra` options; its JSON rows and its
    output, asserting it exited 0."""
    out = tmp_path / "rows.json"
    args = ["powercut", "--json", str(out), "--work-dir", str(tmp_path / "work"), *extra]
    if rows is not None:
        args += ["--points", ",".join(rows)]
    proc = subprocess.run(aoscore_cmd(*args), capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = orjson.loads(out.read_bytes())
    assert doc["summary"]["rows"] == doc["summary"]["passed"] == len(doc["rows"])
    return doc["rows"], proc.stdout


def check_rows(rows: list, stdout: str, names: tuple[str, ...]) -> None:
    assert [r["point"] for r in rows] == list(names)
    assert all(r["killed"] and r["converged"] for r in rows), rows
    for name in names:
        assert name in stdout
    assert f"{len(names)}/{len(names)} converged" in stdout


@pytest.mark.timeout(330)
def test_the_cm_and_an_sm_are_killed_at_their_points_and_the_unit_converges(
    tmp_path: Path,
) -> None:
    rows, stdout = run_rows(tmp_path, FEW_ROWS, 300)
    check_rows(rows, stdout, FEW_ROWS)
    kills = {r["point"]: r["process"] for r in rows}
    assert kills == {
        "launcher.node.answered": "agent (CM)",
        "sm.state.stored": "sm node-2",
        "imagemanager.blob.transfer:1@node-2": "sm node-2",
    }
    assert "three nodes: node-1, node-2, node-3" in stdout


LOSSY_ROWS = (
    "storage.generation.committed",
    "sm.node_config.stored",
    "node:node-2",
)


@pytest.mark.timeout(400)
def test_under_real_power_loss_the_processes_and_a_node_come_back(tmp_path: Path) -> None:
    """With the data dirs on lossy file systems, cut after each kill: the CM's store, an SM's
    node config and a whole node's power loss all come back; the JUnit file and the HTML
    report say so, with a timeline picture for each cut."""
    junit, report = tmp_path / "cuts.xml", tmp_path / "report"
    rows, stdout = run_rows(
        tmp_path, LOSSY_ROWS, 380, "--fs", "lossy", "--junit", str(junit), "--report", str(report)
    )
    check_rows(rows, stdout, LOSSY_ROWS)
    assert {r["fs"] for r in rows} == {"lossy"}
    assert [r["kind"] for r in rows] == ["point", "point", "node"]
    assert "none counted as a crash" in rows[2]["detail"]
    for row in rows:
        kinds = [m["kind"] for m in row["timeline"]]
        assert kinds.count("killed") == kinds.count("cut") == 1, row
        assert kinds.index("killed") < kinds.index("cut") < kinds.index("restarted")
        assert kinds[-1] == "converged" or "converged" in kinds
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert suite.get("tests") == "3" and suite.get("failures") == "0"
    pictures = sorted((report / "cuts").glob("*.png"))
    assert len(pictures) == 3
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in pictures)
    assert "node:node-2" in (report / "index.html").read_text()
    left = subprocess.run(["pgrep", "-af", "lossyfs"], capture_output=True, text=True)
    assert str(tmp_path) not in left.stdout, f"file systems left mounted: {left.stdout}"


@pytest.mark.timeout(400)
def test_random_cuts_follow_their_seed_and_converge(tmp_path: Path) -> None:
    rows, stdout = run_rows(tmp_path, None, 380, "--fs", "lossy", "--random", "3", "--seed", "5")
    assert [r["kind"] for r in rows] == ["random"] * 3
    assert all(r["converged"] for r in rows), rows
    assert [r["point"] for r in rows] == [c.name for c in schedule(3, 5)]
    assert "3/3 converged" in stdout


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_every_crash_point_is_killed_and_converges(tmp_path: Path, asked_for_slow: None) -> None:
    rows, stdout = run_rows(tmp_path, None, 2900)
    check_rows(rows, stdout, ALL_ROWS)


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_every_crash_point_converges_under_real_power_loss(
    tmp_path: Path, asked_for_slow: None
) -> None:
    rows, stdout = run_rows(tmp_path, None, 2900, "--fs", "lossy")
    check_rows(rows, stdout, ALL_ROWS)


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_thirty_random_cuts_converge(tmp_path: Path, asked_for_slow: None) -> None:
    rows, _ = run_rows(tmp_path, None, 2900, "--fs", "lossy", "--random", "30", "--seed", "1")
    assert len(rows) == 30
    assert all(r["converged"] for r in rows), [r for r in rows if not r["converged"]]


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
    while time.monotonic() < deadline and not list(tmp_path.glob("pc-*/node-*.log")):
        time.sleep(0.1)
    assert list(tmp_path.glob("pc-*/agent-*.log")), "the matrix started an agent"
    assert list(tmp_path.glob("pc-*/node-*.log")), "the matrix started the SMs"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    left = subprocess.run(["pgrep", "-af", str(tmp_path)], capture_output=True, text=True)
    assert left.stdout == "", f"processes left: {left.stdout}"


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


def test_the_gate_refuses_until_opened_then_forwards_both_ways() -> None:
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo) as echo:
        threading.Thread(target=echo.serve_forever, daemon=True).start()
        with TcpGate("127.0.0.1", echo.server_address[1]) as gate:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", gate.port), timeout=2)
            gate.open()
            with socket.create_connection(("127.0.0.1", gate.port), timeout=5) as conn:
                conn.sendall(b"x" * 200_000)
                got = b""
                while len(got) < 200_000:
                    got += conn.recv(65536)
                assert got == b"x" * 200_000
        echo.shutdown()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", gate.port), timeout=2)
