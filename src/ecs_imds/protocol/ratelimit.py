"""Token buckets per instance and per source address (SPEC §8): one noisy caller never
slows another, and refusing a flood costs almost nothing."""

from __future__ import annotations

import math
from collections.abc import Container

# What `admit` returns for a caller far past its limit: refuse and close the connection.
CLOSE = -1


class RateLimiter:
    """`rate` requests per second with bursts of `burst`; a rate of 0 turns limiting off.

    Keys are instance ids (`i-…`), or, for callers that are no instance (and instances whose
    endpoint is disabled), their source address. Each server process keeps its own buckets:
    a limit is per caller and per server, which is what an instance talking to its own
    host's server sees.

    Past the limit a request gets 429 with Retry-After; a caller that goes on regardless — a
    further `burst` refused requests, forgiven at `rate` per second like the bucket fills —
    is past the second threshold, and its connections are closed (`CLOSE`).
    """

    __slots__ = ("_buckets", "burst", "rate")

    # Buckets kept at most; past it the idle ones (full again) are dropped. Bounds what a
    # flood from many source addresses (an IPv6 /64 has plenty) can make us remember.
    MAX_KEYS = 1 << 17

    def __init__(self, rate: float, burst: float) -> None:
        if rate < 0 or (burst < 1 and rate > 0):
            raise ValueError("rate must be ≥ 0 and burst ≥ 1")
        self.rate = rate
        self.burst = burst
        # key → [tokens, time of the last look, refused requests not yet forgiven]
        self._buckets: dict[str, list[float]] = {}

    def retry_after(self, key: str, now: float) -> int:
        """0 when the request may go on, else whole seconds to wait before asking again."""
        if not self.rate:
            return 0
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.MAX_KEYS:
                self._prune(now)
            self._buckets[key] = [self.burst - 1, now, 0.0]
            return 0
        # max(0, ...): a wall clock stepped back must not drain the bucket.
        elapsed = max(0.0, now - bucket[1])
        tokens = min(self.burst, bucket[0] + elapsed * self.rate)
        bucket[1] = now
        bucket[2] = max(0.0, bucket[2] - elapsed * self.rate)
        if tokens >= 1:
            bucket[0] = tokens - 1
            return 0
        bucket[0] = tokens
        bucket[2] += 1
        return max(1, math.ceil((1 - tokens) / self.rate))

    def admit(self, key: str, now: float) -> int:
        """`retry_after`, or CLOSE for a caller past the second threshold."""
        wait = self.retry_after(key, now)
        if wait and self._buckets[key][2] > self.burst:
            return CLOSE
        return wait

    def forget(self, keep: Container[str]) -> None:
        """Drop the buckets of instances that are gone (called on each new snapshot): a new
        instance given a deleted one's id starts with a full bucket."""
        for key in [k for k in self._buckets if k.startswith("i-") and k not in keep]:
            del self._buckets[key]

    def _prune(self, now: float) -> None:
        rate, burst = self.rate, self.burst
        idle = [k for k, (tokens, last, _) in self._buckets.items()
                if tokens + max(0.0, now - last) * rate >= burst]
        for key in idle:
            del self._buckets[key]
        if len(self._buckets) >= self.MAX_KEYS:  # all busy: start over rather than grow
            self._buckets.clear()
