"""Warnings that a peer can cause, logged at most once a second per kind.

Whatever an instance can make happen at will — a refused PROXY header, a broken limit, a
failed accept, a credential broker that keeps failing — must not be a way to fill the disk
or to spend the event loop on logging. Each kind of warning is logged at most once per
`interval`; the next one that is logged says how many were left out meanwhile.
"""

from __future__ import annotations

import logging
import time
from typing import Any


class Warnings:
    __slots__ = ("_last", "_log", "_suppressed", "interval")

    def __init__(self, log: logging.Logger, interval: float = 1.0) -> None:
        self._log = log
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, kind: str, message: str, *args: Any) -> bool:
        """Log `message % args` unless `kind` was logged less than `interval` ago; True when
        it was logged."""
        now = time.monotonic()
        if now - self._last.get(kind, -self.interval) < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        self._last[kind] = now
        left_out = self._suppressed.pop(kind, 0)
        if left_out:
            message += " (%d more like it left out since the last one)"
            args = (*args, left_out)
        self._log.warning(message, *args)
        return True
