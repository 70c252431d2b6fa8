"""The cloud's state in one SQLite file: statuses recorded once per txn and read per unit
through an index, the unit's view from its last full status on, desired statuses with their
seq, the catalog's repositories kept, and a cloud dir of the previous version imported once."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aoscore_py.cloud.db import DB_FILE
from aoscore_py.cloud.ordering import unit_view
from aoscore_py.cloud.provisioning import Registrar
from aoscore_py.cloud.state import CloudState
from aoscore_py.errors import ConfigError


def _status(seq: int | None, delta: bool = False, **sections: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"messageType": "unitStatus", "isDeltaInfo": delta, "bootId": "b1"}
    if seq is not None:
        body["seq"] = seq
    return {**body, **sections}


class TestStatuses:
    def test_a_resent_txn_is_recorded_once(self, tmp_path: Path) -> None:
        state = CloudState(tmp_path)
        assert state.append_status("u1", "t1", _status(1)) is True
        assert state.append_status("u1", "t1", _status(1)) is False
        assert state.append_status("u2", "t1", _status(1)) is True  # unique per unit
        assert [r["txn"] for r in state.timeline("u1")] == ["t1"]

    def test_a_timeline_record_keeps_its_shape_in_arrival_order(self, tmp_path: Path) -> None:
        state = CloudState(tmp_path)
        state.append_status("u1", "t2", _status(2, delta=True))
        state.append_status("u1", "t1", _status(1))
        records = state.timeline("u1")
        assert [sorted(r) for r in records] == [["receivedAt", "txn", "unitStatus"]] * 2
        assert [r["unitStatus"]["seq"] for r in records] == [2, 1]
        assert state.timeline("nobody") == []

    def test_another_connection_reads_what_was_committed(self, tmp_path: Path) -> None:
        CloudState(tmp_path).append_status("u1", "t1", _status(1))
        assert len(CloudState(tmp_path).timeline("u1")) == 1

    def test_the_file_is_wal_with_full_sync(self, tmp_path: Path) -> None:
        state = CloudState(tmp_path)
        state.units()
        with state._conn() as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL

    @pytest.mark.parametrize(
        ("query", "index"),
        [
            ("SELECT data FROM statuses WHERE unit = 'u' ORDER BY id", "statuses_unit"),
            ("SELECT max(seq) FROM statuses WHERE unit = 'u' AND full = 1", "statuses_full"),
            ("SELECT body FROM desired WHERE unit = 'u' ORDER BY id DESC LIMIT 1", "desired_unit"),
        ],
    )
    def test_per_unit_reads_use_an_index(self, tmp_path: Path, query: str, index: str) -> None:
        state = CloudState(tmp_path)
        state.units()
        with state._conn() as conn:
            plan = " ".join(str(row) for row in conn.execute(f"EXPLAIN QUERY PLAN {query}"))
        assert index in plan

    def test_a_bad_unit_id_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError):
            CloudState(tmp_path).append_status("../x", "t1", _status(1))


class TestView:
    def test_the_view_reads_from_the_last_full_status_on(self, tmp_path: Path) -> None:
        state = CloudState(tmp_path)
        state.append_status("u1", "a", _status(1, items=[{"state": "failed"}]))
        state.append_status("u1", "b", _status(5, items=[{"state": "installed"}]))
        state.append_status("u1", "c", _status(6, delta=True, nodes=[{"state": "paused"}]))
        state.append_status("u1", "d", _status(3, delta=True, nodes=[{"state": "error"}]))
        records = state.view_records("u1")
        assert [r["txn"] for r in records] == ["b", "c"]
        assert unit_view(records) == unit_view(state.timeline("u1"))

    @settings(max_examples=100, deadline=None)
    @given(
        st.lists(
            st.tuples(st.one_of(st.none(), st.integers(0, 8)), st.booleans(), st.integers(0, 3)),
            max_size=12,
        )
    )
    def test_the_view_is_the_whole_timelines(
        self, tmp_path_factory: pytest.TempPathFactory, statuses: list
    ) -> None:
        state = CloudState(tmp_path_factory.mktemp("cloud"))
        for n, (seq, delta, mark) in enumerate(statuses):
            state.append_status("u1", f"t{n}", _status(seq, delta, items=[{"mark": mark}]))
        assert unit_view(state.view_records("u1")) == unit_view(state.timeline("u1"))


class TestUnits:
    def test_desired_statuses_keep_their_seq_and_the_last_wins(self, tmp_path: Path) -> None:
        state = CloudState(tmp_path)
        assert state.desired("u1") is None
        state.save_desired("u1", b'{"messageType":"desiredStatus","seq":1}')
        state.save_desired("u1", b'{"messageType":"desiredStatus","seq":2}')
        assert orjson.loads(state.desired("u1") or b"")["seq"] == 2
        (record,) = state.fleet()
        assert (record.unit, record.desired_seq, record.last_seen) == ("u1", 2, None)

    def test_units_lists_those_heard_from_and_those_given_a_desired_status(
        self, tmp_path: Path
    ) -> None:
        state = CloudState(tmp_path)
        state.append_status("b", "t1", _status(7))
        state.append_status("b", "t2", _status(8, delta=True))
        state.save_desired("a", b"{}")
        assert state.units() == ["a", "b"]
        record = {r.unit: r for r in state.fleet()}["b"]
        assert (record.last_seq, record.statuses, record.last_boot) == (8, 2, "b1")


class TestCatalog:
    def test_repositories_are_kept_latest_first(self, tmp_path: Path) -> None:
        state = CloudState(tmp_path)
        state.add_blobs("alpha", {"sha256:aa": b"layer"})
        state.add_blobs("beta", {"sha256:aa": b"layer"})
        entry = CloudState(tmp_path).catalog()["sha256:aa"]
        assert entry["repositories"] == ["beta", "alpha"] and entry["size"] == 5
        assert len(entry["sha384"]) == 96


class TestOperatorToken:
    def test_made_once_private_and_kept(self, tmp_path: Path) -> None:
        state = CloudState(tmp_path)
        with pytest.raises(ConfigError, match="cloud serve"):
            state.operator_token()
        token = state.ensure_operator_token()
        assert len(token) >= 32 and state.ensure_operator_token() == token
        assert (tmp_path / "operator.token").stat().st_mode & 0o777 == 0o600
        assert CloudState(tmp_path).operator_token() == token


class TestImport:
    def _legacy(self, root: Path) -> None:
        unit = root / "units" / "u1"
        unit.mkdir(parents=True)
        (unit / "desired.json").write_bytes(b'{"messageType":"desiredStatus","seq":4}')
        lines = [
            orjson.dumps({"receivedAt": 1.0, "txn": "t1", "unitStatus": _status(1)}),
            orjson.dumps({"receivedAt": 2.0, "txn": "t2", "unitStatus": _status(2, True)}),
            b'{"receivedAt": 3.0, "txn": "t3", "unitSt',  # torn by a cut
        ]
        (unit / "timeline.jsonl").write_bytes(b"\n".join(lines))
        (root / "catalog.json").write_bytes(orjson.dumps({"sha256:aa": {"repository": "old"}}))
        old = sqlite3.connect(root / "provisioning.db")
        old.execute("CREATE TABLE tokens (hash, created, used, system_id)")
        old.execute("CREATE TABLE units (system_id, provisioned, serial, not_after, certificate)")
        old.execute("INSERT INTO tokens VALUES ('h', 1.0, 2.0, 'unit-1')")
        old.execute("INSERT INTO units VALUES ('unit-1', 2.0, 'ab', 9.0, 'PEM')")
        old.commit()
        old.close()

    def test_a_previous_cloud_dir_is_imported_once(self, tmp_path: Path) -> None:
        self._legacy(tmp_path)
        state = CloudState(tmp_path)
        records = state.timeline("u1")
        assert [(r["receivedAt"], r["txn"]) for r in records] == [(1.0, "t1"), (2.0, "t2")]
        assert orjson.loads(state.desired("u1") or b"")["seq"] == 4
        assert state.catalog() == {"sha256:aa": {"repository": "old"}}
        registrar = Registrar(tmp_path / DB_FILE)
        try:
            assert registrar.is_unit("unit-1")
        finally:
            registrar.close()
        state.close()
        assert len(CloudState(tmp_path).timeline("u1")) == 2  # not imported again
