"""Storage faults, tried as an attacker would on a converged unit, against the real agent, cloud,
registry and Docker engine. Each ends with the same containers (same ids, not restarted) running.

- A store with garbage in the middle, emptied to 0 bytes, or without its `-wal`: moved aside with
  one error line saying what was lost; the agent starts on a new store, adopts and reports the
  running containers, and when the cloud sends the desired status again keeps them (its blobs
  adopted by their hashes, none fetched again). `aoscore images status` on it: exit 1, one line.
- A read-only data dir: exit 1 with one line naming it.
- A full disk: the desired status is nacked with noMemory (aosCode 3); what runs keeps running.
- A second agent on a data dir in use: exit 1 naming the holder's pid; a killed holder's lock
  file does not block the next agent.
- A kill at each of the storage's crash points: the next start converges.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aoscore_py.cloud.oci import OciImage
from aoscore_py.powercut.testbed import (
    AgentLog,
    CloudProcess,
    Process,
    aoscore_cmd,
    push,
    scenario,
    wait_converged,
    wanted_instances,
)
from aoscore_py.protocol import DesiredStatus
from aoscore_py.sm.docker_runtime import LABEL_UNIT, DockerRuntime
from aoscore_py.storage import DB_NAME
from aoscore_py.storage import crashpoints as points

from .conftest import Agents

pytestmark = pytest.mark.integration

EXIT_TIMEOUT_S = 30.0


@dataclass
class Unit:
    """A unit converged on `ds` by a running agent, and its containers then."""

    name: str
    ds: DesiredStatus
    proc: Process
    log: AgentLog
    data_dir: Path
    containers: dict[str, str | None]  # id -> StartedAt


def containers(runtime: DockerRuntime, unit: str) -> dict[str, str | None]:
    infos = runtime.list_containers({LABEL_UNIT: unit})
    assert all(c.status == "running" for c in infos), [(c.name, c.status) for c in infos]
    return {c.id: c.started_at for c in infos}


def assert_same_containers(runtime: DockerRuntime, unit: Unit) -> None:
    """The very containers the unit ran when it converged: same ids, running, never restarted."""
    assert containers(runtime, unit.name) == unit.containers


def converge(
    agents: Agents, images: dict[str, OciImage], name: str, runtime: DockerRuntime
) -> Unit:
    ds = scenario([("svc-a", images["it-alpha"])], num_instances=2)
    proc, log, data_dir = agents.converged(name, ds, runtime)
    running = containers(runtime, name)
    assert len(running) == 2
    return Unit(name, ds, proc, log, data_dir, running)


def end_agent(u: Unit, how: str) -> None:
    """Stop the unit's agent cleanly ("stopped"), or kill it as a power cut would ("killed")."""
    if how == "stopped":
        assert u.proc.stop() == 0
    else:
        u.proc.signal(signal.SIGKILL)
        assert u.proc.wait(10) == -signal.SIGKILL


def one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


def images_status(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        aoscore_cmd("images", "status", "--data-dir", str(data_dir)),
        capture_output=True,
        text=True,
        timeout=60,
    )


