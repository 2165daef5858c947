"""Backoff between attempts on a failing store: waits grow twice as long after each failure
in a row, each a random part of its window (full jitter), never past the cap; a success
starts again from the first window."""

from __future__ import annotations

from ecs_imds.store.retry import Backoff


def test_windows_double_up_to_the_cap_and_start_again_after_a_success() -> None:
    backoff = Backoff(0.1, 1.0)
    for window in (0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0):
        assert 0 <= backoff.next() <= window
    assert backoff.failures == 7
    backoff.reset()
    assert backoff.next() <= 0.1


def test_the_waits_are_spread_not_the_same_for_everyone() -> None:
    waits = {round(Backoff(0.5, 0.5).next(), 6) for _ in range(50)}
    assert len(waits) > 40  # fifty servers failing together do not retry together
    assert max(waits) <= 0.5


def test_many_failures_in_a_row_stay_at_the_cap() -> None:
    backoff = Backoff(0.2, 2.0)
    assert max(backoff.next() for _ in range(10_000)) <= 2.0
