"""Opening the agent's SQLite file: pragmas, integrity check, schema version, migrations.

One file under the data directory, WAL with `synchronous=FULL` so that each commit survives a
power cut. A file that SQLite cannot read is moved aside and a new one is made (the unit then
re-derives its state from the engines and the cloud) instead of leaving the agent dead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import peewee

from ..errors import StorageError
from ..logs import get_logger
from . import models

log = get_logger("storage")

DB_NAME = "aoscore.db"
PRAGMAS = {"journal_mode": "wal", "synchronous": "full", "foreign_keys": 1}
# How long a statement waits for another connection's lock before it fails.
BUSY_TIMEOUT_S = 5.0


def _v1_initial(db: peewee.Database, bound: dict[str, type[peewee.Model]]) -> None:
    db.create_tables(list(bound.values()), safe=True)


def _v2_blob_mtime(db: peewee.Database, bound: dict[str, type[peewee.Model]]) -> None:
    # A blob is trusted by its record (size and mtime), not by hashing it again; rows from
    # version 1 have no mtime, so they get 0 and are checked once more at their next use.
    # Version 1 creates tables from the current models, so a new store has the column already.
    if "mtime_ns" not in {c.name for c in db.get_columns("blob")}:
        db.execute_sql("ALTER TABLE blob ADD COLUMN mtime_ns INTEGER NOT NULL DEFAULT 0")


Migration = Callable[[peewee.Database, dict[str, type[peewee.Model]]], None]

# MIGRATIONS[i] takes a store from schema version i to i + 1. Append only; never edit one.
MIGRATIONS: tuple[Migration, ...] = (_v1_initial, _v2_blob_mtime)
SCHEMA_VERSION = len(MIGRATIONS)


class _Corrupt(Exception):
    """SQLite says the file is not a database, or its integrity check fails."""


def _connect(path: Path) -> peewee.SqliteDatabase:
    """Open the file and check it.

    Raises:
        _Corrupt: the file is damaged (only then may it be moved aside).
        StorageError: anything else (locked, I/O error, disk full): nothing is touched.
    """
    db = peewee.SqliteDatabase(str(path), pragmas=PRAGMAS, timeout=BUSY_TIMEOUT_S)
    try:
        db.connect()
        row = db.execute_sql("PRAGMA quick_check").fetchone()
    except peewee.OperationalError as exc:
        db.close()
        raise StorageError(f"{path}: cannot open the store ({exc}); it was left as it is") from exc
    except peewee.DatabaseError as exc:
        db.close()
        raise _Corrupt(str(exc)) from exc
    if row is None or row[0] != "ok":
        db.close()
        raise _Corrupt(f"quick_check: {row[0] if row else 'no answer'}")
    return db


def _move_aside(path: Path, reason: str) -> Path:
    aside = path.with_name(f"{path.name}.corrupt-{time.time_ns()}")
    for suffix in ("", "-wal", "-shm"):
        part = Path(str(path) + suffix)
        if part.exists():
            os.replace(part, Path(str(aside) + suffix))
    log.error(
        "storage.corrupt",
        path=str(path),
        moved_to=str(aside),
        reason=reason,
        next="starting with an empty store; state is re-derived from engines and cloud",
    )
    return aside


def open_readonly(data_dir: Path) -> tuple[peewee.SqliteDatabase, dict[str, type[peewee.Model]]]:
    """Open the store in `data_dir` for reading only, as tools and the laboratory do while an
    agent may be running (WAL lets readers in). Nothing is created, migrated or moved.

    Raises:
        StorageError: there is no store, it cannot be read, or its schema is newer than ours.
    """
    path = data_dir / DB_NAME
    if not path.is_file():
        raise StorageError(f"{data_dir}: no agent store here (no {DB_NAME})")
    db = peewee.SqliteDatabase(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    bound = models.bind(db)
    meta = bound["Meta"]
    try:
        db.connect()
        row = meta.get_or_none(meta.key == "schema_version")
    except peewee.DatabaseError as exc:
        db.close()
        raise StorageError(f"{path}: cannot read the store ({exc})") from exc
    current = int(row.value) if row else 0
    if current > SCHEMA_VERSION:
        db.close()
        raise StorageError(
            f"{path}: schema version {current} is newer than this agent's {SCHEMA_VERSION}"
        )
    return db, bound


def open_database(data_dir: Path) -> tuple[peewee.SqliteDatabase, dict[str, type[peewee.Model]]]:
    """Open (or create) the store in `data_dir` and bring its schema up to date.

    A damaged file is moved aside and a new store made; a file that merely cannot be opened now
    (locked, I/O error) is left alone and the agent stops with the reason.

    Raises:
        StorageError: the file cannot be opened, or holds a newer schema than this agent knows.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / DB_NAME
    try:
        db = _connect(path)
    except _Corrupt as exc:
        _move_aside(path, str(exc))
        db = _connect(path)
    bound = models.bind(db)
    meta = bound["Meta"]
    db.create_tables([meta], safe=True)
    row = meta.get_or_none(meta.key == "schema_version")
    current = int(row.value) if row else 0
    if current > SCHEMA_VERSION:
        db.close()
        raise StorageError(
            f"{path}: schema version {current} is newer than this agent's {SCHEMA_VERSION}"
        )
    for version in range(current, SCHEMA_VERSION):
        with db.atomic("IMMEDIATE"):
            MIGRATIONS[version](db, bound)
            meta.insert(
                key="schema_version", value=str(version + 1)
            ).on_conflict_replace().execute()
        log.info("storage.migrated", path=str(path), schema_version=version + 1)
    return db, bound
