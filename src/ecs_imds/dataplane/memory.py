"""Giving memory back after a burst.

A burst of connections — a flood, hundreds of peers cut off with answers unread — frees what
it used, but the C allocator keeps the freed heap for later: the server's resident memory
would stay at the burst's high-water mark for good. glibc's `malloc_trim` hands it back to
the system. It runs in a thread of its own (a ctypes call releases the GIL), never on the
event loop, and only around a burst — connections ending in numbers, or fewer that had
answers backed up (`BACKED_UP`): at most once a second
while it lasts and for `tail` seconds after it (the burst's last connections may live until
their deadline), each time some connection ended since the trim before. Where the C library
has no `malloc_trim` (musl, macOS) nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable

# Connections ended since the last trim that make a burst, and the least time between two
# trims (a trim walks the heap: a few milliseconds, off the loop).
CHURN = 256
INTERVAL = 1.0
# What one connection ended with its answers backed up (its writing paused: more than the
# transport's high-water mark of 64 KiB unsent, up to `limits.write-buffer`) counts as:
# an ordinary one leaves a few KiB. Without it, the 64 connections a peer that never reads
# may hold per worker, each let go with up to 256 KiB, were not a burst: the 15 MB they
# had used stayed with the process for good.
BACKED_UP = 16


def _malloc_trim() -> Callable[[], None] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is None:
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


class Trimmer:
    """Counts connections that ended (`ended`, one with answers backed up as `BACKED_UP`);
    `tick()`, from the sweeper, trims during a burst and for `tail` seconds after it."""

    def __init__(self, tail: float, trim: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tail = tail
        self._trim = trim if trim is not None else _malloc_trim()
        self._clock = clock
        self.ended = 0
        self.trims = 0
        self._until = 0.0  # trims may run until then: the burst's end and its tail
        self._last = 0.0
        self._busy = threading.Lock()
        self.thread: threading.Thread | None = None  # the last trim's

    def tick(self) -> None:
        now = self._clock()
        if self.ended >= CHURN:
            self._until = now + self.tail
        if (self._trim is None or not self.ended or now > self._until
                or now - self._last < INTERVAL or not self._busy.acquire(blocking=False)):
            return
        self.ended, self._last = 0, now
        self.thread = threading.Thread(target=self._run, name="ecs-imds-trim", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            assert self._trim is not None
            self._trim()
            self.trims += 1
        finally:
            self._busy.release()
