"""The lossy file system on its own, through a real FUSE mount: writers that skip an fsync lose
their data at a cut, writers that do it right (temp, fsync, rename, fsync the folder; SQLite in
WAL mode with synchronous=FULL) lose nothing they committed."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from aoscore_py.errors import LocalError
from aoscore_py.fsutil import atomic_write, fsync_dir
from aoscore_py.powercut.lossyfs.mount import LossyMount
from aoscore_py.powercut.lossyfs.tree import SECTOR
from aoscore_py.storage import DB_NAME, Storage
from aoscore_py.storage.recovery import read_sidecar

pytestmark = pytest.mark.integration


@pytest.fixture
def lossy(tmp_path: Path) -> Iterator[LossyMount]:
    mount = LossyMount(tmp_path / "backing", tmp_path / "mnt", torn=False)
    mount.mount()
    yield mount
    mount.stop()


def _fsynced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def test_data_written_without_fsync_is_lost(lossy: LossyMount) -> None:
    root = lossy.mountpoint
    _fsynced(root / "f", b"old")
    fsync_dir(root)
    with open(root / "f", "wb") as f:
        f.write(b"new data nobody synced")
    assert (root / "f").read_bytes() == b"new data nobody synced"  # served before the cut
    loss = lossy.remount()
    assert loss["files"] == 1
    assert (root / "f").read_bytes() == b"old"


def test_opening_with_o_trunc_empties_the_file_until_a_cut(lossy: LossyMount) -> None:
    root = lossy.mountpoint
    _fsynced(root / "f", b"x" * 90_000)
    fsync_dir(root)
    (root / "f").write_bytes(b"")
    assert (root / "f").stat().st_size == 0
    lossy.remount()
    assert (root / "f").stat().st_size == 90_000
    with open(root / "f", "wb") as f:
        os.fsync(f.fileno())
    lossy.remount()
    assert (root / "f").read_bytes() == b""


def test_a_name_whose_folder_was_not_fsynced_is_lost(lossy: LossyMount) -> None:
    root = lossy.mountpoint
    _fsynced(root / "new", b"synced data, unsynced name")
    lossy.remount()
    assert not (root / "new").exists()


def test_a_rename_without_fsyncing_the_folder_is_lost(lossy: LossyMount) -> None:
    root = lossy.mountpoint
    _fsynced(root / "config", b"v1")
    fsync_dir(root)
    _fsynced(root / "config.tmp", b"v2")
    fsync_dir(root)
    os.replace(root / "config.tmp", root / "config")  # the folder is not fsynced after it
    assert (root / "config").read_bytes() == b"v2"
    lossy.remount()
    assert (root / "config").read_bytes() == b"v1"
    assert (root / "config.tmp").read_bytes() == b"v2"


def test_a_file_in_a_new_folder_goes_with_the_folder(lossy: LossyMount) -> None:
    root = lossy.mountpoint
    (root / "dir").mkdir()
    _fsynced(root / "dir" / "f", b"x")
    fsync_dir(root / "dir")  # the folder's entries, but not the folder's own name
    lossy.remount()
    assert not (root / "dir").exists()


def test_a_folder_made_durable_brings_what_it_made_durable(lossy: LossyMount) -> None:
    root = lossy.mountpoint
    (root / "a" / "b").mkdir(parents=True)
    _fsynced(root / "a" / "b" / "kept", b"k")
    (root / "a" / "b" / "lost").write_bytes(b"l")
    fsync_dir(root / "a" / "b")
    (root / "a" / "b" / "late").write_bytes(b"after the folder's fsync")
    fsync_dir(root / "a")
    fsync_dir(root)
    lossy.remount()
    assert sorted(os.listdir(root / "a" / "b")) == ["kept", "lost"]
    assert (root / "a" / "b" / "kept").read_bytes() == b"k"
    assert (root / "a" / "b" / "lost").read_bytes() == b""  # its name was durable, its data not


def test_the_right_writer_loses_nothing(lossy: LossyMount) -> None:
    root = lossy.mountpoint
    for version in range(5):
        atomic_write(root / "state.json", f'{{"version": {version}}}'.encode())
        lossy.remount()
        assert (root / "state.json").read_bytes() == f'{{"version": {version}}}'.encode()
        assert [n for n in os.listdir(root) if n.endswith(".tmp")] == []


def test_the_right_writer_into_a_new_folder_loses_nothing(lossy: LossyMount) -> None:
    """atomic_write makes the folders it needs durably (a folder's name needs its parent's
    fsync): found by the lossy matrix, where an SM's `sm/` folder vanished at a node's cut."""
    root = lossy.mountpoint
    atomic_write(root / "a" / "b" / "node-config.json", b"{}")
    lossy.remount()
    assert (root / "a" / "b" / "node-config.json").read_bytes() == b"{}"


def test_the_agents_store_keeps_its_name_and_commits(lossy: LossyMount) -> None:
    """A new store's file is named durably (SQLite fsyncs the folder for its log, not for the
    store): found by the lossy matrix."""
    data_dir = lossy.mountpoint / "data"
    store = Storage(data_dir)
    store.close()
    lossy.remount()
    assert (data_dir / DB_NAME).exists()
    assert read_sidecar(data_dir) is not None


def test_a_folder_moved_with_both_folders_fsynced_is_moved(lossy: LossyMount) -> None:
    root = lossy.mountpoint
    (root / "src" / "d").mkdir(parents=True)
    (root / "dst").mkdir()
    _fsynced(root / "src" / "d" / "f", b"payload")
    for folder in (root / "src" / "d", root / "src", root / "dst", root):
        fsync_dir(folder)
    os.rename(root / "src" / "d", root / "dst" / "d")
    fsync_dir(root / "dst")
    fsync_dir(root / "src")
    lossy.remount()
    assert not (root / "src" / "d").exists()
    assert (root / "dst" / "d" / "f").read_bytes() == b"payload"


def test_truncation_and_hard_links_follow_their_fsyncs(lossy: LossyMount) -> None:
    root = lossy.mountpoint
    _fsynced(root / "f", b"0123456789" * 1000)
    os.link(root / "f", root / "g")
    fsync_dir(root)
    with open(root / "f", "r+b") as f:
        f.truncate(5)
        f.flush()
        os.fsync(f.fileno())
    with open(root / "g", "r+b") as f:
        f.truncate(2)  # not synced
    lossy.remount()
    assert (root / "f").read_bytes() == b"01234"
    assert (root / "g").read_bytes() == b"01234"
    assert os.stat(root / "f").st_ino == os.stat(root / "g").st_ino


def test_sqlite_in_wal_mode_with_full_sync_keeps_every_commit(lossy: LossyMount) -> None:
    root = lossy.mountpoint
    rng = random.Random(7)
    committed = 0
    for _ in range(4):
        db = sqlite3.connect(root / "store.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY, blob BLOB)")
        for _ in range(rng.randint(5, 40)):
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t (blob) VALUES (?)", (rng.randbytes(rng.randint(1, 9000)),))
            db.execute("COMMIT")
            committed += 1
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (blob) VALUES (?)", (b"never committed",))
        loss = lossy.remount()  # the power goes mid-transaction
        assert loss["files"] >= 1  # the open transaction's pages were dropped
        with pytest.raises(sqlite3.Error):
            db.execute("COMMIT")  # the old mount is gone under it
        db.close()
        check = sqlite3.connect(root / "store.db")
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert check.execute("SELECT count(*) FROM t").fetchone() == (committed,)
        check.close()


def test_sqlite_with_synchronous_off_loses_commits(lossy: LossyMount) -> None:
    root = lossy.mountpoint
    db = sqlite3.connect(root / "store.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (n INTEGER)")
    db.execute("PRAGMA synchronous=OFF")
    for n in range(20):
        db.execute("INSERT INTO t VALUES (?)", (n,))
    lossy.remount()
    db.close()
    check = sqlite3.connect(root / "store.db")
    assert check.execute("SELECT count(*) FROM t").fetchone() == (0,)
    check.close()


def test_a_torn_write_keeps_some_sectors_and_drops_others(tmp_path: Path) -> None:
    old, new = b"o" * (SECTOR * 8), b"n" * (SECTOR * 8)
    with LossyMount(tmp_path / "backing", tmp_path / "mnt", torn=True, seed=11) as mount:
        root = mount.mountpoint
        _fsynced(root / "f", old)
        fsync_dir(root)
        with open(root / "f", "r+b") as f:
            f.write(new)  # the last write before the cut, not synced
        loss = mount.remount()
        data = (root / "f").read_bytes()
    sectors = [data[i : i + SECTOR] for i in range(0, len(data), SECTOR)]
    assert set(sectors) == {old[:SECTOR], new[:SECTOR]}  # whole sectors, some of each
    assert loss["torn"][2] == sectors.count(new[:SECTOR])


def test_a_clean_unmount_keeps_everything(tmp_path: Path) -> None:
    mount = LossyMount(tmp_path / "backing", tmp_path / "mnt")
    with mount:
        (mount.mountpoint / "d").mkdir()
        (mount.mountpoint / "d" / "f").write_bytes(b"never fsynced")
    assert not os.path.ismount(mount.mountpoint)
    assert (tmp_path / "backing" / "d" / "f").read_bytes() == b"never fsynced"


def test_a_cut_by_signal_and_what_survives_is_what_the_backing_holds(tmp_path: Path) -> None:
    mount = LossyMount(tmp_path / "backing", tmp_path / "mnt").mount()
    root = mount.mountpoint
    atomic_write(root / "kept", b"k")
    (root / "lost").write_bytes(b"l")
    assert mount.proc is not None
    mount.proc.send_signal(subprocess.signal.SIGUSR1)
    assert mount.proc.wait(20) == 0
    mount.proc = None
    mount.mount()
    try:
        assert sorted(os.listdir(root)) == ["kept"]
    finally:
        mount.stop()


def test_bad_arguments_exit_2_naming_the_problem(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    cmd = [sys.executable, "-m", "aoscore_py", "powercut", "lossyfs"]
    missing = subprocess.run(
        [*cmd, str(tmp_path / "b"), str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert missing.returncode == 2
    assert "MOUNTPOINT" in missing.stderr
    inside = tmp_path / "b" / "m"
    inside.mkdir()
    nested = subprocess.run(
        [*cmd, str(tmp_path / "b"), str(inside)], capture_output=True, text=True
    )
    assert nested.returncode == 2
    assert "inside BACKING" in nested.stderr


def test_an_operator_mounts_checks_and_cuts_from_the_command_line(tmp_path: Path) -> None:
    backing, mnt = tmp_path / "disk", tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    cmd = [sys.executable, "-m", "aoscore_py", "powercut"]
    ctl = [*cmd, "lossyctl", str(backing)]
    fs = subprocess.Popen([*cmd, "lossyfs", str(backing), str(mnt)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        atomic_write(mnt / "kept", b"k")
        (mnt / "lost").write_bytes(b"never synced")
        status = subprocess.run([*ctl, "status"], capture_output=True, text=True, timeout=20)
        assert status.returncode == 0, status.stderr
        assert orjson.loads(status.stdout)["pending"]["entries"] == 1
        cut = subprocess.run([*ctl, "cut"], capture_output=True, text=True, timeout=20)
        assert cut.returncode == 0, cut.stderr
        assert orjson.loads(cut.stdout)["cut"]["files"] == 1
        assert fs.wait(20) == 0
    finally:
        if fs.poll() is None:
            fs.kill()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)
    assert sorted(p.name for p in backing.iterdir() if p.name != ".lossyfs") == ["kept"]
    gone = subprocess.run([*ctl, "status"], capture_output=True, text=True, timeout=20)
    assert gone.returncode == 1
    assert "no lossy file system answers" in gone.stderr


def test_a_listing_read_while_its_folder_changes_skips_nothing_that_stayed(
    lossy: LossyMount,
) -> None:
    root = lossy.mountpoint
    for n in range(600):
        (root / f"f{n:03d}").write_bytes(b"")
    seen = []
    with os.scandir(root) as it:
        for n, entry in enumerate(it):
            seen.append(entry.name)
            if n % 2 == 0:
                (root / f"new{n:03d}").write_bytes(b"")  # added behind the reader
            os.unlink(entry.path)
    assert sorted(n for n in seen if n.startswith("f")) == [f"f{n:03d}" for n in range(600)]


def test_a_folders_mode_is_durable_with_its_fsync(lossy: LossyMount) -> None:
    root = lossy.mountpoint
    (root / "d").mkdir(mode=0o755)
    fsync_dir(root)
    os.chmod(root / "d", 0o700)
    fsync_dir(root / "d")
    lossy.remount()
    assert (root / "d").stat().st_mode & 0o777 == 0o700


def test_a_file_system_that_died_fails_the_cut_instead_of_passing(tmp_path: Path) -> None:
    mount = LossyMount(tmp_path / "backing", tmp_path / "mnt").mount()
    (mount.mountpoint / "lost").write_bytes(b"never synced")
    assert mount.proc is not None
    mount.proc.kill()
    mount.proc.wait(10)
    with pytest.raises(LocalError, match="died before the cut"):
        mount.cut()
    assert not os.path.ismount(mount.mountpoint)
    assert not (tmp_path / "backing" / "lost").exists()  # a death syncs nothing
    mount.mount()  # and it mounts again over what was durable
    try:
        assert os.listdir(mount.mountpoint) == []
    finally:
        mount.stop()
