"""Suite-wide rules: tests marked `slow` (long matrices, a day offline, a 30 s link) run only
when the run selects them by marker (`pytest -m slow`, `make powercut`); CI runs the rest,
which holds a small, real part of each."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: runs with `pytest -m slow`")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)
