"""The one implementation of every component's storage Protocol. Components never see SQL.

Every write is one short transaction (`BEGIN IMMEDIATE`), never spanning an await. A write that
SQLite refuses raises a StorageError naming what was not stored and why: noMemory when the disk
is full (SQLite has then rolled the transaction back by itself), so that a desired status that
cannot be stored is nacked with aosCode 3 and what runs keeps running.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from statemachine import DurableMachine, Graph

from ..cm.communication.interfaces import OutboxEntry
from ..cm.imagemanager.interfaces import BlobRecord, ItemRecord
from ..cm.launcher.interfaces import InstanceRecord
from ..cm.updatemanager.interfaces import UnitConfigRecord
from ..logs import get_logger
from ..nodes import InstanceKey
from ..protocol import ErrorInfo, InstanceState, ItemState, UnitConfigState
from .database import open_database, open_readonly
from .names import DB_NAME
from .sqlerrors import DB_ERRORS, translated

log = get_logger("storage")


def _error_out(error: ErrorInfo | None) -> bytes | None:
    if error is None:
        return None
    return orjson.dumps([error.aos_code, error.exit_code, error.message])


def _error_in(raw: bytes | memoryview | None) -> ErrorInfo | None:
    if raw is None:
        return None
    code, exit_code, message = orjson.loads(bytes(raw))
    return ErrorInfo(aos_code=code, exit_code=exit_code, message=message)


_INSTALLED_ROW = 1
_REFUSED_ROW = 2  # the last refused unit config, kept beside the installed one


class Storage:
    """The agent's store: one SQLite file in `data_dir`.

    Implements ImageStorage, LauncherStorage, UpdateStorage and SequenceStorage.
    """

    def __init__(self, data_dir: Path, *, read_only: bool = False) -> None:
        self.data_dir = data_dir
        self.db, m = open_readonly(data_dir) if read_only else open_database(data_dir)
        self._meta = m["Meta"]
        self._desired = m["DesiredStatusRow"]
        self._item = m["ItemRow"]
        self._blob = m["BlobRow"]
        self._instance = m["InstanceRow"]
        self._unit_config = m["UnitConfigRow"]
        self._node = m["NodeRow"]
        self._outbox = m["OutboxRow"]
        self._health = m["LinkHealthRow"]

    def close(self) -> None:
        """Close the file (the last connection checkpoints the log into it); never raises."""
        try:
            self.db.close()
        except DB_ERRORS as exc:
            log.warning(
                "storage.close_failed",
                path=str(self.data_dir / DB_NAME),
                error=str(exc),
                next="the log is checkpointed at the next open",
            )

    def machine(self, name: str, graph: Graph) -> DurableMachine:
        """The durable machine `name` of `graph`, kept in this store (its phase and journal)."""
        return DurableMachine(name, graph, self.db)

    @contextmanager
    def _tx(self, doing: str) -> Iterator[None]:
        """One write transaction; SQLite's refusal becomes a StorageError saying what was not
        done (noMemory on a full disk)."""
        with translated(self.data_dir / DB_NAME, doing), self.db.atomic("IMMEDIATE"):
            yield

    @property
    def schema_version(self) -> int:
        return int(self._meta.get(self._meta.key == "schema_version").value)

    # update manager

    def save_desired_status(self, body: bytes) -> None:
        with self._tx("store the desired status"):
            self._desired.insert(
                id=1, body=body, received_at=time.time()
            ).on_conflict_replace().execute()

    def load_desired_status(self) -> bytes | None:
        row = self._desired.get_or_none(self._desired.id == 1)
        return None if row is None else bytes(row.body)

    def set_node_states(self, states: dict[str, str]) -> None:
        with self._tx("store the node states"):
            self._node.delete().execute()
            for node, state in sorted(states.items()):
                self._node.create(node=node, state=state)

    def node_states(self) -> dict[str, str]:
        return {r.node: r.state for r in self._node.select()}

    def save_unit_config(self, record: UnitConfigRecord) -> None:
        """Keep an installed config (the last refused one is forgotten), or a refused one
        beside the installed one, which stays in force."""
        with self._tx("store the unit config"):
            failed = record.state == UnitConfigState.FAILED
            self._unit_config.insert(
                id=_REFUSED_ROW if failed else _INSTALLED_ROW,
                version=record.version,
                state=record.state.value,
                body=record.body,
                error=_error_out(record.error),
            ).on_conflict_replace().execute()
            if not failed:
                self._unit_config.delete().where(self._unit_config.id == _REFUSED_ROW).execute()

    def _unit_config_row(self, row_id: int) -> UnitConfigRecord | None:
        row = self._unit_config.get_or_none(self._unit_config.id == row_id)
        if row is None:
            return None
        return UnitConfigRecord(
            version=row.version,
            state=UnitConfigState(row.state),
            body=None if row.body is None else bytes(row.body),
            error=_error_in(row.error),
        )

    def unit_config(self) -> UnitConfigRecord | None:
        """The unit config in force (installed), if any."""
        record = self._unit_config_row(_INSTALLED_ROW)
        return None if record is None or record.state == UnitConfigState.FAILED else record

    def unit_configs(self) -> list[UnitConfigRecord]:
        """What the unit status reports: the installed config, then the last refused one."""
        rows = (self._unit_config_row(_INSTALLED_ROW), self._unit_config_row(_REFUSED_ROW))
        return [r for r in rows if r is not None]

    def reserve_seq(self, block: int) -> int:
        """Reserve `block` sequence numbers; returns the first. Numbers never repeat."""
        with self._tx("reserve sequence numbers"):
            row = self._meta.get_or_none(self._meta.key == "seq_next")
            start = int(row.value) if row else 1
            self._meta.insert(
                key="seq_next", value=str(start + block)
            ).on_conflict_replace().execute()
        return start

    # cloud link

    def outbox_append(
        self,
        txn: str,
        message_type: str,
        frame: bytes,
        created_at: float,
        seq: int | None,
        delete: Sequence[str],
    ) -> int:
        """Store one message to the cloud and drop the `delete` ones, in one transaction."""
        with self._tx(f"queue a {message_type} for the cloud"):
            if delete:
                self._delete_outbox(delete)
            # One prepared statement rather than a query built per status: this is the hot
            # path of every message the unit sends (scripts/bench outbox).
            cursor = self.db.execute_sql(
                "INSERT INTO outbox (txn, message_type, frame, created_at, seq)"
                " VALUES (?, ?, ?, ?, ?)",
                (txn, message_type, frame, created_at, seq),
            )
        return int(cursor.lastrowid)

    def outbox_delete(self, txns: Sequence[str]) -> None:
        """Forget acknowledged messages, in one transaction."""
        with self._tx("forget acknowledged messages"):
            self._delete_outbox(txns)

    def record_health(self, at: float, health: str, reason: str, keep: int) -> None:
        """Keep one change of the link's health, and only the last `keep` of them."""
        with self._tx("store the link's health"):
            row_id = self._health.insert(at=at, health=health, reason=reason[:500]).execute()
            self._health.delete().where(self._health.id <= row_id - keep).execute()

    def health_history(self) -> list[tuple[float, str, str]]:
        """The link's kept health changes, oldest first: (wall time, health, reason)."""
        return [(r.at, r.health, r.reason) for r in self._health.select().order_by(self._health.id)]

    def _delete_outbox(self, txns: Sequence[str]) -> None:
        for start in range(0, len(txns), 500):  # within SQLite's bound-variable limit
            batch = list(txns[start : start + 500])
            self._outbox.delete().where(self._outbox.txn.in_(batch)).execute()

    def outbox_entries(self) -> list[OutboxEntry]:
        return [
            OutboxEntry(r.id, r.txn, r.message_type, bytes(r.frame), r.created_at, r.seq)
            for r in self._outbox.select().order_by(self._outbox.id)
        ]

    # image manager

    def upsert_item(self, record: ItemRecord) -> None:
        with self._tx("store the item record"):
            self._item.insert(
                item_id=record.item_id,
                version=record.version,
                item_type=record.item_type,
                index_digest=record.index_digest,
                state=record.state.value,
                error=_error_out(record.error),
                updated_at=time.time(),
            ).on_conflict_replace().execute()

    @staticmethod
    def _item_record(r: Any) -> ItemRecord:
        return ItemRecord(
            item_id=r.item_id,
            version=r.version,
            item_type=r.item_type,
            index_digest=r.index_digest,
            state=ItemState(r.state),
            error=_error_in(r.error),
        )

    def items(self) -> list[ItemRecord]:
        rows = self._item.select().order_by(self._item.item_id, self._item.version)
        return [self._item_record(r) for r in rows]

    def item(self, item_id: str, version: str) -> ItemRecord | None:
        t = self._item
        row = t.get_or_none((t.item_id == item_id) & (t.version == version))
        return None if row is None else self._item_record(row)

    def delete_item(self, item_id: str, version: str) -> None:
        with self._tx("delete the item record"):
            self._item.delete().where(
                (self._item.item_id == item_id) & (self._item.version == version)
            ).execute()

    def record_blob(self, record: BlobRecord) -> None:
        with self._tx("store the blob record"):
            self._blob.insert(
                digest=record.digest,
                size=record.size,
                mtime_ns=record.mtime_ns,
                verified_at=record.verified_at,
            ).on_conflict_replace().execute()

    @staticmethod
    def _blob_record(r: Any) -> BlobRecord:
        return BlobRecord(r.digest, r.size, r.mtime_ns, r.verified_at)

    def blob(self, digest: str) -> BlobRecord | None:
        row = self._blob.get_or_none(self._blob.digest == digest)
        return None if row is None else self._blob_record(row)

    def blobs(self) -> list[BlobRecord]:
        return [self._blob_record(r) for r in self._blob.select().order_by(self._blob.digest)]

    def delete_blob(self, digest: str) -> None:
        with self._tx("delete the blob record"):
            self._blob.delete().where(self._blob.digest == digest).execute()

    def item_updated_at(self, item_id: str, version: str) -> float | None:
        """When the item's record last changed (a removed item's TTL counts from there)."""
        t = self._item
        row = t.get_or_none((t.item_id == item_id) & (t.version == version))
        return None if row is None else float(row.updated_at)

    # launcher

    def _instance_fields(self, r: InstanceRecord) -> dict:
        return {
            "item_id": r.key.item_id,
            "subject_id": r.key.subject_id,
            "instance": r.key.instance,
            "item_type": r.item_type,
            "version": r.version,
            "node": r.node,
            "priority": r.priority,
            "state": r.state.value,
            "error": _error_out(r.error),
            "updated_at": time.time(),
        }

    def replace_instances(self, records: list[InstanceRecord], placed: str | None = None) -> None:
        """Replace the placement; with `placed`, the desired status it was made from (JSON)
        in the same transaction, so the two never disagree after a cut."""
        with self._tx("store the placement"):
            self._instance.delete().execute()
            for r in records:
                self._instance.insert(**self._instance_fields(r)).execute()
            if placed is not None:
                self._meta.insert(key="placed", value=placed).on_conflict_replace().execute()

    def placed(self) -> str | None:
        """The desired status (JSON) the stored placement was made from, if any."""
        row = self._meta.get_or_none(self._meta.key == "placed")
        return None if row is None else str(row.value)

    def update_instances(self, records: list[InstanceRecord]) -> None:
        with self._tx("store the instance states"):
            for r in records:
                self._instance.insert(**self._instance_fields(r)).on_conflict_replace().execute()

    def instances(self) -> list[InstanceRecord]:
        t = self._instance
        rows = t.select().order_by(t.item_id, t.subject_id, t.instance)
        return [
            InstanceRecord(
                key=InstanceKey(r.item_id, r.subject_id, r.instance),
                item_type=r.item_type,
                version=r.version,
                node=r.node,
                priority=r.priority,
                state=InstanceState(r.state),
                error=_error_in(r.error),
            )
            for r in rows
        ]
