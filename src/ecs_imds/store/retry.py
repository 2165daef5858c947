"""Waiting before trying the store again: exponential backoff with full jitter.

When a database comes back after an outage, every server of the fleet wants it at once. A
fixed wait brings them all back in the same instant, and again after each failure; waiting
twice as long after each failure in a row, and only a random part of that (full jitter),
spreads them over the whole window. The cap bounds how long a server may stay away once
the store is back: N servers come back at about N / cap per second.
"""

from __future__ import annotations

import random


class Backoff:
    """The waits of one sequence of failures: `next()` after each, `reset()` on success."""

    def __init__(self, first: float, cap: float) -> None:
        self.first = max(first, 0.001)
        self.cap = max(cap, self.first)
        self.failures = 0

    def next(self) -> float:
        """Seconds to wait before the next attempt: a random part of first * 2^failures,
        at most the cap."""
        window = min(self.cap, self.first * 2.0 ** min(self.failures, 32))
        self.failures += 1
        return random.uniform(0, window)

    def reset(self) -> None:
        self.failures = 0