def first_status_of(
    cloud: CloudProcess, unit: str, boot_id: str, timeout_s: float = 30.0
) -> dict[str, object]:
    """The first unitStatus the cloud recorded from the agent started with `boot_id`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for record in cloud.state.timeline(unit):
            if record["unitStatus"].get("bootId") == boot_id:
                return record["unitStatus"]
        time.sleep(0.05)
    raise TimeoutError(f"no unitStatus from boot {boot_id} of {unit}")


def reported(status: dict) -> dict[tuple[str, str, int], str]:
    return {
        (group["item"]["id"], group["subject"]["id"], inst["instance"]): inst["state"]
        for group in status.get("instances") or []
        for inst in group["instances"]
    }


def recovers(
    agents: Agents, cloud: CloudProcess, unit: Unit, runtime: DockerRuntime, kind: str
) -> dict[str, object]:
    """Start an agent on the spoiled store: one error line says what was moved and lost, the
    running containers are reported at once, and once the cloud sent the desired status again
    the unit converges on the same containers with its blobs adopted, none fetched. Returns
    the error line."""
    _, log, data_dir = agents.start(unit.name)
    line = log.wait_for(f"storage.{kind}", timeout_s=30)
    assert line["level"] == "error"
    assert DB_NAME in line["moved"]  # type: ignore[operator]
    assert line["held"], "what the old file held, or that it was unreadable"
    started = log.wait_for("agent.start")
    first = first_status_of(cloud, unit.name, str(started["boot_id"]))
    assert reported(first) == dict.fromkeys(wanted_instances(unit.ds), "active"), first
    log.wait_for("cycle.ended", timeout_s=60)
    result = wait_converged(unit.name, unit.ds, cloud, data_dir, runtime)
    assert result.ok, result.problems
    assert log.find("blob.adopted"), "stored blobs adopted by their hashes"
    assert not log.find("blob.stored"), "no blob fetched again"
    assert_same_containers(runtime, unit)
    return line


def spoil_the_middle(path: Path) -> bytes:
    raw = bytearray(path.read_bytes())
    middle = (len(raw) // 2) & ~4095
    raw[middle : middle + 4096] = bytes((i * 131 + 7) % 256 for i in range(4096))
    path.write_bytes(bytes(raw))
    return bytes(raw)


def test_garbage_in_the_middle_is_moved_aside_and_the_unit_recovers(
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
) -> None:
    u = converge(agents, images, unit, docker_runtime)
    assert u.proc.stop() == 0  # the log is checkpointed into the file
    spoiled = spoil_the_middle(u.data_dir / DB_NAME)

    status = images_status(u.data_dir)
    assert status.returncode == 1, status.stdout + status.stderr
    line = one_line(status.stderr)
    assert str(u.data_dir / DB_NAME) in line and "damaged" in line

    error = recovers(agents, cloud, u, docker_runtime, "corrupt")
    assert "quick_check" in str(error["reason"]) or "malformed" in str(error["reason"])
    (aside,) = u.data_dir.glob(f"{DB_NAME}.corrupt-*[0-9]")
    assert aside.read_bytes() == spoiled, "kept for a post-mortem"
    assert images_status(u.data_dir).returncode == 0


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_a_store_emptied_to_zero_bytes_is_seen_and_the_unit_recovers(
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
    how: str,
) -> None:
    u = converge(agents, images, unit, docker_runtime)
    end_agent(u, how)
    (u.data_dir / DB_NAME).write_bytes(b"")

    status = images_status(u.data_dir)
    assert status.returncode == 1, status.stdout + status.stderr
    assert "lost committed state" in one_line(status.stderr)

    error = recovers(agents, cloud, u, docker_runtime, "lost")
    assert "empty (0 bytes)" in str(error["reason"])
    assert error["held"] == "empty (0 bytes)"


def test_a_deleted_wal_is_seen_and_the_unit_recovers(
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
) -> None:
    u = converge(agents, images, unit, docker_runtime)
    end_agent(u, "killed")
    wal = u.data_dir / f"{DB_NAME}-wal"
    assert wal.stat().st_size > 0, "the converged state is in the log"
    wal.unlink()

    status = images_status(u.data_dir)
    assert status.returncode == 1, status.stdout + status.stderr
    one_line(status.stderr)

    error = recovers(agents, cloud, u, docker_runtime, "lost")
    assert "write-ahead log (-wal) is gone or empty" in str(error["reason"])


@pytest.fixture
def mounts(agents: Agents) -> Iterator[Callable[..., Path]]:
    """Mount over a folder for a test; agents are stopped before everything is unmounted."""
    done: list[Path] = []

    def mount(where: Path, *args: str) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", *args, str(where)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount here ({result.stderr.strip()}); this test needs root")
        done.append(where)
        return where

    yield mount
    agents.stop_all()
    for where in reversed(done):
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_a_read_only_data_dir_exits_1_naming_it(
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
    mounts: Callable[..., Path],
    how: str,
) -> None:
    u = converge(agents, images, unit, docker_runtime)
    end_agent(u, how)
    mounts(u.data_dir, "--bind", str(u.data_dir))
    subprocess.run(["mount", "-o", "remount,bind,ro", str(u.data_dir)], check=True)

    proc, _, _ = agents.start(unit)
    assert proc.wait(EXIT_TIMEOUT_S) == 1
    line = one_line(proc.output())
    assert str(u.data_dir) in line and "Read-only file system" in line
    assert_same_containers(docker_runtime, u)

    subprocess.run(["umount", str(u.data_dir)], check=True)
    _, log, _ = agents.start(unit)
    log.wait_for("link.up")
    assert wait_converged(unit, u.ds, cloud, u.data_dir, docker_runtime).ok
    assert not log.find("storage.lost") and not log.find("storage.corrupt")
    assert_same_containers(docker_runtime, u)


def fill(folder: Path) -> Path:
    """Fill the file system of `folder` to the last byte."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_nacks_with_no_memory_and_what_runs_keeps_running(
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
    mounts: Callable[..., Path],
    tmp_path: Path,
) -> None:
    data_dir = mounts(tmp_path / unit / "data", "-t", "tmpfs", "-o", "size=32m", "tmpfs")
    u = converge(agents, images, unit, docker_runtime)
    assert u.data_dir == data_dir
    filler = fill(data_dir)

    fewer = scenario([("svc-a", images["it-alpha"])], num_instances=1)
    answer = push(cloud, unit, fewer)
    assert answer["ok"] is False, answer
    assert answer["aosCode"] == 3, answer
    assert "no space left" in answer["error"] and str(data_dir) in answer["error"]
    u.log.wait_for("message.rejected")
    time.sleep(2)
    assert u.proc.proc.poll() is None, "the agent keeps running"
    assert_same_containers(docker_runtime, u)

    filler.unlink()  # space again: the next desired status goes through
    assert u.ds.unit_config is not None
    again = dataclasses.replace(
        u.ds, unit_config=dataclasses.replace(u.ds.unit_config, version="1.0.1")
    )
    assert push(cloud, unit, again)["ok"]
    assert wait_converged(unit, again, cloud, data_dir, docker_runtime).ok
    assert_same_containers(docker_runtime, u)


