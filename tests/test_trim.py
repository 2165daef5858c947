"""Memory given back after a burst of connections (dataplane/memory.py), with glibc's real
malloc_trim and a clock the test moves."""

from __future__ import annotations

from ecs_imds.dataplane.memory import CHURN, INTERVAL, Trimmer, _malloc_trim


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ticked(t: Trimmer, clock: Clock, ended: int, later: float = INTERVAL) -> int:
    """`ended` connections end, `later` seconds pass, the sweeper ticks: trims done since."""
    clock.now += later
    before = t.trims
    t.ended += ended
    t.tick()
    if t.thread is not None:
        t.thread.join(timeout=30)
    return t.trims - before


def test_this_libc_has_malloc_trim() -> None:
    assert _malloc_trim() is not None  # Debian's glibc: the trims below are real


def test_trims_during_a_burst_and_for_its_tail_only() -> None:
    clock = Clock()
    t = Trimmer(tail=10, clock=clock)
    assert ticked(t, clock, CHURN - 1) == 0  # ordinary traffic: never trimmed
    assert ticked(t, clock, 1) == 1  # CHURN since the last trim: a burst
    assert ticked(t, clock, CHURN, later=INTERVAL / 2) == 0  # at most once an INTERVAL
    assert ticked(t, clock, 0, later=INTERVAL / 2) == 1  # ... then what ended is trimmed
    assert ticked(t, clock, 0) == 0  # nothing ended since: nothing to give back
    assert ticked(t, clock, 3, later=8) == 1  # the burst's last connections, in its tail
    assert ticked(t, clock, 3, later=3) == 0  # past the tail: ordinary traffic again
    assert ticked(t, clock, CHURN) == 1  # the next burst


def test_without_malloc_trim_nothing_is_done() -> None:
    clock = Clock()
    t = Trimmer(tail=10, clock=clock)
    t._trim = None
    assert ticked(t, clock, 10 * CHURN) == 0 and t.thread is None
