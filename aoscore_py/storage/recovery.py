"""A store that cannot be trusted: how it is recognised, described and moved aside.

`database.py` explains when a store cannot be trusted (damaged, or lost committed state, which
the store id and generation repeated in the sidecar reveal). This module holds the identity and
its sidecar, the comparison, what an old store still tells about itself, and the move aside:
its log first, its sidecar last, the folder fsynced after each step.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import peewee

from statemachine import crashpoint

from ..errors import StorageError
from ..fsutil import atomic_write, fsync_dir
from ..logs import get_logger
from .crashpoints import MOVED_ASIDE
from .names import SIDECAR_NAME

log = get_logger("storage")


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


def db_identity(db: peewee.Database) -> StoreIdentity | None:
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


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def missing_or_empty(path: Path, expected: StoreIdentity) -> str | None:
    """Why a store its sidecar names is not there at all, before SQLite opens (and makes) it."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"the database file is missing; its sidecar names store {expected.store_id}"
    if size == 0:
        return f"the database file is empty (0 bytes); its sidecar names store {expected.store_id}"
    return None


def lost_state(
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


def move_aside(path: Path, kind: str, reason: str) -> MovedAside:
    """Rename the store's files aside, then log what was lost: its log (and shared memory)
    first, then the file, then its sidecar, the folder fsynced after each step, so a cut never
    leaves an old log beside a new file, nor a new file without its old sidecar's check."""
    stamp = f"{kind}-{time.time_ns()}"
    aside = path.with_name(f"{path.name}.{stamp}")
    sidecar = path.with_name(SIDECAR_NAME)
    steps = (
        [Path(f"{path}-wal"), Path(f"{path}-shm")],
        [path],
        [sidecar],
    )
    targets = {sidecar: sidecar.with_name(f"{sidecar.name}.{stamp}")}
    moved: list[str] = []
    try:
        for step in steps:
            parts = [part for part in step if part.exists()]
            for part in parts:
                target = targets.get(part) or Path(str(aside) + part.name[len(path.name) :])
                os.replace(part, target)
                moved.append(part.name)
            if parts:
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
