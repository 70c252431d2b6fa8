"""Backoff: the reconnect schedule grows, is capped, is spread by jitter, and resets."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aoscore_py.backoff import Backoff


def steady(**kw: float) -> Backoff:
    return Backoff(jitter=0.0, rng=random.Random(0), **kw)


class TestSchedule:
    def test_without_jitter_it_doubles_from_initial_up_to_the_cap(self) -> None:
        b = steady(initial=0.5, factor=2.0, cap=30.0)
        assert [b.next() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
        assert b.attempts == 9

    def test_other_factor_and_initial(self) -> None:
        b = steady(initial=1.0, factor=3.0, cap=20.0)
        assert [b.next() for _ in range(4)] == [1, 3, 9, 20]

    def test_reset_starts_again_from_initial(self) -> None:
        b = steady()
        for _ in range(5):
            b.next()
        b.reset()
        assert b.attempts == 0
        assert b.next() == 0.5

    def test_a_long_outage_stays_at_the_cap(self) -> None:
        # a unit offline for hours retries thousands of times; the schedule must not break
        b = Backoff(rng=random.Random(1))
        delays = [b.next() for _ in range(3000)]
        assert all(30.0 * 0.7 <= d <= 30.0 for d in delays[-100:])


class TestJitter:
    @settings(max_examples=50, deadline=None)
    @given(
        st.integers(0, 2**32),
        st.floats(0.01, 5.0),
        st.floats(1.1, 4.0),
        st.floats(0.0, 0.9),
    )
    def test_each_delay_stays_within_the_spread_and_the_cap(
        self, seed: int, initial: float, factor: float, jitter: float
    ) -> None:
        cap = 30.0
        b = Backoff(initial, factor, cap, jitter, random.Random(seed))
        for n in range(40):
            base = min(cap, initial * factor**n)
            delay = b.next()
            assert base * (1 - jitter) - 1e-9 <= delay <= min(cap, base * (1 + jitter)) + 1e-9
            assert 0.0 <= delay <= cap

    def test_jitter_spreads_delays_on_both_sides(self) -> None:
        delays = []
        for seed in range(200):
            b = Backoff(initial=1.0, jitter=0.3, rng=random.Random(seed))
            delays.append(b.next())
        assert min(delays) < 0.9 and max(delays) > 1.1
        assert len(set(delays)) > 100, "units must not retry in lockstep"

    def test_same_seed_same_schedule(self) -> None:
        one, two = Backoff(rng=random.Random(7)), Backoff(rng=random.Random(7))
        assert [one.next() for _ in range(10)] == [two.next() for _ in range(10)]

    @pytest.mark.parametrize("seed", range(5))
    def test_delays_grow_on_average(self, seed: int) -> None:
        b = Backoff(initial=0.5, factor=2.0, cap=1000.0, jitter=0.3, rng=random.Random(seed))
        delays = [b.next() for _ in range(8)]
        # with +-30 % jitter, doubling always wins: each delay exceeds the one before
        assert delays == sorted(delays)
