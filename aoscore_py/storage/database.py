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
PRAGMAS = {"journal_mode": "wal", "synchronous": "full", "foreign_keys": 1, "busy_timeout": 5000}


def _v1_initial(db: peewee.Database, bound: dict[str, type[peewee.Model]]) -> None:
    db.create_tables(list(bound.values()), safe=True)


Migration = Callable[[peewee.Database, dict[str, type[peewee.Model]]], None]

# MIGRATIONS[i] takes a store from schema version i to i + 1. Append only; never edit one.
MIGRATIONS: tuple[Migration, ...] = (_v1_initial,)
SCHEMA_VERSION = len(MIGRATIONS)


def _connect(path: Path) -> peewee.SqliteDatabase:
    db = peewee.SqliteDatabase(str(path), pragmas=PRAGMAS)
    db.connect()
    row = db.execute_sql("PRAGMA quick_check").fetchone()
    if row is None or row[0] != "ok":
        db.close()
        raise peewee.DatabaseError(f"quick_check: {row[0] if row else 'no answer'}")
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


def open_database(data_dir: Path) -> tuple[peewee.SqliteDatabase, dict[str, type[peewee.Model]]]:
    """Open (or create) the store in `data_dir` and bring its schema up to date.

    Raises:
        StorageError: the file holds a newer schema than this agent knows.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / DB_NAME
    try:
        db = _connect(path)
    except peewee.DatabaseError as exc:
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
