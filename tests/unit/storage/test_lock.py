"""The data-dir lock: one live holder, named by its pid; a killed holder never blocks; a data dir
that cannot be written is refused with one message naming it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aoscore_py.errors import AosCode, StorageError
from aoscore_py.storage import lock as lock_module
from aoscore_py.storage.lock import (
    LOCK_NAME,
    DataDirInUse,
    DataDirLock,
    DataDirUnusable,
    check_data_dir,
    read_pid,
)

HOLDER = """
import sys, time
from pathlib import Path
from aoscore_py.storage.lock import DataDirLock
DataDirLock.acquire(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(data_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_the_lock_makes_the_data_dir_and_names_this_process(data_dir: Path) -> None:
    lock = DataDirLock.acquire(data_dir)
    try:
        assert lock.held
        assert read_pid(data_dir / LOCK_NAME) == os.getpid()
        assert lock.previous_pid is None
    finally:
        lock.release()
    assert not lock.held
    again = DataDirLock.acquire(data_dir)
    again.release()
    assert again.previous_pid == os.getpid(), "the pid stays as a hint after a release"


def test_a_second_holder_is_refused_while_the_first_lives(data_dir: Path) -> None:
    first = DataDirLock.acquire(data_dir)
    try:
        with pytest.raises(DataDirInUse) as info:
            DataDirLock.acquire(data_dir)
        assert info.value.pid == os.getpid()
        assert f"pid {os.getpid()}" in info.value.message
        assert str(data_dir) in info.value.message
        assert isinstance(info.value, StorageError)
    finally:
        first.release()
    DataDirLock.acquire(data_dir).release()


def test_another_process_holding_it_is_named(data_dir: Path, holder: subprocess.Popen[str]) -> None:
    with pytest.raises(DataDirInUse) as info:
        DataDirLock.acquire(data_dir)
    assert info.value.pid == holder.pid
    assert f"pid {holder.pid}" in info.value.message


def test_a_lock_file_left_by_a_killed_holder_does_not_block(
    data_dir: Path, holder: subprocess.Popen[str]
) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert read_pid(data_dir / LOCK_NAME) == holder.pid, "its file still names it"
    lock = DataDirLock.acquire(data_dir)
    try:
        assert lock.previous_pid == holder.pid
        assert read_pid(data_dir / LOCK_NAME) == os.getpid()
    finally:
        lock.release()


def test_an_unreadable_lock_file_is_not_a_pid(data_dir: Path) -> None:
    data_dir.mkdir()
    (data_dir / LOCK_NAME).write_bytes(b"\x00garbage")
    lock = DataDirLock.acquire(data_dir)
    try:
        assert lock.previous_pid is None
        assert read_pid(data_dir / LOCK_NAME) == os.getpid()
    finally:
        lock.release()


def test_a_data_dir_that_cannot_be_made_is_unusable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DataDirUnusable) as info:
        DataDirLock.acquire(tmp_path / "file" / "data")
    assert str(tmp_path / "file" / "data") in info.value.message
    assert "\n" not in info.value.message


def test_a_part_the_agent_cannot_write_is_named(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (data_dir / "blobs" / "sha256").mkdir(parents=True)
    blocked = data_dir / "blobs" / "sha256"
    real_access = os.access
    monkeypatch.setattr(
        lock_module.os, "access", lambda p, mode: Path(p) != blocked and real_access(p, mode)
    )
    with pytest.raises(DataDirUnusable) as info:
        check_data_dir(data_dir)
    assert str(blocked) in info.value.message
    with pytest.raises(DataDirUnusable):
        DataDirLock.acquire(data_dir)
    monkeypatch.undo()
    DataDirLock.acquire(data_dir).release()


def test_a_full_disk_is_no_memory(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lock_module.os, "pwrite", full)
    with pytest.raises(DataDirUnusable) as info:
        DataDirLock.acquire(data_dir)
    assert info.value.code == AosCode.NO_MEMORY
    assert "No space left" in info.value.message
    monkeypatch.undo()
    DataDirLock.acquire(data_dir).release()


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder bind-mounted read-only over itself (root only: root ignores file modes)."""
    folder = tmp_path / f"ro-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    (folder / LOCK_NAME).write_text("12345\n")
    if os.geteuid() != 0:
        pytest.skip("a read-only mount needs root")
    bind = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if bind.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bind.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_data_dir_is_unusable(read_only_dir: Path) -> None:
    with pytest.raises(DataDirUnusable) as info:
        DataDirLock.acquire(read_only_dir)
    assert str(read_only_dir) in info.value.message
    assert "Read-only file system" in info.value.message
