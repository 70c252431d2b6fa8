"""Opening a store that cannot be trusted: damaged, emptied, replaced, or without the log that held
its last commits. Each is moved aside with one error line saying what it held, and a new store
made; a store killed with its log intact, or merely ahead of its sidecar, is kept. A full disk
is noMemory. No SQLite error escapes as such."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import peewee
import pytest

from aoscore_py.cm.imagemanager.interfaces import BlobRecord, ItemRecord
from aoscore_py.cm.launcher.interfaces import InstanceRecord
from aoscore_py.errors import AosCode, StorageError
from aoscore_py.nodes import InstanceKey
from aoscore_py.protocol import InstanceState, ItemState
from aoscore_py.storage import DB_NAME, SCHEMA_VERSION, Storage
from aoscore_py.storage.names import SIDECAR_NAME
from aoscore_py.storage.recovery import read_sidecar
from statemachine import UPDATE_CYCLE

DIGEST = "sha256:" + "d" * 64
PARTS = ("", "-wal", "-shm")


@pytest.fixture
def logged() -> Iterator[list[logging.LogRecord]]:
    """The storage component's log records."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("aoscore.storage")
    handler, level = Keep(logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def events(records: list[logging.LogRecord], name: str) -> list[dict]:
    return [getattr(r, "fields", {}) for r in records if r.getMessage() == name]


def fill(store: Storage) -> None:
    """A desired status, two items, three blobs, one instance, the cycle at downloading."""
    store.save_desired_status(b'{"messageType":"desiredStatus"}')
    for version in ("1.0", "2.0"):
        store.upsert_item(ItemRecord("svc", version, "service", DIGEST, ItemState.PENDING))
    for n in range(3):
        store.record_blob(BlobRecord(f"sha256:{n:064x}", n, n, 1.0))
    key = InstanceKey("svc", "subj", 0)
    store.replace_instances(
        [InstanceRecord(key, "service", "2.0", "node-1", 0, InstanceState.ACTIVE)]
    )
    store.machine("cycle", UPDATE_CYCLE).fire("start", {"ds": "x"}, "test")


HELD = {
    "phases": {"cycle": "downloading"},
    "desired_status": True,
    "items": 2,
    "blobs": 3,
    "instances": 1,
}


def snapshot(data_dir: Path, dest: Path, parts: tuple[str, ...]) -> None:
    """Copy the store's files as a kill at this instant leaves them (the ones in `parts`)."""
    dest.mkdir(parents=True)
    for name in parts:
        src = data_dir / name
        if src.exists():
            shutil.copy2(src, dest / name)


def aside(data_dir: Path, kind: str) -> list[Path]:
    return sorted(data_dir.glob(f"{DB_NAME}.{kind}-*"))


def meta_on_disk(data_dir: Path) -> dict[str, str]:
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        return dict(conn.execute("select key, value from meta").fetchall())


class TestGeneration:
    def test_every_open_moves_the_generation_on_and_the_sidecar_follows(
        self, data_dir: Path
    ) -> None:
        for _ in range(3):
            Storage(data_dir).close()
        sidecar = read_sidecar(data_dir)
        meta = meta_on_disk(data_dir)
        assert sidecar is not None
        assert sidecar.generation == 3 == int(meta["generation"])
        assert sidecar.store_id == meta["store_id"]
        body = orjson.loads((data_dir / SIDECAR_NAME).read_bytes())
        assert body == {"storeId": meta["store_id"], "generation": 3}

    def test_a_store_killed_with_its_log_keeps_everything(
        self, data_dir: Path, tmp_path: Path, logged: list[logging.LogRecord]
    ) -> None:
        Storage(data_dir).close()
        store = Storage(data_dir)
        fill(store)
        killed = tmp_path / "killed"
        snapshot(data_dir, killed, (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", SIDECAR_NAME))
        store.close()
        again = Storage(killed)
        try:
            assert again.load_desired_status() == b'{"messageType":"desiredStatus"}'
            assert len(again.blobs()) == 3
        finally:
            again.close()
        assert not list(killed.glob(f"{DB_NAME}.*-*"))
        assert not [r for r in logged if r.levelno >= logging.ERROR]

    def test_a_store_ahead_of_its_sidecar_lost_nothing(self, data_dir: Path) -> None:
        store = Storage(data_dir)
        fill(store)
        store.close()
        body = orjson.loads((data_dir / SIDECAR_NAME).read_bytes())
        body["generation"] -= 1  # a cut between the generation's commit and the sidecar
        (data_dir / SIDECAR_NAME).write_bytes(orjson.dumps(body))
        again = Storage(data_dir)
        try:
            assert again.load_desired_status() is not None
        finally:
            again.close()
        assert not list(data_dir.glob(f"{DB_NAME}.*-*"))

    def test_without_a_sidecar_the_store_is_kept_and_the_sidecar_written(
        self, data_dir: Path
    ) -> None:
        store = Storage(data_dir)
        fill(store)
        store.close()
        (data_dir / SIDECAR_NAME).unlink()
        again = Storage(data_dir)
        try:
            assert again.load_desired_status() is not None
        finally:
            again.close()
        assert read_sidecar(data_dir) is not None

    def test_an_unreadable_sidecar_is_written_again(
        self, data_dir: Path, logged: list[logging.LogRecord]
    ) -> None:
        store = Storage(data_dir)
        fill(store)
        store.close()
        (data_dir / SIDECAR_NAME).write_bytes(b"\x00 not json")
        again = Storage(data_dir)
        try:
            assert again.load_desired_status() is not None
        finally:
            again.close()
        assert events(logged, "storage.sidecar_unreadable")
        assert read_sidecar(data_dir) is not None

    def test_a_version_2_store_gains_an_identity(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True)
        db = peewee.SqliteDatabase(str(data_dir / DB_NAME))
        db.execute_sql("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute_sql("INSERT INTO meta VALUES ('schema_version', '2')")
        db.execute_sql("INSERT INTO meta VALUES ('seq_next', '42')")
        db.close()
        store = Storage(data_dir)
        try:
            assert store.schema_version == SCHEMA_VERSION
            assert store.reserve_seq(1) == 42
        finally:
            store.close()
        sidecar = read_sidecar(data_dir)
        assert sidecar is not None and sidecar.generation == 1


class TestLostState:
    def test_a_lost_log_is_seen_and_the_store_moved_aside(
        self, data_dir: Path, tmp_path: Path, logged: list[logging.LogRecord]
    ) -> None:
        first = Storage(data_dir)
        fill(first)
        first.reserve_seq(100)
        first.close()  # checkpointed into the main file: generation 1
        second = Storage(data_dir)  # generation 2, in the log only
        second.save_desired_status(b'{"newer":true}')
        second.reserve_seq(100)
        killed = tmp_path / "killed"
        snapshot(data_dir, killed, (DB_NAME, SIDECAR_NAME))  # the -wal is gone
        second.close()

        again = Storage(killed)
        try:
            assert again.load_desired_status() is None, "a new store"
            assert again.blobs() == []
            assert again.reserve_seq(1) > 200, "sequence numbers still only grow"
        finally:
            again.close()
        (moved,) = aside(killed, "lost")
        stamp = moved.name.rsplit(".", 1)[1]
        assert {p.name for p in killed.glob(f"*.{stamp}")} == {
            moved.name,
            f"{SIDECAR_NAME}.{stamp}",
        }
        (line,) = events(logged, "storage.lost")
        assert "generation 1, its sidecar at 2" in line["reason"]
        assert "write-ahead log (-wal) is gone or empty" in line["reason"]
        assert line["moved"] == [DB_NAME, SIDECAR_NAME]
        assert {k: line["held"][k] for k in HELD} == HELD, "what the old file still held"
        record = next(r for r in logged if r.getMessage() == "storage.lost")
        assert record.levelno == logging.ERROR
        fresh = read_sidecar(killed)
        conn = sqlite3.connect(f"file:{moved}?immutable=1", uri=True)
        try:
            (old_id,) = conn.execute("select value from meta where key = 'store_id'").fetchone()
        finally:
            conn.close()
        assert fresh is not None and fresh.generation == 1
        assert fresh.store_id != old_id, "a new store"

    def test_a_log_lost_before_anything_reached_the_file_is_seen(
        self, data_dir: Path, tmp_path: Path, logged: list[logging.LogRecord]
    ) -> None:
        store = Storage(data_dir)  # a new store: everything is in its log
        fill(store)
        killed = tmp_path / "killed"
        snapshot(data_dir, killed, (DB_NAME, f"{DB_NAME}-shm", SIDECAR_NAME))
        store.close()
        Storage(killed).close()
        (line,) = events(logged, "storage.lost")
        assert "holds no store id" in line["reason"]
        assert line["held"] in ("no tables (nothing had reached the main file)", "unreadable")

    @pytest.mark.parametrize("killed", [False, True], ids=["stopped", "killed"])
    def test_an_emptied_file_is_seen(
        self,
        data_dir: Path,
        tmp_path: Path,
        logged: list[logging.LogRecord],
        killed: bool,
    ) -> None:
        store = Storage(data_dir)
        fill(store)
        if killed:
            where = tmp_path / "killed"
            snapshot(data_dir, where, (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", SIDECAR_NAME))
            store.close()
        else:
            store.close()
            where = data_dir
        (where / DB_NAME).write_bytes(b"")
        again = Storage(where)
        try:
            assert again.load_desired_status() is None
        finally:
            again.close()
        (line,) = events(logged, "storage.lost")
        assert "empty (0 bytes)" in line["reason"]
        assert line["held"] == "empty (0 bytes)"
        assert DB_NAME in line["moved"] and SIDECAR_NAME in line["moved"]
        assert (f"{DB_NAME}-wal" in line["moved"]) == killed

    def test_a_missing_file_is_seen(self, data_dir: Path, logged: list[logging.LogRecord]) -> None:
        store = Storage(data_dir)
        fill(store)
        store.close()
        (data_dir / DB_NAME).unlink()
        Storage(data_dir).close()
        (line,) = events(logged, "storage.lost")
        assert "missing" in line["reason"]
        assert line["moved"] == [SIDECAR_NAME]

    def test_a_file_of_another_store_is_seen(
        self, data_dir: Path, tmp_path: Path, logged: list[logging.LogRecord]
    ) -> None:
        Storage(data_dir).close()
        other = tmp_path / "other"
        store = Storage(other)
        fill(store)
        store.close()
        shutil.copy2(other / DB_NAME, data_dir / DB_NAME)
        Storage(data_dir).close()
        (line,) = events(logged, "storage.lost")
        assert "the file was replaced" in line["reason"]
        assert {k: line["held"][k] for k in HELD} == HELD

    def test_a_cut_after_the_file_was_moved_but_not_its_sidecar_recovers(
        self, data_dir: Path, logged: list[logging.LogRecord]
    ) -> None:
        store = Storage(data_dir)
        fill(store)
        store.close()
        (data_dir / DB_NAME).rename(data_dir / f"{DB_NAME}.lost-1")  # the sidecar stayed
        Storage(data_dir).close()
        assert "missing" in events(logged, "storage.lost")[0]["reason"]
        logged.clear()
        Storage(data_dir).close()
        assert not events(logged, "storage.lost"), "the new store is trusted from then on"


class TestDamage:
    @staticmethod
    def clean_file(data_dir: Path) -> bytes:
        store = Storage(data_dir)
        fill(store)
        for n in range(300):
            store.record_blob(BlobRecord(f"sha256:{n + 10:064x}", n, n, 1.0))
        store.close()
        return (data_dir / DB_NAME).read_bytes()

    def test_garbage_on_any_page_never_escapes_as_a_sqlite_error(
        self, data_dir: Path, tmp_path: Path
    ) -> None:
        raw = self.clean_file(data_dir)
        sidecar = (data_dir / SIDECAR_NAME).read_bytes()
        assert len(raw) >= 8 * 4096
        for n, offset in enumerate(range(0, len(raw), 4096)):
            where = tmp_path / f"page-{n}"
            where.mkdir()
            damaged = bytearray(raw)
            damaged[offset : offset + 4096] = bytes((i * 37 + n) % 251 for i in range(4096))
            (where / DB_NAME).write_bytes(bytes(damaged))
            (where / SIDECAR_NAME).write_bytes(sidecar)
            try:
                reader = Storage(where, read_only=True)
            except StorageError:
                pass
            else:
                reader.close()
            store = Storage(where)  # never raises: moved aside, or (free page) kept
            try:
                store.save_desired_status(b"{}")
                assert store.schema_version == SCHEMA_VERSION
            finally:
                store.close()

    def test_the_corrupt_line_says_what_the_file_held_or_that_it_was_unreadable(
        self, data_dir: Path, logged: list[logging.LogRecord]
    ) -> None:
        raw = bytearray(self.clean_file(data_dir))
        middle = (len(raw) // 2) & ~4095
        raw[middle : middle + 8192] = b"\xa5" * 8192
        (data_dir / DB_NAME).write_bytes(bytes(raw))
        Storage(data_dir).close()
        (line,) = events(logged, "storage.corrupt")
        assert line["moved"] == [DB_NAME, SIDECAR_NAME]
        assert line["reason"]
        held = line["held"]
        assert held == "unreadable" or set(HELD) <= set(held)
        (moved,) = aside(data_dir, "corrupt")
        assert moved.read_bytes() == bytes(raw), "kept for a post-mortem"

    def test_a_header_overwritten_is_unreadable(
        self, data_dir: Path, logged: list[logging.LogRecord]
    ) -> None:
        raw = bytearray(self.clean_file(data_dir))
        raw[0:4096] = b"\x00" * 4096
        (data_dir / DB_NAME).write_bytes(bytes(raw))
        Storage(data_dir).close()
        (line,) = events(logged, "storage.corrupt")
        assert line["held"] == "unreadable"

    def test_a_reader_gets_one_storage_error_for_a_damaged_or_lost_store(
        self, data_dir: Path
    ) -> None:
        raw = bytearray(self.clean_file(data_dir))
        middle = (len(raw) // 2) & ~4095
        raw[middle : middle + 8192] = b"\xa5" * 8192
        (data_dir / DB_NAME).write_bytes(bytes(raw))
        with pytest.raises(StorageError, match="damaged") as info:
            Storage(data_dir, read_only=True)
        assert "\n" not in info.value.message
        (data_dir / DB_NAME).unlink()
        Storage(data_dir).close()  # a new store, its sidecar
        body = orjson.loads((data_dir / SIDECAR_NAME).read_bytes())
        body["generation"] += 5
        (data_dir / SIDECAR_NAME).write_bytes(orjson.dumps(body))
        with pytest.raises(StorageError, match="lost committed state"):
            Storage(data_dir, read_only=True)


class TestFullDisk:
    def test_a_write_on_a_full_disk_is_no_memory_and_the_store_goes_on(
        self, data_dir: Path
    ) -> None:
        store = Storage(data_dir)
        try:
            store.save_desired_status(b"kept")
            (pages,) = store.db.execute_sql("PRAGMA page_count").fetchone()
            store.db.execute_sql(f"PRAGMA max_page_count = {pages}")  # SQLite's "disk is full"
            with pytest.raises(StorageError) as info:
                store.save_desired_status(b"x" * 100_000)
            assert info.value.code == AosCode.NO_MEMORY
            assert "no space left" in info.value.message
            assert "store the desired status" in info.value.message
            assert "rollback" not in info.value.message
            assert store.load_desired_status() == b"kept"
            store.db.execute_sql("PRAGMA max_page_count = 1000000")
            store.save_desired_status(b"x" * 100_000)
            assert store.load_desired_status() == b"x" * 100_000
        finally:
            store.close()


class TestReader:
    def test_a_store_still_being_made_is_one_storage_error(self, data_dir: Path) -> None:
        """Its meta table comes first, its other tables with schema version 1: a reader in
        between gets a StorageError, never SQLite's "no such table"."""
        data_dir.mkdir(parents=True)
        db = peewee.SqliteDatabase(str(data_dir / DB_NAME), pragmas={"journal_mode": "wal"})
        db.execute_sql("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.close()
        with pytest.raises(StorageError, match="no tables yet"):
            Storage(data_dir, read_only=True)

    def test_an_empty_file_without_a_sidecar_is_one_storage_error(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True)
        (data_dir / DB_NAME).write_bytes(b"")
        with pytest.raises(StorageError, match="cannot read the store"):
            Storage(data_dir, read_only=True)


def test_a_new_store_begins_its_sequence_past_the_clock(tmp_path: Path) -> None:
    """A start cut right after a store was moved aside finds no store and no sidecar: the new
    store cannot know the old one's numbers, so it begins past the clock's milliseconds."""
    before = int(time.time() * 1000)
    store = Storage(tmp_path / "fresh")
    try:
        assert store.reserve_seq(1) >= before
    finally:
        store.close()
