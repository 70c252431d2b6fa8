"""An interrupt never lands between a process's start and its record (interrupts.py)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from aoscore_py.powercut import interrupts


@pytest.fixture
def installed() -> Iterator[None]:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    interrupts.install()
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_sigterm_is_a_keyboard_interrupt(installed: None) -> None:
    with pytest.raises(KeyboardInterrupt, match="signal 15"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # not reached: the handler runs at the next bytecode


def test_inside_held_it_waits_for_the_end_of_the_block(installed: None) -> None:
    done = []
    with pytest.raises(KeyboardInterrupt, match="signal 15"), interrupts.held():
        os.kill(os.getpid(), signal.SIGTERM)
        with interrupts.held():  # nested: only the outermost end raises
            done.append("inner")
        done.append("recorded")
    assert done == ["inner", "recorded"]


def test_a_block_without_interrupt_raises_nothing(installed: None) -> None:
    with interrupts.held():
        pass
    with interrupts.held():
        pass
