"""Where the AosCore v7 conformance data lives, and how tests reach it.

A copy of the shared folder is kept in the repository, `fixtures/conformance/aoscore-v7` (with
its INDEX.md giving each file's source), so CI runs every case; AOSCORE_CONFORMANCE_DIR points
the tests at another copy. A missing folder or file is a failure, never a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CONFORMANCE_DIR = Path(
    os.environ.get("AOSCORE_CONFORMANCE_DIR")
    or Path(__file__).resolve().parents[3] / "fixtures" / "conformance" / "aoscore-v7"
)
MISSING_REASON = (
    f"conformance data not found at {CONFORMANCE_DIR} (set AOSCORE_CONFORMANCE_DIR to its folder)"
)


def conformance_names(prefix: str = "") -> list[str]:
    """Names of the conformance JSON files, for parametrize (empty if the folder is missing)."""
    if not CONFORMANCE_DIR.is_dir():
        return []
    return sorted(p.name for p in CONFORMANCE_DIR.glob(f"{prefix}*.json"))


def conformance_params(prefix: str = "") -> list[object]:
    """Like `conformance_names`, but a single failing case, with the reason, when missing."""
    names = conformance_names(prefix)
    if names:
        return list(names)
    return ["missing"]  # read_conformance fails it, naming the folder


def read_conformance(name: str) -> bytes:
    """The bytes of one conformance file; fails the test if the folder is missing."""
    if not CONFORMANCE_DIR.is_dir():
        pytest.fail(MISSING_REASON)
    return (CONFORMANCE_DIR / name).read_bytes()
