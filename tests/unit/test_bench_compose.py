"""The `compose` benchmark's arithmetic and its compose file, without an agent or an engine:
reading the agent's log and the cloud's timeline, splitting the time, shaping the peer."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

# scripts/bench.py runs as a script and imports benchlib from its own folder.
sys.path.append(str(Path(__file__).resolve().parents[2] / "scripts"))

from benchlib.journal import (
    first_event,
    first_report,
    log_time,
    parse_line,
    parse_log,
    phase_spans,
    received_at,
    reported_instances,
    sm_spans,
)
from benchlib.peer_compose import (
    ComposeError,
    ContainerShape,
    compose_document,
    container_shape,
)

T0 = log_time("2026-12-03T13:46:28.000Z")


def cm(at: float, event: str, **fields: object) -> str:
    """A CM log line (JSON) `at` seconds after T0."""
    ts = _ts(at)
    return json.dumps({"ts": ts, "level": "info", "component": "x", "event": event, **fields})


def sm(at: float, event: str, **fields: str) -> str:
    """An SM log line (logfmt) `at` seconds after T0."""
    pairs = " ".join(f"{k}={json.dumps(v) if ' ' in v else v}" for k, v in fields.items())
    return f"ts={_ts(at)} level=info component=sm event={event} {pairs}".strip()


def _ts(at: float) -> str:
    stamp = datetime.fromtimestamp(T0 + at, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def status(groups: list[tuple[str, str, str]], delta: bool = False) -> dict:
    """A timeline record: each (item, version, state) as one group with instance 0."""
    return {
        "receivedAt": T0,
        "unitStatus": {
            "isDeltaInfo": delta,
            "instances": [
                {"item": {"id": i}, "version": v, "instances": [{"instance": 0, "state": s}]}
                for i, v, s in groups
            ],
        },
    }


class TestReadingTheLog:
    def test_json_and_logfmt_lines_both_parse_with_their_time(self) -> None:
        a = parse_line(cm(0.25, "message.received", type="desiredStatus"))
        b = parse_line(sm(0.5, "step.done", action="start", reason="a b"))
        assert a is not None and b is not None
        assert a["t"] == pytest.approx(T0 + 0.25)
        assert (b["event"], b["action"], b["reason"]) == ("step.done", "start", "a b")
        assert b["t"] == pytest.approx(T0 + 0.5)

    def test_other_lines_are_skipped(self) -> None:
        text = "\n".join(["Traceback (most recent call last):", "{not json", "[1, 2]", ""])
        assert parse_log(text) == []

    def test_the_desired_status_is_found_among_other_messages(self) -> None:
        records = parse_log(
            "\n".join(
                [
                    cm(0.1, "message.received", type="blobUrls"),
                    cm(0.2, "message.received", type="desiredStatus"),
                    cm(0.3, "message.received", type="desiredStatus"),
                ]
            )
        )
        assert received_at(records) == pytest.approx(T0 + 0.2)
        assert received_at(records, "unitStatus") is None

    def test_first_event_matches_fields_and_time(self) -> None:
        records = parse_log(
            "\n".join(
                [
                    cm(0.1, "phase.entered", phase="launching"),
                    cm(0.2, "phase.entered", phase="waitingActive"),
                    cm(0.9, "phase.entered", phase="launching"),
                ]
            )
        )
        found = first_event(records, "phase.entered", T0 + 0.5, phase="launching")
        assert found is not None and found["t"] == pytest.approx(T0 + 0.9)


class TestTheReport:
    def test_instances_are_read_with_item_version_and_state(self) -> None:
        record = status([("a", "1.0.0", "active"), ("b", "1.0.0", "activating")])
        assert reported_instances(record["unitStatus"]) == {
            ("a", "1.0.0", 0): "active",
            ("b", "1.0.0", 0): "activating",
        }

    def test_the_first_report_of_all_active_counts(self) -> None:
        wanted = {("a", "1.0.0", 0), ("b", "1.0.0", 0)}
        timeline = [
            status([("a", "1.0.0", "active")]),
            status([("a", "1.0.0", "active"), ("b", "1.0.0", "activating")]),
            status([("a", "1.0.0", "active"), ("b", "1.0.0", "active")], delta=True),
            status([("a", "1.0.0", "active"), ("b", "1.0.0", "active")]),
        ]
        assert first_report(timeline, wanted) is timeline[3]

    def test_a_change_counts_only_once_the_old_version_is_gone(self) -> None:
        wanted = {("a", "2.0.0", 0)}
        timeline = [
            status([("a", "1.0.0", "active"), ("a", "2.0.0", "active")]),
            status([("a", "2.0.0", "active")]),
        ]
        assert first_report(timeline, wanted) is timeline[1]
        assert first_report(timeline[:1], wanted) is None


class TestSplittingTheTime:
    def test_phases_add_up_to_the_whole(self) -> None:
        records = parse_log(
            "\n".join(
                [
                    cm(-1.0, "phase.entered", phase="none"),  # before: not counted
                    cm(0.1, "phase.entered", phase="downloading"),
                    cm(0.5, "phase.entered", phase="launching"),
                    cm(2.0, "phase.entered", phase="waitingActive"),
                    cm(3.0, "phase.entered", phase="none"),
                    cm(9.0, "phase.entered", phase="downloading"),  # after the end
                ]
            )
        )
        spans = phase_spans(records, T0, T0 + 3.25)
        assert list(spans) == ["accept", "downloading", "launching", "waitingActive", "report"]
        assert spans["launching"] == pytest.approx(1.5)
        assert spans["report"] == pytest.approx(0.25)
        assert sum(spans.values()) == pytest.approx(3.25)

    def test_a_report_inside_a_phase_ends_that_phase(self) -> None:
        records = parse_log(cm(0.5, "phase.entered", phase="waitingActive"))
        assert phase_spans(records, T0, T0 + 1.0) == pytest.approx(
            {"accept": 0.5, "waitingActive": 0.5}
        )

    def test_the_sm_gap_before_each_event_goes_to_what_ended_it(self) -> None:
        records = parse_log(
            "\n".join(
                [
                    sm(0.1, "update.received"),
                    sm(0.3, "blobcache.fetched"),
                    sm(0.4, "step.done", action="load_image"),
                    sm(0.5, "step.done", action="create"),
                    sm(0.8, "step.done", action="start"),
                    sm(0.9, "step.done", action="load_image"),
                    sm(0.95, "container.created"),  # not a piece of work of its own
                    sm(1.0, "step.done", action="create"),
                    sm(1.3, "step.done", action="start"),
                ]
            )
        )
        spans = sm_spans(records, T0, T0 + 2.0)
        assert spans == pytest.approx(
            {
                "dispatch to the SM": 0.1,
                "SM fetches blobs": 0.2,
                "load image": 0.2,
                "create container": 0.2,
                "start container": 0.6,
            },
            abs=0.002,  # the log's stamps are to the millisecond
        )


class TestTheComposeFile:
    ATTRS = {
        "Config": {"Cmd": ["/bin/sh", "-c", "wait $!"], "Entrypoint": None},
        "HostConfig": {"NetworkMode": "none", "RestartPolicy": {"Name": "no"}},
    }

    def test_the_shape_is_read_off_the_agents_container(self) -> None:
        assert container_shape(self.ATTRS) == ContainerShape(
            command=("/bin/sh", "-c", "wait $!"), entrypoint=None, network_mode="none", restart="no"
        )

    def test_a_container_on_a_network_is_refused(self) -> None:
        attrs = {**self.ATTRS, "HostConfig": {"NetworkMode": "bridge"}}
        with pytest.raises(ComposeError, match="bridge"):
            container_shape(attrs)

    def test_each_service_copies_the_shape_and_the_grace(self) -> None:
        doc = compose_document({"svc-a": "repo/a:1"}, container_shape(self.ATTRS), 5.0)
        assert doc["services"]["svc-a"] == {
            "image": "repo/a:1",
            "network_mode": "none",
            "restart": "no",
            "stop_grace_period": "5s",
            # compose would substitute `$!` as a variable: `$$` passes it on unchanged
            "command": ["/bin/sh", "-c", "wait $$!"],
        }
