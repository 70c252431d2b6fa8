"""Storage: one SQLite file that survives restarts, refuses the future and recovers from garbage."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import peewee
import pytest

from aoscore_py.cm.imagemanager.interfaces import BlobRecord, ItemRecord
from aoscore_py.cm.launcher.interfaces import InstanceRecord
from aoscore_py.cm.updatemanager.interfaces import UnitConfigRecord
from aoscore_py.errors import StorageError
from aoscore_py.nodes import InstanceKey
from aoscore_py.protocol import ErrorInfo, InstanceState, ItemState, UnitConfigState
from aoscore_py.storage import DB_NAME, SCHEMA_VERSION, Storage, database

DIGEST = "sha256:" + "c" * 64


def reopen(store: Storage) -> Storage:
    store.close()
    return Storage(store.data_dir)


def schema_version_on_disk(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        (value,) = conn.execute("select value from meta where key = 'schema_version'").fetchone()
    return int(value)


class TestSchema:
    def test_a_fresh_store_records_the_current_schema_version(
        self, store: Storage, data_dir: Path
    ) -> None:
        assert store.schema_version == SCHEMA_VERSION
        assert schema_version_on_disk(data_dir) == SCHEMA_VERSION
        assert (data_dir / DB_NAME).is_file()

    def test_reopening_does_not_migrate_again(
        self, data_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        Storage(data_dir).close()
        calls: list[int] = []

        def counted(index: int):
            original = database.MIGRATIONS[index]

            def run(db, bound) -> None:
                calls.append(index)
                original(db, bound)

            return run

        monkeypatch.setattr(
            database, "MIGRATIONS", tuple(counted(i) for i in range(len(database.MIGRATIONS)))
        )
        again = Storage(data_dir)
        try:
            assert calls == []
            assert again.schema_version == SCHEMA_VERSION
        finally:
            again.close()

    def test_a_fresh_store_runs_every_migration_once_in_order(
        self, data_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        calls: list[int] = []
        originals = database.MIGRATIONS

        def counted(index: int):
            def run(db, bound) -> None:
                calls.append(index)
                originals[index](db, bound)

            return run

        monkeypatch.setattr(
            database, "MIGRATIONS", tuple(counted(i) for i in range(len(originals)))
        )
        Storage(data_dir).close()
        assert calls == list(range(SCHEMA_VERSION))

    def test_a_newer_schema_is_refused_and_left_untouched(
        self, store: Storage, data_dir: Path
    ) -> None:
        store.save_desired_status(b"{}")
        store.close()
        with sqlite3.connect(data_dir / DB_NAME) as conn:
            conn.execute(
                "update meta set value = ? where key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
            )
        with pytest.raises(StorageError) as info:
            Storage(data_dir)
        assert str(SCHEMA_VERSION + 1) in info.value.message
        assert "newer" in info.value.message
        # not "recovered" by moving it aside: a newer agent's data must survive a downgrade
        assert not list(data_dir.glob(f"{DB_NAME}.corrupt-*"))
        assert schema_version_on_disk(data_dir) == SCHEMA_VERSION + 1
        with sqlite3.connect(data_dir / DB_NAME) as conn:
            assert conn.execute("select count(*) from desired_status").fetchone() == (1,)


class TestCorruption:
    def test_a_garbage_file_is_moved_aside_and_a_fresh_store_made(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True)
        garbage = b"this is not an sqlite database\x00" * 300
        (data_dir / DB_NAME).write_bytes(garbage)
        store = Storage(data_dir)
        try:
            assert store.schema_version == SCHEMA_VERSION
            assert store.load_desired_status() is None
            store.save_desired_status(b"new")
            assert store.load_desired_status() == b"new"
        finally:
            store.close()
        (aside,) = data_dir.glob(f"{DB_NAME}.corrupt-*")
        assert aside.read_bytes() == garbage, "the damaged file is kept for a post-mortem"

    def test_a_damaged_page_is_moved_aside(self, data_dir: Path) -> None:
        store = Storage(data_dir)
        for n in range(200):
            store.record_blob(BlobRecord(f"sha256:{n:064x}", n, n, 1.0))
        store.close()
        path = data_dir / DB_NAME
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        raw = bytearray(path.read_bytes())
        assert len(raw) > 3 * 4096
        raw[4096 + 100 : 3 * 4096] = b"\xa5" * (3 * 4096 - 4096 - 100)  # keep the header page
        path.write_bytes(bytes(raw))
        again = Storage(data_dir)
        try:
            assert again.schema_version == SCHEMA_VERSION
            assert again.blob("sha256:" + "0" * 64) is None
        finally:
            again.close()
        assert len(list(data_dir.glob(f"{DB_NAME}.corrupt-*"))) == 1

    def test_a_locked_store_is_refused_and_left_untouched(
        self, data_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = Storage(data_dir)
        store.save_desired_status(b'{"messageType":"desiredStatus"}')
        store.close()
        monkeypatch.setattr(database, "BUSY_TIMEOUT_S", 0.05)
        holder = sqlite3.connect(data_dir / DB_NAME, isolation_level=None)
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
        try:
            with pytest.raises(StorageError, match="cannot open the store"):
                Storage(data_dir)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert not list(data_dir.glob(f"{DB_NAME}.corrupt-*")), "nothing was moved aside"
        again = Storage(data_dir)
        try:
            assert again.load_desired_status() == b'{"messageType":"desiredStatus"}'
        finally:
            again.close()


class TestPragmas:
    def test_wal_and_synchronous_full(self, store: Storage) -> None:
        assert store.db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.db.execute_sql("PRAGMA synchronous").fetchone()[0] == 2
        assert store.db.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1


class TestRoundTrips:
    def test_desired_status_replaces_the_previous_one(self, store: Storage) -> None:
        assert store.load_desired_status() is None
        store.save_desired_status(b'{"a":1}')
        store.save_desired_status(b'{"b":2}')
        assert reopen(store).load_desired_status() == b'{"b":2}'

    def test_items(self, store: Storage) -> None:
        failed = ItemRecord(
            "svc", "1.0", "service", DIGEST, ItemState.FAILED, ErrorInfo(10, 0, "x")
        )
        pending = ItemRecord("svc", "2.0", "service", DIGEST, ItemState.PENDING)
        other = ItemRecord("alpha", "1.0", "layer", DIGEST, ItemState.INSTALLED)
        for r in (pending, failed, other):
            store.upsert_item(r)
        store = reopen(store)
        try:
            assert store.items() == [other, failed, pending]
            installed = ItemRecord("svc", "1.0", "service", DIGEST, ItemState.INSTALLED)
            store.upsert_item(installed)
            store.delete_item("svc", "2.0")
            store.delete_item("nothing", "1")
            assert store.items() == [other, installed]
        finally:
            store.close()

    def test_blobs(self, store: Storage) -> None:
        assert store.blob(DIGEST) is None
        record = BlobRecord(DIGEST, 1234, 1_700_000_000_123_456_789, 1_700_000_001.5)
        store.record_blob(record)
        store = reopen(store)
        try:
            assert store.blob(DIGEST) == record
            assert store.blobs() == [record]
            store.delete_blob(DIGEST)
            assert store.blob(DIGEST) is None
            assert store.blobs() == []
        finally:
            store.close()

    def test_a_version_1_store_gains_blob_mtimes(self, data_dir: Path) -> None:
        """A store written by the first schema opens with its blob rows kept, mtime 0 (so
        each is checked once more), and the schema moves to the current version."""
        data_dir.mkdir(parents=True, exist_ok=True)
        db = peewee.SqliteDatabase(str(data_dir / DB_NAME))
        db.execute_sql("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute_sql("INSERT INTO meta VALUES ('schema_version', '1')")
        db.execute_sql(
            "CREATE TABLE blob (digest TEXT PRIMARY KEY, size INTEGER NOT NULL, "
            "verified_at REAL NOT NULL)"
        )
        db.execute_sql("INSERT INTO blob VALUES (?, 1234, 5.0)", (DIGEST,))
        db.close()
        store = Storage(data_dir)
        try:
            assert store.schema_version == SCHEMA_VERSION
            assert store.blob(DIGEST) == BlobRecord(DIGEST, 1234, 0, 5.0)
        finally:
            store.close()

    def test_instances_replace_and_update(self, store: Storage) -> None:
        def rec(item: str, n: int, node: str, state=InstanceState.ACTIVATING, error=None):
            return InstanceRecord(
                InstanceKey(item, "subj", n), "service", "1.0", node, 3, state, error
            )

        store.replace_instances([rec("b", 0, "n1"), rec("a", 1, "n2"), rec("a", 0, "n1")])
        store.replace_instances([rec("a", 0, "n1"), rec("c", 0, "n2")])
        failed = rec("c", 0, "n2", InstanceState.FAILED, ErrorInfo(2, 137, "killed"))
        new = rec("d", 0, "n1", InstanceState.ACTIVE)
        store.update_instances([failed, new])
        store = reopen(store)
        try:
            assert store.instances() == [rec("a", 0, "n1"), failed, new]
        finally:
            store.close()

    def test_unit_config(self, store: Storage) -> None:
        assert store.unit_config() is None
        first = UnitConfigRecord("1.0", UnitConfigState.INSTALLED, b'{"v":1}')
        store.save_unit_config(first)
        assert store.unit_config() == first
        bad = UnitConfigRecord("2.0", UnitConfigState.FAILED, None, ErrorInfo(6, 0, "bad labels"))
        store.save_unit_config(bad)
        store = reopen(store)
        try:
            assert store.unit_config() == first, "a refused config leaves the installed one"
            assert store.unit_configs() == [first, bad]
            second = UnitConfigRecord("3.0", UnitConfigState.INSTALLED, b'{"v":3}')
            store.save_unit_config(second)
            assert store.unit_configs() == [second], "installing forgets the refused one"
        finally:
            store.close()

    def test_node_states_are_replaced_as_a_whole(self, store: Storage) -> None:
        assert store.node_states() == {}
        store.set_node_states({"n1": "provisioned", "n2": "paused"})
        store.set_node_states({"n2": "provisioned", "n3": "paused"})
        store = reopen(store)
        try:
            assert store.node_states() == {"n2": "provisioned", "n3": "paused"}
        finally:
            store.close()


class TestSequence:
    def test_reserved_blocks_never_overlap_across_reopen(self, store: Storage) -> None:
        numbers: list[int] = []
        for block in (10, 1, 5):
            start = store.reserve_seq(block)
            numbers += range(start, start + block)
        store = reopen(store)
        try:
            for block in (3, 100):
                start = store.reserve_seq(block)
                numbers += range(start, start + block)
        finally:
            store.close()
        assert len(numbers) == len(set(numbers))
        assert numbers == sorted(numbers), "sequence numbers only grow"
        assert min(numbers) >= 1
