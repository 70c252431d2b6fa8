"""The matrix's rows as an operator names them: `--list`, `--points`, and what each kills."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from aoscore_py.blobs.crashpoints import BLOB_TRANSFER
from aoscore_py.cli.powercut import powercut
from aoscore_py.cm.launcher.crashpoints import NODE_ANSWERED, PLACEMENT_STORED
from aoscore_py.powercut.matrix import (
    ALL_ROWS,
    CASES,
    CM,
    CRASH_POINTS,
    INSTALL,
    UNIT_CONFIG,
    UPGRADE,
    Case,
    NodeCase,
    describe,
    select_cases,
)
from aoscore_py.powercut.unit import Arm
from aoscore_py.sm.crashpoints import CONTAINER_REPLACED, NODE_CONFIG_STORED, STATE_STORED
from aoscore_py.storage.crashpoints import LOCK_TAKEN
from statemachine import ENV_VAR, FAULT_ENV_VAR


class TestRows:
    def test_row_names_are_unique(self) -> None:
        assert len(set(CRASH_POINTS)) == len(CRASH_POINTS)

    def test_a_point_on_its_owner_is_named_by_its_spec(self) -> None:
        assert Case(PLACEMENT_STORED).row == PLACEMENT_STORED
        assert Case(STATE_STORED, process="node-2").row == STATE_STORED

    def test_a_shared_point_on_an_sm_carries_the_node(self) -> None:
        assert f"{BLOB_TRANSFER}:1@node-2" in CRASH_POINTS
        assert f"{LOCK_TAKEN}@node-2" in CRASH_POINTS
        assert f"{BLOB_TRANSFER}:1" in CRASH_POINTS and LOCK_TAKEN in CRASH_POINTS

    @pytest.mark.parametrize(
        ("row", "process", "scenario"),
        [
            (PLACEMENT_STORED, CM, INSTALL),
            (NODE_ANSWERED, CM, INSTALL),
            (STATE_STORED, "node-2", INSTALL),
            (CONTAINER_REPLACED, "node-2", UPGRADE),
            (NODE_CONFIG_STORED, "node-2", UNIT_CONFIG),
        ],
    )
    def test_the_issues_points_kill_their_side(self, row, process, scenario) -> None:
        (case,) = [c for c in CASES if c.row == row]
        assert (case.process, case.scenario) == (process, scenario)

    def test_processes_are_named_for_the_table(self) -> None:
        assert describe(CM) == "agent (CM)"
        assert describe("node-2") == "sm node-2"


class TestSelect:
    def test_a_bare_point_selects_its_rows_on_both_sides(self) -> None:
        rows = [c.row for c in select_cases([BLOB_TRANSFER])]
        assert rows == [f"{BLOB_TRANSFER}:1", f"{BLOB_TRANSFER}:1@node-2"]

    def test_a_row_selects_itself(self) -> None:
        (case,) = select_cases([f"{BLOB_TRANSFER}:1@node-2"])
        assert (case.spec, case.process) == (f"{BLOB_TRANSFER}:1", "node-2")

    def test_another_arrival_keeps_the_points_scenario(self) -> None:
        (case,) = select_cases([f"{CONTAINER_REPLACED}:2"])
        assert (case.spec, case.process, case.scenario) == (
            f"{CONTAINER_REPLACED}:2",
            "node-2",
            UPGRADE,
        )

    def test_another_node(self) -> None:
        (case,) = select_cases([f"{STATE_STORED}@node-3"])
        assert (case.row, case.process) == (f"{STATE_STORED}:1@node-3", "node-3")

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            ("no.such.point", "unknown rows"),
            (f"{PLACEMENT_STORED}@node-2", "sm node-2 never passes"),
            (f"{STATE_STORED}@agent", "agent (CM) never passes"),
            (f"{LOCK_TAKEN}@node-9", "'node-9' is no process of the unit"),
            (f"{STATE_STORED}:0", "N must be a positive integer"),
        ],
    )
    def test_refusals_name_the_spec(self, spec, message) -> None:
        with pytest.raises(ValueError, match=re.escape(message)):
            select_cases([spec])


class TestArm:
    def test_the_environment_and_the_line_the_point_writes(self) -> None:
        arm = Arm(f"{STATE_STORED}:2", PLACEMENT_STORED)
        assert arm.env() == {ENV_VAR: f"{STATE_STORED}:2", FAULT_ENV_VAR: PLACEMENT_STORED}
        assert arm.hit_line == f"crashpoint.hit name={STATE_STORED} n=2 "
        assert Arm(STATE_STORED).hit_line == f"crashpoint.hit name={STATE_STORED} n=1 "


class TestCli:
    def test_list_prints_each_row_with_the_process_it_kills(self) -> None:
        result = CliRunner().invoke(powercut, ["--list"])
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert lines[0].split() == ["row", "kills", "scenario"]
        by_row = {line.split()[0]: line for line in lines[1:]}
        assert list(by_row) == list(ALL_ROWS)
        assert list(by_row)[: len(CRASH_POINTS)] == list(CRASH_POINTS)
        assert "node node-2" in by_row["node:node-2"]
        assert "sm node-2" in by_row[STATE_STORED]
        assert "agent (CM)" in by_row[PLACEMENT_STORED]
        assert "after a fault at" in by_row["cycle.failed.committed"]

    def test_a_node_row_names_a_node_and_an_sm_point(self) -> None:
        assert select_cases(["node:node-3@sm.state.stored:2"]) == [
            NodeCase("node-3", "sm.state.stored:2")
        ]
        for bad, why in (("node:node-9", "no node"), ("node:node-1@cycle.x", "no crash point")):
            result = CliRunner().invoke(powercut, ["--points", bad])
            assert result.exit_code == 2
            assert why in result.output

    def test_torn_needs_the_lossy_file_system(self) -> None:
        result = CliRunner().invoke(powercut, ["--torn"])
        assert result.exit_code == 2
        assert "--fs lossy" in result.output

    def test_an_unknown_row_is_a_usage_error(self) -> None:
        result = CliRunner().invoke(powercut, ["--points", f"{PLACEMENT_STORED}@node-2"])
        assert result.exit_code == 2
        assert "never passes" in result.output
