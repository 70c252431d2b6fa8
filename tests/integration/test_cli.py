"""The `aoscore` command as an operator meets it: clear errors, exit 2 for bad usage or input,
never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest

from aoscore_py.cloud.oci import OciImage
from aoscore_py.powercut.testbed import CloudProcess, aoscore_cmd, scenario, wait_converged
from aoscore_py.protocol import DesiredStatus, dump_message, parse_message
from aoscore_py.sm.docker_runtime import DockerRuntime

from .conftest import Agents

pytestmark = pytest.mark.integration


def aoscore(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(aoscore_cmd(*args), capture_output=True, text=True, timeout=timeout)


def test_cloud_desired_writes_what_push_takes() -> None:
    digest = "sha256:" + "b" * 64
    proc = aoscore(
        *("cloud", "desired", "--item", f"web={digest}:2", "--item", f"worker={digest}"),
        *("--label", "web=gpu", "--node", "node-1", "--paused", "node-3", "--version", "2.0.0"),
    )
    assert proc.returncode == 0, proc.stderr
    ds = parse_message(proc.stdout.encode(), message_type="desiredStatus")
    assert isinstance(ds, DesiredStatus)
    assert [(i.item.key, i.version, i.index_digest) for i in ds.items] == [
        ("web", "2.0.0", digest),
        ("worker", "2.0.0", digest),
    ]
    assert [(g.item.key, g.num_instances, g.labels) for g in ds.instances] == [
        ("web", 2, ("gpu",)),
        ("worker", 1, ()),
    ]
    assert [(n.item.key, n.state.value) for n in ds.nodes] == [
        ("node-1", "provisioned"),
        ("node-3", "paused"),
    ]


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["agent", "--cloud", "http://127.0.0.1:1", "--system-id", "u"], "--cloud"),
        (["agent", "--cloud", "ws://127.0.0.1:1", "--system-id", "a b"], "--system-id"),
        (
            ["agent", "--cloud", "ws://127.0.0.1:1", "--system-id", "u", "--active-timeout", "-1"],
            "--active-timeout",
        ),
        (["agent", "--system-id", "u"], "--cloud"),
        (
            [
                *("agent", "--cloud", "ws://127.0.0.1:1", "--system-id", "u"),
                *("--reconnect-min", "10", "--reconnect-max", "5"),
            ],
            "--reconnect-max",
        ),
        (
            ["agent", "--cloud", "ws://127.0.0.1:1", "--system-id", "u", "--sm-listen", "x"],
            "--sm-listen",
        ),
        (
            ["agent", "--cloud", "ws://127.0.0.1:1", "--system-id", "u", "--blob-advertise", "x"],
            "--blob-advertise",
        ),
        (["powercut", "--fs", "lossy", "--network", "flaky", "--random", "2"], "--network"),
        (["powercut", "--torn"], "--torn"),
        (["powercut", "lossyctl", "/tmp", "explode"], "explode"),
        (["cloud", "publish", "Not_A_Name"], "NAME"),
        (["cloud", "serve", "--port", "70000"], "--port"),
        (["cloud", "push", "--unit", "u", "/no/such/file.json"], "FILE"),
        (["cloud", "desired", "--item", "web=sha256:xyz"], "--item"),
        (["cloud", "desired", "--item", "web"], "--item"),
        (["cloud", "desired", "--item", f"web={'sha256:' + 'a' * 64}:two"], "--item"),
        (["cloud", "desired", "--item", f"web={'sha256:' + 'a' * 64}", "--label", "x"], "--label"),
        (["protocol", "check", "--type", "bogus", "x.json"], "--type"),
        (["no-such-command"], "no-such-command"),
    ],
)
def test_bad_arguments_exit_2_naming_the_problem(args: list[str], names: str) -> None:
    proc = aoscore(*args)
    assert proc.returncode == 2, proc
    assert names in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (
            b'{"messageType": "desiredStatus", "items": [{"item": {"id": "x"}}]}',
            "$.items[0].item.type",
        ),
        (b'{"messageType": "unitStatus", "isDeltaInfo": false}', "desiredStatus"),
        (b"\xff\xfe\x00", "UTF-8"),
    ],
)
def test_push_refuses_a_bad_file_with_the_parsers_message(
    tmp_path: Path, cloud: CloudProcess, content: bytes, reason: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    proc = aoscore("cloud", "push", "--unit", "u1", str(bad), "--cloud-dir", str(cloud.cloud_dir))
    assert proc.returncode == 2, proc
    assert str(bad) in proc.stderr and reason in proc.stderr
    assert "Traceback" not in proc.stderr


def test_push_and_units_without_a_running_cloud_fail_with_exit_1(
    tmp_path: Path, images: dict[str, OciImage]
) -> None:
    """An operation that failed, not bad usage: exit 1 (2 is for bad usage or input)."""
    good = tmp_path / "ds.json"
    good.write_bytes(dump_message(scenario([("svc-a", images["it-alpha"])])))
    pushed = aoscore("cloud", "push", "--unit", "u1", str(good), "--cloud-dir", str(tmp_path))
    listed = aoscore("cloud", "units", "--cloud-dir", str(tmp_path))
    for proc in (pushed, listed):
        assert proc.returncode == 1, proc
        assert "no reference cloud is running" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_timeline_of_a_unit_with_no_status_says_so_and_exits_1(cloud: CloudProcess) -> None:
    for mode in ("--check", "--last"):
        proc = aoscore(
            *("cloud", "timeline", "--unit", "unit-typo", mode),
            *("--cloud-dir", str(cloud.cloud_dir)),
        )
        assert proc.returncode == 1, proc
        assert "no status recorded for unit unit-typo" in proc.stderr
        assert proc.stdout == ""


def test_publish_push_and_timeline_from_the_command_line(
    tmp_path: Path,
    agents: Agents,
    cloud: CloudProcess,
    unit: str,
    docker_runtime: DockerRuntime,
) -> None:
    published = aoscore("cloud", "publish", "cli-image", "--cloud-dir", str(cloud.cloud_dir))
    assert published.returncode == 0, published.stderr
    digest = published.stdout.strip()
    assert digest.startswith("sha256:") and len(digest) == 71

    ds = scenario([("svc-cli", OciImage("cli-image", digest, {}))], num_instances=1)
    frame = {
        "header": {"version": 7, "systemId": unit, "txn": "t-1"},
        "data": orjson.loads(dump_message(ds)),
    }
    path = tmp_path / "frame.json"
    path.write_bytes(orjson.dumps(frame))
    _, log, data_dir = agents.start(unit)
    log.wait_for("link.up")
    pushed = aoscore(
        "cloud", "push", "--unit", unit, str(path), "--cloud-dir", str(cloud.cloud_dir)
    )
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.startswith(f"ack unit={unit} txn=")
    assert wait_converged(unit, ds, cloud, data_dir, docker_runtime).ok

    timeline = aoscore(
        "cloud", "timeline", "--unit", unit, "--last", "--cloud-dir", str(cloud.cloud_dir)
    )
    last = orjson.loads(timeline.stdout)["unitStatus"]
    assert last["items"][0]["item"]["id"] == "svc-cli" and last["items"][0]["state"] == "installed"

    # In the unit's own order: one line per status, then the counts; exit 1 only when a status
    # the unit made never arrived (the durable outbox of a later change makes that none).
    checked = aoscore(
        "cloud", "timeline", "--unit", unit, "--check", "--cloud-dir", str(cloud.cloud_dir)
    )
    *lines, counts = checked.stdout.splitlines()
    recorded = len(cloud.state.timeline(unit))
    assert len(lines) == recorded and all(line.startswith("boot=") for line in lines)
    fields = dict(pair.split("=") for pair in counts.split())
    assert int(fields["statuses"]) == recorded and fields["duplicates"] == "0"
    assert checked.returncode == (1 if int(fields["missing"]) else 0), checked.stderr


def test_a_killed_cloud_serve_leaves_no_registry_behind(tmp_path: Path) -> None:
    import os
    import signal
    import time

    from aoscore_py.powercut.testbed import Process

    cloud = Process(
        aoscore_cmd("cloud", "serve", "--cloud-dir", str(tmp_path / "cloud")),
        tmp_path / "cloud.log",
    )
    pid_file = tmp_path / "cloud" / "registry" / "registry.pid"
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "cloud" / "cloud.json").exists():
            assert time.monotonic() < deadline, cloud.output()
            time.sleep(0.1)
        registry = int(pid_file.read_text())
        os.kill(registry, 0)  # it runs
        cloud.signal(signal.SIGKILL)
        assert cloud.wait(10) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while Path(f"/proc/{registry}").exists() and b"Z" not in _state(registry):
            assert time.monotonic() < deadline, "the registry outlived its cloud"
            time.sleep(0.1)
    finally:
        cloud.stop()


def _state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return b"Z"
