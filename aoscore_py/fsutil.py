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


def commit_file(tmp: Path, final: Path) -> None:
    """Move a fully written and fsynced `tmp` to `final` durably."""
    os.replace(tmp, final)
    fsync_dir(final.parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a cut leaves the old or the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
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
