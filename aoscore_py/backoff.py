"""Retry delays: exponential with jitter, capped; a pure schedule, no sleeping here.

Used for reconnects (websockets' `async for connect()` retries a dropped connection with no
delay at all, which on a fleet turns one cloud restart into a thundering herd) and for retrying
an update cycle that failed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """`initial * factor**n`, capped at `cap`, each spread by +-`jitter` (a fraction)."""

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.3
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def next(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        try:
            base = min(self.cap, self.initial * self.factor**self.attempts)
        except OverflowError:  # a long outage: factor**attempts outgrows a float, far past cap
            base = self.cap
        self.attempts += 1
        spread = base * self.jitter
        return max(0.0, min(self.cap, base + self.rng.uniform(-spread, spread)))

    def reset(self) -> None:
        """A connection held: start again from `initial`."""
        self.attempts = 0
