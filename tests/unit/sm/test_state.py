"""The state file: what the service manager remembers across restarts, written durably."""

from __future__ import annotations

from pathlib import Path

import pytest

from aoscore_py.sm import state as state_module
from aoscore_py.sm.health import Backoff, HealthRecord
from aoscore_py.sm.state import FILE_NAME, SmState

from .stubs import IMG2, spec


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    first = SmState(path)
    assert first.wanted is None
    a, b = spec("a"), spec("b", 2, "2.0", IMG2)
    assert first.set_wanted([a, b], {"a": Backoff(base_s=2)})
    first.health[a.key] = HealthRecord("1.0@x", crashes=3, reason="CrashLoopBackOff")
    first.save()
    again = SmState(path)
    assert again.wanted == {a.key: a, b.key: b}
    assert again.backoffs == {"a": Backoff(base_s=2)}
    assert again.health == first.health
    assert again.backoff("b", Backoff()) == Backoff()


def test_an_unchanged_list_is_not_a_change_and_dropped_instances_lose_their_records() -> None:
    memory = SmState(None)
    a, b = spec("a"), spec("b")
    assert memory.set_wanted([a, b])
    memory.health[b.key] = HealthRecord("x", crashes=1)
    assert not memory.set_wanted([b, a])
    assert memory.set_wanted([a])
    assert memory.health == {}
    memory.save()  # in memory: nothing to write


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"wanted": [{"key": 1}]}'])
def test_an_unreadable_file_is_logged_and_replaced(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(content)
    damaged = SmState(path)
    assert (damaged.wanted, damaged.health) == (None, {})
    damaged.set_wanted([spec("a")])
    damaged.save()
    assert SmState(path).wanted is not None


def test_save_is_atomic_and_passes_its_crash_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passed: list[str] = []
    monkeypatch.setattr(state_module, "crashpoint", passed.append)
    memory = SmState(tmp_path / "sub" / FILE_NAME)
    memory.set_wanted([spec("a")])
    memory.save()
    assert passed == ["sm.state.stored"]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == [FILE_NAME]
