"""Durable file writes: temporary name, fsync, rename, fsync the folder.

A power cut at any instant leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

# errnos that mean the disk (or the user's quota) is full: noMemory, "no space yet".
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new name in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, mode: int = 0o777) -> None:
    """Make `path` and its missing parents durably: each new folder's name is fsynced into its
    parent, or a power cut takes the folder, and all that was committed in it, away."""
    missing = []
    folder = path
    while not folder.is_dir():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for new in reversed(missing):
        try:
            new.mkdir(mode)
        except FileExistsError:
            if not new.is_dir():
                raise
            continue
        fsync_dir(new.parent)


def commit_file(tmp: Path, final: Path) -> None:
    """Move a fully written and fsynced `tmp` to `final` durably."""
    os.replace(tmp, final)
    fsync_dir(final.parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a cut leaves the old or the new content."""
    make_dirs(path.parent)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        commit_file(Path(name), path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
