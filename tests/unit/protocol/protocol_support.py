"""Where the AosCore v7 conformance data lives, and how tests reach it.

The folder sits outside the repository (/work/shared/conformance/aoscore-v7 beside /work/main);
AOSCORE_CONFORMANCE_DIR overrides it. Tests skip, saying why, only when the folder is missing:
a missing file inside a present folder is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CONFORMANCE_DIR = Path(
    os.environ.get("AOSCORE_CONFORMANCE_DIR")
    or Path(__file__).resolve().parents[4] / "shared" / "conformance" / "aoscore-v7"
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
    """Like `conformance_names`, but a single skipped case, with the reason, when missing."""
    names = conformance_names(prefix)
    if names:
        return list(names)
    return [pytest.param("missing", marks=pytest.mark.skip(reason=MISSING_REASON))]


def read_conformance(name: str) -> bytes:
    """The bytes of one conformance file; skips the test if the folder is missing."""
    if not CONFORMANCE_DIR.is_dir():
        pytest.skip(MISSING_REASON)
    return (CONFORMANCE_DIR / name).read_bytes()
