"""Opening the agent's SQLite file: pragmas, integrity check, identity, schema version, migrations.

One file under the data directory, WAL with `synchronous=FULL` so that each commit survives a
power cut. A store that cannot be trusted is moved aside (with its `-wal`, `-shm` and sidecar)
and a new one is made: the unit then re-derives its state from the engines (running containers
are adopted by their labels, stored blobs by their hashes) and from the cloud (which sends the
desired status again when the unit connects). One error-level log line says what was moved and,
when the old file can still be read at all, what it held (phases, whether a desired status was
stored, how many items, blobs and instances), or that it was unreadable.

Two kinds of store cannot be trusted:

- a damaged one: SQLite says it is not a database, or `PRAGMA quick_check` fails;
- one that lost committed state, which SQLite cannot see: a file emptied to 0 bytes opens as an
  empty database, and a file whose write-ahead log (`-wal`) was deleted opens as it was at the
  last checkpoint, both without an error. A generation catches both:

  * `meta` holds `store_id` (made with the store) and `generation`. Every read-write open adds
    one to the generation in its own transaction (a WAL commit, fsynced), then writes both to
    the sidecar `aoscore.db.id` (temporary name, fsync, rename, fsync the folder).
  * On open, when there is a sidecar, the database must be there, not empty, hold the same store
    id, and a generation at least the sidecar's. Otherwise it was replaced or emptied, or lost the
    log that held the last open's commit and everything after it: it is moved aside.
  * A database ahead of its sidecar (a cut between the two writes) has lost nothing.
  * No sidecar (a store made by an older agent, or one cut before its first sidecar) means there
    is nothing to compare against; the sidecar is written at this open.
  * Limit: once SQLite has checkpointed the generation's commit into the main file (every 1000
    pages of log), losing the log loses only the commits after that checkpoint, unseen: the store
    is then as it was at that earlier moment, which the update cycle re-derives from anyway.

A store that merely cannot be opened now (locked, an I/O error, a read-only or full disk) is left
as it is and the agent stops with the reason; a schema newer than this agent's is refused and
left as it is too, so that a downgrade never destroys a newer agent's state.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import peewee

from statemachine import crashpoint

from ..errors import AosCode, StorageError
from ..fsutil import NO_SPACE, fsync_dir, make_dirs
from ..logs import get_logger
from . import models
from .crashpoints import GENERATION_COMMITTED, SIDECAR_WRITTEN
from .names import DB_NAME, SIDECAR_NAME
from .recovery import (
    MovedAside,
    StoreIdentity,
    db_identity,
    file_size,
    lost_state,
    missing_or_empty,
    move_aside,
    read_sidecar,
    write_sidecar,
)
from .sqlerrors import DB_ERRORS, sqlite_cause, storage_error, translated

log = get_logger("storage")

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


def _v3_store_identity(db: peewee.Database, bound: dict[str, type[peewee.Model]]) -> None:
    # The store's identity and generation, which its sidecar repeats (see the module's doc).
    meta = bound["Meta"]
    meta.insert(key="store_id", value=uuid.uuid4().hex).on_conflict_ignore().execute()
    meta.insert(key="generation", value="0").on_conflict_ignore().execute()


def _v4_outbox(db: peewee.Database, bound: dict[str, type[peewee.Model]]) -> None:
    # The cloud link's durable outbox; version 1 creates it already on a new store.
    db.create_tables([bound["OutboxRow"]], safe=True)


def _v5_link_health(db: peewee.Database, bound: dict[str, type[peewee.Model]]) -> None:
    # The cloud link's last health changes; version 1 creates it already on a new store.
    db.create_tables([bound["LinkHealthRow"]], safe=True)


Migration = Callable[[peewee.Database, dict[str, type[peewee.Model]]], None]

# MIGRATIONS[i] takes a store from schema version i to i + 1. Append only; never edit one.
MIGRATIONS: tuple[Migration, ...] = (
    _v1_initial,
    _v2_blob_mtime,
    _v3_store_identity,
    _v4_outbox,
    _v5_link_health,
)
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
        # fetchone() runs outside peewee's wrapper: it raises sqlite3's own errors
        row = db.execute_sql("PRAGMA quick_check").fetchone()
    except (peewee.OperationalError, sqlite3.OperationalError) as exc:
        db.close()
        error = storage_error(exc, path, "open the store")
        raise StorageError(f"{error.message}; it was left as it is", code=error.code) from exc
    except DB_ERRORS as exc:
        db.close()
        raise _Corrupt(str(sqlite_cause(exc) or exc)) from exc
    if row is None or row[0] != "ok":
        db.close()
        raise _Corrupt(f"quick_check: {row[0] if row else 'no answer'}")
    return db


def open_readonly(data_dir: Path) -> tuple[peewee.SqliteDatabase, dict[str, type[peewee.Model]]]:
    """Open the store in `data_dir` for reading only, as tools and the laboratory do while an
    agent may be running (WAL lets readers in). Nothing is created, migrated or moved.

    Raises:
        StorageError: there is no store, or no tables in it yet, it cannot be read, it is
            damaged or lost state (the agent moves it aside at its next start), or its schema
            is newer than ours.
    """
    path = data_dir / DB_NAME
    if not path.is_file():
        raise StorageError(f"{data_dir}: no agent store here (no {DB_NAME})")
    db = peewee.SqliteDatabase(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    bound = models.bind(db)
    meta = bound["Meta"]
    try:
        with translated(path, "read the store"):
            db.connect()
            try:
                row = db.execute_sql("PRAGMA quick_check").fetchone()
            except DB_ERRORS as exc:
                if isinstance(sqlite_cause(exc), sqlite3.OperationalError):
                    raise  # locked, I/O: not a verdict on the file
                row = (str(sqlite_cause(exc) or exc),)
            if row is None or row[0] != "ok":
                first = str(row[0]).splitlines()[-1] if row else "no answer"
                raise StorageError(
                    f"{path}: the store is damaged (quick_check: {first}); the agent moves it "
                    "aside at its next start"
                )
            expected = read_sidecar(data_dir)
            lost = None if expected is None else lost_state(db_identity(db), expected)
            if lost is not None:
                raise StorageError(
                    f"{path}: the store lost committed state ({lost}); the agent moves it "
                    "aside at its next start"
                )
            version = meta.get_or_none(meta.key == "schema_version")
    except BaseException:
        db.close()
        raise
    current = int(version.value) if version else 0
    if current == 0:
        db.close()  # its tables come in one transaction, with schema version 1
        raise StorageError(f"{path}: the store holds no tables yet (an agent is making it)")
    if current > SCHEMA_VERSION:
        db.close()
        raise StorageError(
            f"{path}: schema version {current} is newer than this agent's {SCHEMA_VERSION}"
        )
    return db, bound


def _open_checked(path: Path) -> tuple[peewee.SqliteDatabase, MovedAside | None]:
    """The store at `path` if it can be trusted; else it is moved aside and a new file opened."""
    expected = read_sidecar(path.parent)
    reason = None if expected is None else missing_or_empty(path, expected)
    log_gone = file_size(Path(f"{path}-wal")) == 0  # missing or empty, before SQLite opens it
    if reason is None:
        try:
            db = _connect(path)
        except _Corrupt as exc:
            aside = move_aside(path, "corrupt", str(exc))
        else:
            if expected is None:
                return db, None
            try:
                found = db_identity(db)
            except DB_ERRORS as exc:
                db.close()
                if isinstance(sqlite_cause(exc), sqlite3.OperationalError):
                    error = storage_error(exc, path, "read the store's identity")
                    raise StorageError(
                        f"{error.message}; it was left as it is", code=error.code
                    ) from exc
                aside = move_aside(path, "corrupt", f"its identity cannot be read ({exc})")
            else:
                reason = lost_state(found, expected, log_gone)
                if reason is None:
                    return db, None
                db.close()
                aside = move_aside(path, "lost", reason)
    else:
        aside = move_aside(path, "lost", reason)
    try:
        return _connect(path), aside
    except _Corrupt as exc:
        raise StorageError(f"{path}: a new store cannot be made ({exc})") from exc


def open_database(data_dir: Path) -> tuple[peewee.SqliteDatabase, dict[str, type[peewee.Model]]]:
    """Open (or create) the store in `data_dir`, check it, and bring its schema up to date.

    A damaged store, or one that lost committed state, is moved aside and a new store made; a
    file that merely cannot be opened now (locked, I/O error, read-only, full) is left alone and
    the agent stops with the reason. Then the generation moves on (module doc).

    Raises:
        StorageError: the file cannot be opened or written (noMemory when the disk is full), or
            holds a newer schema than this agent knows.
    """
    try:
        make_dirs(data_dir)
    except OSError as exc:
        raise StorageError(f"{data_dir}: cannot make the data directory ({exc.strerror})") from exc
    path = data_dir / DB_NAME
    db, aside = _open_checked(path)
    try:
        # SQLite fsyncs the folder for its log's name, not for the store's own: a store made
        # now must not lose its name to a power cut.
        with translated(path, "make the store's name durable"):
            fsync_dir(data_dir)
        bound = models.bind(db)
        meta = bound["Meta"]
        with translated(path, "read the store's schema version"):
            db.create_tables([meta], safe=True)
            row = meta.get_or_none(meta.key == "schema_version")
        current = int(row.value) if row else 0
        if current > SCHEMA_VERSION:
            raise StorageError(
                f"{path}: schema version {current} is newer than this agent's {SCHEMA_VERSION}"
            )
        for version in range(current, SCHEMA_VERSION):
            doing = f"migrate the store to schema version {version + 1}"
            with translated(path, doing), db.atomic("IMMEDIATE"):
                MIGRATIONS[version](db, bound)
                meta.insert(
                    key="schema_version", value=str(version + 1)
                ).on_conflict_replace().execute()
            log.info("storage.migrated", path=str(path), schema_version=version + 1)
        identity = _next_generation(db, meta, path, aside)
    except BaseException:
        db.close()
        raise
    crashpoint(GENERATION_COMMITTED)
    try:
        write_sidecar(data_dir, identity)
    except OSError as exc:
        db.close()
        raise StorageError(
            f"{data_dir / SIDECAR_NAME}: cannot write the store's sidecar ({exc.strerror})",
            code=AosCode.NO_MEMORY if exc.errno in NO_SPACE else None,
        ) from exc
    crashpoint(SIDECAR_WRITTEN)
    return db, bound


def _next_generation(
    db: peewee.SqliteDatabase, meta: type[peewee.Model], path: Path, aside: MovedAside | None
) -> StoreIdentity:
    """Add one to the store's generation, in one transaction. A new store starts its sequence
    numbers past the clock's milliseconds (and past those of a store moved aside at this start):
    a store that was lost, or moved aside at a start cut before this point, may have handed out
    numbers nothing remembers, so they still only grow (a unit reserves about a hundred per
    start, the clock a thousand per second)."""
    with translated(path, "move the store's generation on"), db.atomic("IMMEDIATE"):
        rows = dict(db.execute_sql("SELECT key, value FROM meta").fetchall())
        identity = StoreIdentity(rows["store_id"], int(rows.get("generation") or 0) + 1)
        meta.insert(
            key="generation", value=str(identity.generation)
        ).on_conflict_replace().execute()
        if "seq_next" not in rows:
            # A new store, perhaps in place of one moved aside at this start or at a start that
            # was cut right after the move: its numbers begin past the clock's milliseconds.
            seq = max((aside.seq_next or 0) if aside else 0, int(time.time() * 1000))
            meta.insert(key="seq_next", value=str(seq)).execute()
    return identity
