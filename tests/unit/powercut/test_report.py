"""The laboratory's reports: JSON for scripts, JUnit for CI, an HTML page with timeline pictures
for an operator, and phase marks read back from an agent's JSON log."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from aoscore_py.powercut.report import (
    marks_from_log,
    phase_axis,
    picture_name,
    summarize,
    write_html,
    write_json,
    write_junit,
)
from aoscore_py.powercut.results import CONVERGED, CUT, KILLED, PHASE, RESTARTED, Mark, Row

PNG = b"\x89PNG\r\n\x1a\n"
HOSTILE = '<script>alert("x")</script> & \x00\x07 ]]>'


def _timeline() -> tuple[Mark, ...]:
    return (
        Mark(0.0, PHASE, "none"),
        Mark(0.4, PHASE, "downloading"),
        Mark(2.1, PHASE, "installing"),
        Mark(2.5, KILLED, "cm"),
        Mark(2.5, CUT, "/data"),
        Mark(3.0, RESTARTED, "cm"),
        Mark(3.4, PHASE, "installing"),
        Mark(5.0, PHASE, "none"),
        Mark(5.2, CONVERGED),
    )


@pytest.fixture
def rows() -> list[Row]:
    return [
        Row("cm.placement.stored", "cm", True, True, 5.2, timeline=_timeline()),
        Row("sm.state.stored", "node-2", False, False, 30.0, "never reached", fs="lossy"),
        Row("random-3", "cm", True, False, 60.0, HOSTILE, kind="random", fs="lossy",
            timeline=(Mark(1.0, PHASE, "downloading"), Mark(1.5, KILLED, "cm"))),
        Row("node node-2 at pending", "node-2", True, True, 12.0, kind="node"),
    ]  # fmt: skip


class TestSummary:
    def test_counts_overall_and_by_kind_and_fs(self, rows: list[Row]) -> None:
        s = summarize(rows)
        assert (s["rows"], s["passed"], s["failed"]) == (4, 2, 2)
        assert (s["killed"], s["not_killed"], s["converged"], s["not_converged"]) == (3, 1, 2, 1)
        assert s["seconds"] == pytest.approx(107.2)
        assert s["by_kind"] == {
            "point": {"rows": 2, "passed": 1},
            "random": {"rows": 1, "passed": 0},
            "node": {"rows": 1, "passed": 1},
        }
        assert s["by_fs"] == {"plain": {"rows": 2, "passed": 2}, "lossy": {"rows": 2, "passed": 0}}

    def test_no_rows_is_all_zero(self) -> None:
        s = summarize([])
        assert (s["rows"], s["passed"], s["by_kind"]) == (0, 0, {})


class TestJson:
    def test_round_trips_every_field(self, rows: list[Row], tmp_path: Path) -> None:
        path = write_json(rows, tmp_path / "out" / "report.json")
        body = orjson.loads(path.read_bytes())
        back = [
            Row(**{**r, "timeline": tuple(Mark(**m) for m in r["timeline"])})
            for r in ({k: v for k, v in d.items() if k != "passed"} for d in body["rows"])
        ]
        assert back == rows
        assert [d["passed"] for d in body["rows"]] == [True, False, False, True]
        assert body["summary"] == summarize(rows)

    def test_caller_summary_is_merged_over_the_counts(
        self, rows: list[Row], tmp_path: Path
    ) -> None:
        path = write_json(rows, tmp_path / "r.json", summary={"seed": 7, "rows": 99})
        summary = orjson.loads(path.read_bytes())["summary"]
        assert (summary["seed"], summary["rows"], summary["passed"]) == (7, 99, 2)

    def test_leaves_no_temporary_file(self, rows: list[Row], tmp_path: Path) -> None:
        write_json(rows, tmp_path / "r.json")
        write_json(rows[:1], tmp_path / "r.json")
        assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
        assert orjson.loads((tmp_path / "r.json").read_bytes())["summary"]["rows"] == 1


class TestJunit:
    def _suite(self, rows: list[Row], tmp_path: Path) -> ET.Element:
        root = ET.parse(write_junit(rows, tmp_path / "junit.xml", suite="lab")).getroot()
        suites = root.findall("testsuite")
        assert len(suites) == 1
        return suites[0]

    def test_suite_counts(self, rows: list[Row], tmp_path: Path) -> None:
        suite = self._suite(rows, tmp_path)
        assert suite.get("name") == "lab"
        assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "2", "0")
        assert float(suite.get("time", "")) == pytest.approx(107.2)

    def test_one_testcase_per_row_named_by_kind_fs_point_process(
        self, rows: list[Row], tmp_path: Path
    ) -> None:
        cases = self._suite(rows, tmp_path).findall("testcase")
        assert [(c.get("classname"), c.get("name")) for c in cases] == [
            ("powercut.point.plain", "cm.placement.stored (cm)"),
            ("powercut.point.lossy", "sm.state.stored (node-2)"),
            ("powercut.random.lossy", "random-3 (cm)"),
            ("powercut.node.plain", "node node-2 at pending (node-2)"),
        ]
        assert [c.get("time") for c in cases] == ["5.200", "30.000", "60.000", "12.000"]

    def test_failures_only_for_rows_that_did_not_pass_and_say_why(
        self, rows: list[Row], tmp_path: Path
    ) -> None:
        cases = self._suite(rows, tmp_path).findall("testcase")
        failures = [c.find("failure") for c in cases]
        assert [f is not None for f in failures] == [False, True, True, False]
        not_killed, not_converged = failures[1], failures[2]
        assert not_killed is not None and not_converged is not None
        assert not_killed.get("type") == "not-killed"
        assert "not killed at sm.state.stored" in not_killed.get("message", "")
        assert not_killed.text == "never reached"
        assert not_converged.get("type") == "not-converged"
        assert "did not converge" in not_converged.get("message", "")
        assert '<script>alert("x")</script>' in (not_converged.text or "")

    def test_system_out_holds_the_timeline(self, rows: list[Row], tmp_path: Path) -> None:
        cases = self._suite(rows, tmp_path).findall("testcase")
        lines = (cases[0].findtext("system-out") or "").splitlines()
        assert len(lines) == len(_timeline())
        assert lines[3].split() == ["2.500", "s", "killed", "cm"]
        assert cases[1].find("system-out") is None


class TestHtml:
    def test_page_escapes_what_rows_carry(self, rows: list[Row], tmp_path: Path) -> None:
        page = write_html(rows, tmp_path, title="<b>lab</b>").read_text()
        assert "<script>" not in page
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
        assert "<b>lab</b>" not in page and "&lt;b&gt;lab&lt;/b&gt;" in page

    def test_page_has_the_summary_and_marks_failures(self, rows: list[Row], tmp_path: Path) -> None:
        page = write_html(rows, tmp_path, summary={"seed": 42}).read_text()
        assert "4 rows: 2 passed, 2 failed" in page
        assert "seed: 42" in page
        assert page.count('<tr class="fail">') == 2
        assert page.count('<tr class="pass">') == 2
        assert "not killed at sm.state.stored" in page

    def test_one_real_png_per_row(self, rows: list[Row], tmp_path: Path) -> None:
        page = write_html(rows, tmp_path / "report").read_text()
        srcs = re.findall(r'<img src="([^"]+)"', page)
        assert len(srcs) == len(rows) == len(set(srcs))
        for src in srcs:
            assert (tmp_path / "report" / src).read_bytes().startswith(PNG)
        assert sorted(p.name for p in (tmp_path / "report" / "cuts").iterdir()) == sorted(
            Path(s).name for s in srcs
        )

    def test_pictures_of_an_earlier_run_are_removed(self, rows: list[Row], tmp_path: Path) -> None:
        write_html(rows, tmp_path)
        write_html(rows[:1], tmp_path)
        assert [p.name for p in (tmp_path / "cuts").iterdir()] == [picture_name(1, rows[0])]

    def test_picture_names_are_numbered_and_safe(self, rows: list[Row]) -> None:
        assert picture_name(3, rows[3]) == "003-node-node-2-at-pending-node-2.png"
        assert picture_name(7, Row("a/../b:1@x", "cm", True, True, 0.0)) == "007-a-..-b-1-x-cm.png"


class TestPhaseAxis:
    def test_the_cycle_in_order_then_unknown_phases(self) -> None:
        names = phase_axis([Mark(0.0, PHASE, "mystery"), Mark(1.0, KILLED, "cm")])
        assert names[:7] == [
            "none",
            "downloading",
            "pending",
            "installing",
            "launching",
            "waitingActive",
            "finalizing",
        ]
        assert names[7:] == ["failed", "mystery"]


def _ts(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class TestMarksFromLog:
    def test_picks_phase_entered_lines_and_skips_the_rest(self, tmp_path: Path) -> None:
        t0 = 1_800_000_000.0
        log = tmp_path / "cm.log"

        def entry(dt: float, event: str, **fields: object) -> bytes:
            return orjson.dumps({"ts": _ts(t0 + dt), "event": event, **fields})

        log.write_bytes(
            b"\n".join(
                [
                    b"starting the agent",
                    entry(-5.0, "phase.entered", phase="finalizing"),
                    entry(0.25, "phase.entered", phase="downloading", previous="none"),
                    entry(0.5, "download.started", phase="not-a-phase"),
                    b'{"ts": "2026-12-03T19:11:02.1',
                    b"[1, 2, 3]",
                    b"\xff\xfe not utf-8",
                    orjson.dumps({"ts": "yesterday", "event": "phase.entered", "phase": "x"}),
                    entry(1.75, "phase.entered", phase="pending"),
                    entry(1.0, "phase.entered", phase="none"),
                    b"",
                ]
            )
        )
        assert marks_from_log(log, t0) == [
            Mark(0.25, PHASE, "downloading"),
            Mark(1.0, PHASE, "none"),
            Mark(1.75, PHASE, "pending"),
        ]

    def test_a_missing_log_has_no_marks(self, tmp_path: Path) -> None:
        assert marks_from_log(tmp_path / "absent.log", 0.0) == []
