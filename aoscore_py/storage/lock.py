"""One agent per data directory: a lock held for the life of the process.

`DataDirLock.acquire(data_dir)` opens `aoscore.lock` in the data directory, takes
`fcntl.flock(LOCK_EX | LOCK_NB)` on it and writes this process's pid into it (fsynced, and the
folder fsynced when the file is new). The kernel drops a flock when its process ends, however
it ends, so a lock file left by a killed agent never blocks the next one: only a live holder
does, and a second agent then stops with the pid the holder wrote.

Taking the lock is also the data directory's writability check: a read-only mount or missing
permissions fail here, with one message naming the directory, before anything else is opened.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from statemachine import crashpoint

from ..errors import AosCode, StorageError
from ..fsutil import NO_SPACE, fsync_dir, make_dirs
from ..logs import get_logger
from .crashpoints import LOCK_TAKEN
from .names import DB_NAME, LOCK_NAME, SIDECAR_NAME

log = get_logger("storage")

# What the agent writes under its data directory besides the lock: it must be able to.
_DIRS = ("blobs", "blobs/sha256", "partial")
_FILES = (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", SIDECAR_NAME)


class DataDirUnusable(StorageError):
    """The data directory cannot be made, written or locked (read-only, permissions, full)."""


class DataDirInUse(StorageError):
    """Another live process holds the data directory's lock."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


def _unusable(data_dir: Path, what: str, exc: OSError) -> DataDirUnusable:
    reason = exc.strerror or str(exc)
    code = AosCode.NO_MEMORY if exc.errno in NO_SPACE else None
    return DataDirUnusable(f"data directory {data_dir} is not usable: {what}: {reason}", code=code)


def _not_writable() -> OSError:
    return OSError(errno.EACCES, f"not readable and writable by this user (uid {os.getuid()})")


def check_data_dir(data_dir: Path) -> None:
    """Refuse a data directory whose parts the agent cannot write (as another user may own them).

    Raises:
        DataDirUnusable: naming the first part that is not readable and writable.
    """
    for name in ("", *_DIRS):
        folder = data_dir / name
        if folder.exists() and not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
            raise _unusable(data_dir, str(folder), _not_writable())
    for name in _FILES:
        path = data_dir / name
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            raise _unusable(data_dir, str(path), _not_writable())


def read_pid(path: Path) -> int | None:
    """The pid a lock file names, or None when it names none."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class DataDirLock:
    """The data directory's lock, held until `release()` or the end of the process.

    Attributes:
        previous_pid: the pid the lock file named before (an agent that was killed or stopped);
            None for a new file.
    """

    def __init__(self, data_dir: Path, fd: int, previous_pid: int | None) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self.previous_pid = previous_pid
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """Make the data directory if needed, check it, and lock it for this process.

        Raises:
            DataDirInUse: another live process holds it (the message names its pid).
            DataDirUnusable: it cannot be made, written or locked.
        """
        try:
            make_dirs(data_dir)
        except OSError as exc:
            raise _unusable(data_dir, "cannot make it", exc) from None
        path = data_dir / LOCK_NAME
        created = not path.exists()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _unusable(data_dir, str(path), exc) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = read_pid(path)
                holder = f"pid {pid}" if pid is not None else "a process whose pid is not written"
                raise DataDirInUse(
                    f"data directory {data_dir} is in use by another agent ({holder}); "
                    "one agent per data directory",
                    pid,
                ) from None
            except OSError as exc:
                raise _unusable(data_dir, f"cannot lock {path}", exc) from None
            previous = read_pid(path)
            check_data_dir(data_dir)
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                os.fsync(fd)
                if created:
                    fsync_dir(data_dir)
            except OSError as exc:
                raise _unusable(data_dir, f"cannot write {path}", exc) from None
        except BaseException:
            os.close(fd)
            raise
        crashpoint(LOCK_TAKEN)
        log.info("datadir.locked", path=str(path), pid=os.getpid(), previous_pid=previous)
        return cls(data_dir, fd, previous)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Let the lock go (closing the file drops the flock); the pid stays, as a hint."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
