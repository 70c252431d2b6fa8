"""The unit's answer to each desired status the cloud sent is recorded with that status's seq:
an ack or a nack, once, against the txn the cloud sent it under; other acks (of blob URLs) are
not; and a cloud file of schema 1 gains the table on open."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from aoscore_py.cloud import db
from aoscore_py.cloud.server import CloudServer
from aoscore_py.cloud.state import CloudState
from aoscore_py.protocol import Ack, Envelope, ErrorInfo, Nack, dump_frame, new_header

UNIT = "unit-a"
DESIRED = b'{"messageType": "desiredStatus", "seq": 7}'


def _frame(message: Ack | Nack, txn: str) -> bytes:
    return dump_frame(Envelope(new_header(UNIT, txn=txn), message))


class TestAnswers:
    def test_a_polled_unit_s_ack_is_recorded_with_the_desired_seq(self, tmp_path: Path) -> None:
        state = CloudState(tmp_path)
        state.save_desired(UNIT, DESIRED)
        server = CloudServer(state, "http://127.0.0.1:1")
        polled = server.poll_desired(UNIT)
        assert polled is not None
        asyncio.run(server.poll_messages(UNIT, [_frame(Ack(), polled.txn)]))
        answers = state.answers(UNIT)
        assert [(a["seq"], a["txn"], a["ok"]) for a in answers] == [(7, polled.txn, True)]

    def test_a_nack_is_recorded_with_its_reason_and_an_unknown_txn_is_not(
        self, tmp_path: Path
    ) -> None:
        state = CloudState(tmp_path)
        state.save_desired(UNIT, DESIRED)
        server = CloudServer(state, "http://127.0.0.1:1")
        polled = server.poll_desired(UNIT)
        assert polled is not None
        nack = Nack(retry_after=0, error_info=ErrorInfo(1, 0, "bad item"))
        frames = [_frame(Ack(), "not-a-desired-txn"), _frame(nack, polled.txn)]
        asyncio.run(server.poll_messages(UNIT, frames))
        answers = state.answers(UNIT)
        assert [(a["seq"], a["ok"], a["error"]) for a in answers] == [(7, False, "bad item")]

    def test_a_resent_ack_is_recorded_once(self, tmp_path: Path) -> None:
        state = CloudState(tmp_path)
        state.save_desired(UNIT, DESIRED)
        server = CloudServer(state, "http://127.0.0.1:1")
        polled = server.poll_desired(UNIT)
        assert polled is not None
        asyncio.run(server.poll_messages(UNIT, [_frame(Ack(), polled.txn)] * 2))
        assert len(state.answers(UNIT)) == 1

    def test_desired_seqs_lists_every_stored_status_oldest_first(self, tmp_path: Path) -> None:
        state = CloudState(tmp_path)
        state.save_desired(UNIT, b'{"seq": 1}')
        state.save_desired(UNIT, b'{"seq": 2}')
        assert [seq for seq, _ in state.desired_seqs(UNIT)] == [1, 2]


class TestSchema:
    def test_a_schema_1_file_gains_the_answers_table_and_keeps_its_rows(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / db.DB_FILE
        old = sqlite3.connect(path)
        old.executescript(db._SCHEMA)
        old.execute("INSERT INTO desired (unit, seq, stored_at, body) VALUES ('u', 3, 0, x'7b7d')")
        old.execute("PRAGMA user_version = 1")
        old.commit()
        old.close()
        state = CloudState(tmp_path)
        assert [seq for seq, _ in state.desired_seqs("u")] == [3]
        state.record_answer("u", 3, "t1", True)
        assert state.answers("u")[0]["seq"] == 3
        with state._conn() as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
