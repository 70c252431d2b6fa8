"""Malformed desired statuses are refused with a nack that says why, frames of another protocol
version or for another unit are dropped with a log line naming the field, and none of them
changes anything: what was running keeps running, and the stored desired status stays as it
was."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from aoscore_py.cloud.oci import OciImage
from aoscore_py.powercut.testbed import CloudProcess, operate, read_store, scenario, wait_converged
from aoscore_py.protocol import dump_message
from aoscore_py.sm.docker_runtime import LABEL_UNIT, DockerRuntime

from .conftest import Agents

pytestmark = pytest.mark.integration

TXN = "5d3c3b5e-0000-4000-8000-000000000001"


def frame(unit: str, data: object, *, version: object = 7, system_id: str | None = None) -> str:
    header = {
        "version": version,
        "systemId": system_id or unit,
        "txn": TXN,
        "createdAt": "2026-11-22T10:00:00.000000Z",
    }
    return orjson.dumps({"header": header, "data": data}).decode()


def good_data(images: dict[str, OciImage]) -> dict:
    return orjson.loads(dump_message(scenario([("svc-b", images["it-beta"])], num_instances=1)))


def bad_frames(unit: str, images: dict[str, OciImage]) -> dict[str, tuple[str, str]]:
    """name -> (frame text, a fragment the nack's reason must contain)."""
    good = good_data(images)
    wrong_type = {**good, "instances": [{**good["instances"][0], "numInstances": "two"}]}
    missing = {**good, "items": [{k: v for k, v in good["items"][0].items() if k != "item"}]}
    bad_enum = {**good, "nodes": [{"item": {"codename": "node-1"}, "state": "sleeping"}]}
    duplicate = {**good, "items": good["items"] * 2}
    bad_digest = {**good, "items": [{**good["items"][0], "indexDigest": "sha256:ABC"}]}
    return {
        "not json": ('{"header": {"txn": "' + TXN + '"}, "data": {nope', "JSON"),
        "not json at all": ("\x00\x01 garbage", "JSON"),
        "wrong types": (frame(unit, wrong_type), "numInstances"),
        "missing field": (frame(unit, missing), "items[0].item"),
        "unknown enum value": (frame(unit, bad_enum), "sleeping"),
        "duplicate items": (frame(unit, duplicate), "duplicate item"),
        "bad index digest": (frame(unit, bad_digest), "items[0].indexDigest"),
    }


def dropped_frames(unit: str, images: dict[str, OciImage]) -> dict[str, tuple[str, str]]:
    """name -> (frame text, the JSON path the agent's log line names)."""
    good = good_data(images)
    return {
        "wrong protocol version": (frame(unit, good, version=6), "$.header.version"),
        "another unit": (frame(unit, good, system_id="somebody-else"), "$.header.systemId"),
    }


def stored_desired(data_dir: Path) -> bytes:
    with read_store(data_dir) as storage:
        body = storage.load_desired_status()
    assert body is not None
    return body


def test_each_malformed_desired_status_is_refused_and_changes_nothing(
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
) -> None:
    ds = scenario([("svc-a", images["it-alpha"])], num_instances=2)
    _, log, data_dir = agents.converged(unit, ds, docker_runtime)
    running = {
        (c.id, c.status, c.started_at) for c in docker_runtime.list_containers({LABEL_UNIT: unit})
    }
    desired = stored_desired(data_dir)

    for name, (text, reason) in bad_frames(unit, images).items():
        answer = operate(cloud, {"op": "raw", "unit": unit, "frame": text, "timeout": 10})
        assert answer.get("nack") is not None, (name, answer)
        assert reason in answer["error"], (name, answer["error"])
    for name, (text, path) in dropped_frames(unit, images).items():
        answer = operate(cloud, {"op": "raw", "unit": unit, "frame": text, "timeout": 3})
        assert "nack" not in answer and not answer.get("ok"), (name, answer)
        assert log.wait_for("message.dropped", path=path, timeout_s=5), name

    assert log.find("desired.stored")[1:] == [], "no bad status was stored"
    assert stored_desired(data_dir) == desired
    after = {
        (c.id, c.status, c.started_at) for c in docker_runtime.list_containers({LABEL_UNIT: unit})
    }
    assert after == running, "what was running keeps running, untouched"
    assert wait_converged(unit, ds, cloud, data_dir, docker_runtime, timeout_s=5).ok
