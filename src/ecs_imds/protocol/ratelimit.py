"""Per-instance token buckets (SPEC §8): one noisy instance never slows another."""

from __future__ import annotations

import math
from collections.abc import Container


class RateLimiter:
    """`rate` requests per second with bursts of `burst`; a rate of 0 turns limiting off.

    Each server process keeps its own buckets: a limit is per instance and per server, which
    is what an instance talking to its own host's server sees.
    """

    __slots__ = ("_buckets", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        if rate < 0 or (burst < 1 and rate > 0):
            raise ValueError("rate must be ≥ 0 and burst ≥ 1")
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, list[float]] = {}

    def retry_after(self, key: str, now: float) -> int:
        """0 when the request may go on, else whole seconds to wait before asking again."""
        if not self.rate:
            return 0
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [self.burst - 1, now]
            return 0
        # max(0, ...): a wall clock stepped back must not drain the bucket.
        tokens = min(self.burst, bucket[0] + max(0.0, now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1:
            bucket[0] = tokens - 1
            return 0
        bucket[0] = tokens
        return max(1, math.ceil((1 - tokens) / self.rate))

    def forget(self, keep: Container[str]) -> None:
        """Drop the buckets of instances that are gone (called on each new snapshot)."""
        for key in [k for k in self._buckets if k not in keep]:
            del self._buckets[key]
