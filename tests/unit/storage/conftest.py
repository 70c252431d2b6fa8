"""Fixtures every storage test uses: a data dir that does not exist yet, and a store in it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aoscore_py.storage import Storage


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(data_dir: Path) -> Iterator[Storage]:
    s = Storage(data_dir)
    yield s
    s.close()