def test_a_second_agent_on_a_data_dir_in_use_exits_1_naming_the_holder(
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
) -> None:
    u = converge(agents, images, unit, docker_runtime)
    second, _, _ = agents.start(unit)
    assert second.wait(EXIT_TIMEOUT_S) == 1
    line = one_line(second.output())
    assert f"pid {u.proc.pid}" in line and str(u.data_dir) in line
    assert u.proc.proc.poll() is None, "the first agent runs on"
    assert push(cloud, unit, u.ds)["ok"], "and answers"
    assert_same_containers(docker_runtime, u)
    verify = subprocess.run(
        aoscore_cmd("images", "verify", "--data-dir", str(u.data_dir)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 1, "images verify changes the store: not while the agent runs"
    assert f"pid {u.proc.pid}" in one_line(verify.stderr)

    end_agent(u, "killed")  # its lock file stays behind
    third, log, _ = agents.start(unit)
    log.wait_for("datadir.locked", previous_pid=u.proc.pid)
    log.wait_for("link.up")
    assert third.proc.poll() is None
    assert wait_converged(unit, u.ds, cloud, u.data_dir, docker_runtime).ok
    assert_same_containers(docker_runtime, u)


@pytest.mark.parametrize(
    "point",
    [points.LOCK_TAKEN, points.GENERATION_COMMITTED, points.SIDECAR_WRITTEN, points.MOVED_ASIDE],
)
def test_a_kill_at_each_storage_crash_point_converges(
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
    point: str,
) -> None:
    u = converge(agents, images, unit, docker_runtime)
    assert u.proc.stop() == 0
    if point == points.MOVED_ASIDE:
        spoil_the_middle(u.data_dir / DB_NAME)
    armed, _, _ = agents.start(unit, crashpoint=point)
    assert armed.wait(EXIT_TIMEOUT_S) == -signal.SIGKILL, armed.output()[-2000:]
    _, log, _ = agents.start(unit)
    log.wait_for("link.up")
    if point != points.MOVED_ASIDE:
        assert not log.find("storage.lost") and not log.find("storage.corrupt"), "no false alarm"
    assert wait_converged(unit, u.ds, cloud, u.data_dir, docker_runtime).ok
    assert_same_containers(docker_runtime, u)
