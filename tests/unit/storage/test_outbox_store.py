"""The cloud link's outbox in the real SQLite store: order and content survive closing and
reopening, `delete=` goes in the append's transaction, and a version 3 store gains an empty
outbox when it is migrated."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from aoscore_py.cm.communication.interfaces import OutboxEntry
from aoscore_py.errors import StorageError
from aoscore_py.storage import DB_NAME, SCHEMA_VERSION, Storage, database

from .test_storage import reopen


def contents(entries: list[OutboxEntry]) -> list[tuple[str, str, bytes, float, int | None]]:
    return [(e.txn, e.message_type, e.frame, e.created_at, e.seq) for e in entries]


def tables(data_dir: Path) -> set[str]:
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        rows = conn.execute("select name from sqlite_master where type = 'table'").fetchall()
    return {name for (name,) in rows}


class TestOutbox:
    def test_entries_keep_their_order_and_bytes_across_a_reopen(self, store: Storage) -> None:
        frames = {"t-b": b"\x00\xffbinary", "t-a": b'{"messageType":"unitStatus"}', "t-c": b""}
        ids = [
            store.outbox_append("t-b", "requestBlobUrls", frames["t-b"], 1.5, None, ()),
            store.outbox_append("t-a", "unitStatus", frames["t-a"], 2.25, 41, ()),
            store.outbox_append("t-c", "unitStatus", frames["t-c"], 3.0, 42, ()),
        ]
        assert ids == sorted(ids), "ids give the append order"
        store = reopen(store)
        try:
            assert contents(store.outbox_entries()) == [
                ("t-b", "requestBlobUrls", frames["t-b"], 1.5, None),
                ("t-a", "unitStatus", frames["t-a"], 2.25, 41),
                ("t-c", "unitStatus", frames["t-c"], 3.0, 42),
            ]
            assert [e.id for e in store.outbox_entries()] == ids
        finally:
            store.close()

    def test_a_delete_is_kept_and_the_rest_keep_their_order(self, store: Storage) -> None:
        for n in range(5):
            store.outbox_append(f"t-{n}", "unitStatus", b"x", float(n), n, ())
        store.outbox_delete(["t-1", "t-3"])
        store.outbox_delete([])
        store = reopen(store)
        try:
            assert [e.txn for e in store.outbox_entries()] == ["t-0", "t-2", "t-4"]
        finally:
            store.close()

    def test_a_new_entry_after_a_reopen_comes_after_the_old_ones(self, store: Storage) -> None:
        store.outbox_append("t-1", "unitStatus", b"1", 1.0, 1, ())
        store.outbox_append("t-2", "unitStatus", b"2", 2.0, 2, ())
        store.outbox_delete(["t-2"])  # the newest row gone: its id must not come back first
        store = reopen(store)
        try:
            store.outbox_append("t-3", "unitStatus", b"3", 3.0, 3, ())
            assert [e.txn for e in store.outbox_entries()] == ["t-1", "t-3"]
        finally:
            store.close()

    def test_delete_names_txns_dropped_with_the_append(self, store: Storage) -> None:
        store.outbox_append("s-1", "unitStatus", b"1", 1.0, 1, ())
        store.outbox_append("b-1", "requestBlobUrls", b"b", 2.0, None, ())
        store.outbox_append("s-2", "unitStatus", b"2", 3.0, 2, ())
        store.outbox_append("s-3", "unitStatus", b"full", 4.0, 3, ["s-1", "s-2", "not-here"])
        assert [e.txn for e in store.outbox_entries()] == ["b-1", "s-3"]

    def test_a_refused_append_deletes_nothing(self, store: Storage) -> None:
        """One transaction: when the insert fails (here a txn stored twice), the deletes named
        with it are rolled back too."""
        store.outbox_append("s-1", "unitStatus", b"1", 1.0, 1, ())
        store.outbox_append("s-2", "unitStatus", b"2", 2.0, 2, ())
        with pytest.raises(StorageError):
            store.outbox_append("s-2", "unitStatus", b"again", 3.0, 3, ["s-1"])
        assert contents(store.outbox_entries()) == [
            ("s-1", "unitStatus", b"1", 1.0, 1),
            ("s-2", "unitStatus", b"2", 2.0, 2),
        ]

    def test_many_deletes_at_once(self, store: Storage) -> None:
        """More txns than SQLite takes as bound variables in one statement."""
        txns = [f"t-{n}" for n in range(1200)]
        for txn in txns:
            store.outbox_append(txn, "unitStatus", b"x", 0.0, None, ())
        store.outbox_append("last", "unitStatus", b"x", 0.0, None, txns[:600])
        store.outbox_delete(txns[600:])
        assert [e.txn for e in store.outbox_entries()] == ["last"]


class TestMigration:
    def test_a_version_3_store_migrates_with_an_empty_outbox_and_health(
        self, data_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        assert SCHEMA_VERSION == 5
        # A store as the agent before the outbox made it: the first three migrations, and no
        # outbox or link_health table (version 1 creates the tables of today's models, so they
        # are dropped).
        with monkeypatch.context() as m:
            m.setattr(database, "MIGRATIONS", database.MIGRATIONS[:3])
            m.setattr(database, "SCHEMA_VERSION", 3)
            old = Storage(data_dir)
            assert old.schema_version == 3
            old.save_desired_status(b'{"messageType":"desiredStatus"}')
            first_seq = old.reserve_seq(10)
            old.close()
        with sqlite3.connect(data_dir / DB_NAME) as conn:
            conn.execute("drop table outbox")
            conn.execute("drop table link_health")
        assert not {"outbox", "link_health"} & tables(data_dir)

        store = Storage(data_dir)
        try:
            assert store.schema_version == 5
            assert store.outbox_entries() == []
            assert store.health_history() == []
            assert store.load_desired_status() == b'{"messageType":"desiredStatus"}'
            assert store.reserve_seq(1) == first_seq + 10, "numbers still only grow"
            store.outbox_append("t-1", "unitStatus", b"x", 1.0, 1, ())
            assert [e.txn for e in store.outbox_entries()] == ["t-1"]
        finally:
            store.close()
        assert {"outbox", "link_health"} <= tables(data_dir)


class TestHealthHistory:
    def test_the_last_changes_are_kept_across_reopening(self, data_dir: Path) -> None:
        store = Storage(data_dir)
        for n in range(10):
            store.record_health(float(n), "degraded", f"failure {n}", keep=4)
        store.close()
        store = Storage(data_dir)
        try:
            assert store.health_history() == [
                (float(n), "degraded", f"failure {n}") for n in range(6, 10)
            ], "the newest four, oldest first"
        finally:
            store.close()
