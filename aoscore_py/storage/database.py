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

import contextlib
import errno
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import peewee

from statemachine import crashpoint

from ..errors import AosCode, StorageError
from ..fsutil import atomic_write, fsync_dir
from ..logs import get_logger
from . import models
from .crashpoints import GENERATION_COMMITTED, MOVED_ASIDE, SIDECAR_WRITTEN

log = get_logger("storage")

DB_NAME = "aoscore.db"
SIDECAR_NAME = f"{DB_NAME}.id"
PRAGMAS = {"journal_mode": "wal", "synchronous": "full", "foreign_keys": 1}
# How long a statement waits for another connection's lock before it fails.
BUSY_TIMEOUT_S = 5.0
DB_ERRORS = (peewee.DatabaseError, sqlite3.Error)


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


Migration = Callable[[peewee.Database, dict[str, type[peewee.Model]]], None]

# MIGRATIONS[i] takes a store from schema version i to i + 1. Append only; never edit one.
MIGRATIONS: tuple[Migration, ...] = (_v1_initial, _v2_blob_mtime, _v3_store_identity)
SCHEMA_VERSION = len(MIGRATIONS)


# errors


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and every exception behind it (causes, contexts, and the sqlite3 error peewee wraps
    as its first argument), outermost first."""
    out: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if any(e is seen for seen in out):
            continue
        out.append(e)
        todo += [a for a in e.args[:1] if isinstance(a, BaseException)]
        todo += [n for n in (e.__cause__, e.__context__) if n is not None]
    return out


def sqlite_cause(exc: BaseException) -> sqlite3.Error | None:
    """The SQLite error behind `exc`: the first that says why, not a failed rollback after it
    (SQLite rolls back by itself on a full disk, and peewee's rollback then fails too)."""
    errors = [e for e in _chain(exc) if isinstance(e, sqlite3.Error)]
    useful = [e for e in errors if "no transaction is active" not in str(e)]
    return (useful or errors or [None])[0]


def _primary_code(error: sqlite3.Error | None) -> int | None:
    code = getattr(error, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def storage_error(exc: BaseException, path: Path, doing: str) -> StorageError:
    """A StorageError that says what could not be done to the store at `path`, and why.

    A full disk is noMemory (the retry policy's "no space yet"); the message names the folder.
    """
    cause = sqlite_cause(exc)
    text = str(cause if cause is not None else exc)
    code = _primary_code(cause)
    if code == sqlite3.SQLITE_FULL or "disk is full" in text:
        return StorageError(
            f"no space left on the device of {path.parent}: cannot {doing} ({text})",
            code=AosCode.NO_MEMORY,
        )
    if code == sqlite3.SQLITE_READONLY:
        return StorageError(f"{path} is read-only: cannot {doing} ({text})")
    return StorageError(f"{path}: cannot {doing} ({text})")


class _Corrupt(Exception):
    """SQLite says the file is not a database, or its integrity check fails."""


# the store's identity


@dataclass(frozen=True)
class StoreIdentity:
    """Which store a database is, and how many read-write opens it has seen."""

    store_id: str
    generation: int


def read_sidecar(data_dir: Path) -> StoreIdentity | None:
    """The identity the sidecar names; None when there is none (or it is unreadable: then there
    is nothing to compare, and it is written again)."""
    path = data_dir / SIDECAR_NAME
    try:
        body = orjson.loads(path.read_bytes())
        return StoreIdentity(str(body["storeId"]), int(body["generation"]))
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        log.warning(
            "storage.sidecar_unreadable",
            path=str(path),
            error=str(exc),
            next="not compared; written again once the store is open",
        )
        return None


def write_sidecar(data_dir: Path, identity: StoreIdentity) -> None:
    """Write the sidecar durably: temporary name, fsync, rename, fsync the folder."""
    body = {"storeId": identity.store_id, "generation": identity.generation}
    atomic_write(data_dir / SIDECAR_NAME, orjson.dumps(body))


def _db_identity(db: peewee.Database) -> StoreIdentity | None:
    """The identity a database holds; None when it holds none (empty, or an older schema)."""
    if not db.table_exists("meta"):
        return None
    rows = dict(
        db.execute_sql(
            "SELECT key, value FROM meta WHERE key IN ('store_id', 'generation')"
        ).fetchall()
    )
    if "store_id" not in rows:
        return None
    return StoreIdentity(rows["store_id"], int(rows.get("generation") or 0))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _missing_or_empty(path: Path, expected: StoreIdentity) -> str | None:
    """Why a store its sidecar names is not there at all, before SQLite opens (and makes) it."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"the database file is missing; its sidecar names store {expected.store_id}"
    if size == 0:
        return f"the database file is empty (0 bytes); its sidecar names store {expected.store_id}"
    return None


def _lost_state(
    found: StoreIdentity | None, expected: StoreIdentity, log_gone: bool = False
) -> str | None:
    """Why a database does not hold what its sidecar says it must; None when it does.

    Args:
        log_gone: whether its write-ahead log was missing or empty before SQLite opened it.
    """
    gone = (
        "its write-ahead log (-wal) is gone or empty"
        if log_gone
        else "its write-ahead log was lost"
    )
    if found is None:
        return f"the database holds no store id, its sidecar names store {expected.store_id}: " + (
            gone if log_gone else "the file was replaced or emptied, or " + gone
        )
    if found.store_id != expected.store_id:
        return (
            f"the database is store {found.store_id}, its sidecar names store "
            f"{expected.store_id}: the file was replaced"
        )
    if found.generation < expected.generation:
        return (
            f"the database is at generation {found.generation}, its sidecar at "
            f"{expected.generation}: {gone}, with every commit since an earlier start"
        )
    return None


# opening


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


def describe(path: Path) -> dict[str, Any] | str:
    """What the store file at `path` holds, as far as it can still be read: the phase of each
    durable machine, whether a desired status is stored, how many items, blobs and instances,
    and the next sequence number; "unreadable" or "empty (0 bytes)" when nothing can be read.
    Never raises."""
    try:
        if path.stat().st_size == 0:
            return "empty (0 bytes)"
    except OSError:
        return "unreadable (missing)"
    queries = {
        "phases": "SELECT machine, phase FROM sm_phase",
        "desired_status": "SELECT count(*) > 0 FROM desired_status",
        "items": "SELECT count(*) FROM item",
        "blobs": "SELECT count(*) FROM blob",
        "instances": "SELECT count(*) FROM instance",
        "seq_next": "SELECT value FROM meta WHERE key = 'seq_next'",
    }
    # Without a log beside it, read it as immutable: SQLite then makes no -wal or -shm for it.
    uris = [f"file:{path}?mode=ro&immutable=1"]
    if Path(f"{path}-wal").exists():
        uris.insert(0, f"file:{path}?mode=ro")
    for uri in uris:
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=0.5)
        except sqlite3.Error:
            continue
        held: dict[str, Any] = {}
        try:
            try:
                (tables,) = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.Error:
                tables = None
            if tables == 0:
                return "no tables (nothing had reached the main file)"
            for name, sql in queries.items():
                try:
                    rows = conn.execute(sql).fetchall()
                except sqlite3.Error:
                    held[name] = "unreadable"
                    continue
                if name == "phases":
                    held[name] = dict(rows)
                elif name == "desired_status":
                    held[name] = bool(rows[0][0])
                elif name == "seq_next":
                    held[name] = int(rows[0][0]) if rows and str(rows[0][0]).isdigit() else None
                else:
                    held[name] = rows[0][0]
        finally:
            conn.close()
        if any(v != "unreadable" for v in held.values()):
            return held
    return "unreadable"


@dataclass(frozen=True)
class MovedAside:
    """A store that was moved aside: where it went, why, and what it held."""

    path: Path
    kind: str
    reason: str
    moved: tuple[str, ...]
    held: dict[str, Any] | str

    @property
    def seq_next(self) -> int | None:
        value = self.held.get("seq_next") if isinstance(self.held, dict) else None
        return value if isinstance(value, int) else None


def _move_aside(path: Path, kind: str, reason: str) -> MovedAside:
    """Rename the store's files aside (its log first, its sidecar last, the folder fsynced after
    each step, so a cut never leaves a log beside a new file, nor a file without its sidecar's
    check), then log what was lost."""
    stamp = f"{kind}-{time.time_ns()}"
    aside = path.with_name(f"{path.name}.{stamp}")
    moved: list[str] = []
    try:
        for suffix in ("-wal", "-shm", ""):
            part = Path(str(path) + suffix)
            if part.exists():
                os.replace(part, Path(str(aside) + suffix))
                moved.append(part.name)
        fsync_dir(path.parent)
        sidecar = path.with_name(SIDECAR_NAME)
        if sidecar.exists():
            os.replace(sidecar, sidecar.with_name(f"{sidecar.name}.{stamp}"))
            moved.append(sidecar.name)
            fsync_dir(path.parent)
    except OSError as exc:
        raise StorageError(
            f"{path}: the store must be moved aside ({reason}) but cannot be ({exc.strerror})"
        ) from exc
    crashpoint(MOVED_ASIDE)
    held = describe(aside)
    log.error(
        f"storage.{kind}",
        path=str(path),
        reason=reason,
        moved=moved,
        moved_to=str(aside),
        held=held,
        next="starting on a new store: running containers are adopted and reported, stored "
        "blobs adopted by their hashes, and the cloud sends the desired status again",
    )
    return MovedAside(aside, kind, reason, tuple(moved), held)


@contextlib.contextmanager
def translated(path: Path, doing: str) -> Iterator[None]:
    """Turn SQLite's errors inside into a StorageError saying what could not be done, and why."""
    try:
        yield
    except DB_ERRORS as exc:
        raise storage_error(exc, path, doing) from exc


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
            lost = None if expected is None else _lost_state(_db_identity(db), expected)
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
    reason = None if expected is None else _missing_or_empty(path, expected)
    log_gone = _size(Path(f"{path}-wal")) == 0  # missing or empty, before SQLite opens it
    if reason is None:
        try:
            db = _connect(path)
        except _Corrupt as exc:
            aside = _move_aside(path, "corrupt", str(exc))
        else:
            if expected is None:
                return db, None
            try:
                found = _db_identity(db)
            except DB_ERRORS as exc:
                db.close()
                if isinstance(sqlite_cause(exc), sqlite3.OperationalError):
                    error = storage_error(exc, path, "read the store's identity")
                    raise StorageError(
                        f"{error.message}; it was left as it is", code=error.code
                    ) from exc
                aside = _move_aside(path, "corrupt", f"its identity cannot be read ({exc})")
            else:
                reason = _lost_state(found, expected, log_gone)
                if reason is None:
                    return db, None
                db.close()
                aside = _move_aside(path, "lost", reason)
    else:
        aside = _move_aside(path, "lost", reason)
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
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"{data_dir}: cannot make the data directory ({exc.strerror})") from exc
    path = data_dir / DB_NAME
    db, aside = _open_checked(path)
    try:
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
            code=AosCode.NO_MEMORY if exc.errno in (errno.ENOSPC, errno.EDQUOT) else None,
        ) from exc
    crashpoint(SIDECAR_WRITTEN)
    return db, bound


def _next_generation(
    db: peewee.SqliteDatabase, meta: type[peewee.Model], path: Path, aside: MovedAside | None
) -> StoreIdentity:
    """Add one to the store's generation, in one transaction. A new store made in place of one
    moved aside starts its sequence numbers past the old store's and past the clock's
    milliseconds: the old store may have lost the reservations it made, so they still only
    grow (a unit reserves about a hundred per start, the clock a thousand per second)."""
    with translated(path, "move the store's generation on"), db.atomic("IMMEDIATE"):
        rows = dict(db.execute_sql("SELECT key, value FROM meta").fetchall())
        identity = StoreIdentity(rows["store_id"], int(rows.get("generation") or 0) + 1)
        meta.insert(
            key="generation", value=str(identity.generation)
        ).on_conflict_replace().execute()
        if aside is not None and "seq_next" not in rows:
            seq = max(aside.seq_next or 0, int(time.time() * 1000))
            meta.insert(key="seq_next", value=str(seq)).execute()
    return identity
