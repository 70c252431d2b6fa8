"""Crash points kill the process with SIGKILL, at the named arrival, and nowhere else."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from statemachine import parse_spec

SCRIPT = """
import sys
from statemachine import crashpoint
for i in range(1, 4):
    print(f"before a {i}", flush=True)
    crashpoint("a")
    crashpoint("b")
print("survived", flush=True)
"""


def run(spec: str | None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if spec is not None:
        env["AOSCORE_CRASHPOINT"] = spec
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=30
    )


def test_unarmed_points_do_nothing() -> None:
    proc = run(None)
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[-1] == "survived"


def test_named_point_kills_with_sigkill_the_first_time() -> None:
    proc = run("a")
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.splitlines() == ["before a 1"]
    assert "crashpoint.hit name=a n=1" in proc.stderr


def test_nth_arrival() -> None:
    proc = run("b:3")
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.splitlines()[-1] == "before a 3"


def test_other_points_are_not_touched() -> None:
    assert run("c").returncode == 0


@pytest.mark.parametrize("spec", ["", ":2", "a:0", "a:x"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_spec(spec)


def test_spec_with_colons_in_the_name() -> None:
    assert parse_spec("cycle.launching.committed:2") == ("cycle.launching.committed", 2)
    assert parse_spec("x") == ("x", 1)
