"""SQLite's errors, as the agent reports them: what could not be done to the store, and why.

SQLite rolls a transaction back by itself on a full disk, and peewee's own rollback then fails
with "no transaction is active", which hides the cause; the cause is dug out here, and a full
disk becomes noMemory (the retry policy's "no space yet").
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import peewee

from ..errors import AosCode, StorageError

DB_ERRORS = (peewee.DatabaseError, sqlite3.Error)


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


@contextlib.contextmanager
def translated(path: Path, doing: str) -> Iterator[None]:
    """Turn SQLite's errors inside into a StorageError saying what could not be done, and why."""
    try:
        yield
    except DB_ERRORS as exc:
        raise storage_error(exc, path, doing) from exc
