"""Per-instance token buckets (SPEC §8): bursts, refill, Retry-After, isolation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecs_imds.protocol.ratelimit import RateLimiter

T0 = 1_800_000_000.0


def allowed(limiter: RateLimiter, n: int, key: str = "i-a", now: float = T0) -> int:
    return sum(limiter.retry_after(key, now) == 0 for _ in range(n))


def test_burst_then_429() -> None:
    limiter = RateLimiter(rate=10, burst=5)
    assert allowed(limiter, 5) == 5
    assert limiter.retry_after("i-a", T0) == 1
    assert allowed(limiter, 100) == 0


def test_refill_at_rate() -> None:
    limiter = RateLimiter(rate=10, burst=5)
    assert allowed(limiter, 5) == 5
    # 0.1 s at 10/s = one request (plus a microsecond: epoch floats have ~0.2 µs steps)
    assert allowed(limiter, 5, now=T0 + 0.100001) == 1
    assert allowed(limiter, 5, now=T0 + 0.35) == 2
    # the bucket never holds more than the burst
    assert allowed(limiter, 50, now=T0 + 3600) == 5


def test_retry_after_is_whole_seconds_and_honest() -> None:
    limiter = RateLimiter(rate=0.25, burst=1)  # one request every 4 s
    assert limiter.retry_after("i-a", T0) == 0
    wait = limiter.retry_after("i-a", T0)
    assert wait == 4
    assert limiter.retry_after("i-a", T0 + 3) == 1  # asking early does not cost a token
    assert limiter.retry_after("i-a", T0 + wait) == 0


def test_wall_clock_stepping_back_does_not_lock_instances_out() -> None:
    """The data plane passes time.time(): when NTP steps the clock back an hour, an instance
    with tokens left must not be refused for that hour."""
    limiter = RateLimiter(rate=10, burst=5)
    assert allowed(limiter, 1) == 1
    assert limiter.retry_after("i-a", T0 - 3600) == 0
    assert allowed(limiter, 10, now=T0 - 3600) == 3  # what was left of the burst
    assert limiter.retry_after("i-a", T0 - 3600) <= 1
    assert limiter.retry_after("i-a", T0 - 3599.5) == 0  # refills from the new "now"


def test_instances_do_not_share_buckets() -> None:
    limiter = RateLimiter(rate=1, burst=2)
    assert allowed(limiter, 10, "i-noisy") == 2
    assert allowed(limiter, 2, "i-quiet") == 2
    assert allowed(limiter, 1, "i-quiet") == 0
    assert allowed(limiter, 1, "i-third") == 1


def test_rate_zero_turns_limiting_off() -> None:
    limiter = RateLimiter(rate=0, burst=0)
    assert allowed(limiter, 10_000) == 10_000


@pytest.mark.parametrize(("rate", "burst"), [(-1, 10), (1, 0), (1, 0.5)])
def test_invalid_settings_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst)


def test_forget_drops_gone_instances_only() -> None:
    limiter = RateLimiter(rate=1, burst=1)
    for key in ("i-a", "i-b"):
        assert limiter.retry_after(key, T0) == 0
    limiter.forget({"i-a"})
    assert limiter.retry_after("i-a", T0) > 0  # still empty: kept
    assert limiter.retry_after("i-b", T0) == 0  # forgotten: a fresh bucket


@given(rate=st.floats(0.1, 1000), burst=st.integers(1, 50),
       gaps=st.lists(st.floats(0, 5), min_size=1, max_size=200))
def test_never_more_than_burst_plus_rate_times_elapsed(rate: float, burst: int,
                                                        gaps: list[float]) -> None:
    limiter = RateLimiter(rate, burst)
    now, granted = T0, 0
    for gap in gaps:
        now += gap
        granted += limiter.retry_after("i-a", now) == 0
    assert granted <= burst + rate * (now - T0) + 1e-6


@given(rate=st.floats(0.01, 100), burst=st.integers(1, 10), n=st.integers(0, 20),
       early=st.floats(0, 1))
def test_waiting_retry_after_is_enough(rate: float, burst: int, n: int, early: float) -> None:
    limiter = RateLimiter(rate, burst)
    for _ in range(burst + n):
        limiter.retry_after("i-a", T0)
    wait = limiter.retry_after("i-a", T0)
    assert wait >= 1
    assert wait == math.ceil(wait)
    assert limiter.retry_after("i-a", T0 + wait) == 0


@given(rate=st.floats(0.1, 100), burst=st.integers(1, 20))
def test_a_patient_client_is_always_served(rate: float, burst: int) -> None:
    """A client that asks once per 1/rate seconds is never refused (a microsecond more, so
    that the rounding of epoch-sized floats cannot make an interval look shorter)."""
    limiter = RateLimiter(rate, burst)
    for i in range(100):
        assert limiter.retry_after("i-a", T0 + i * (1 / rate + 1e-6)) == 0
