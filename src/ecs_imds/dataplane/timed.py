"""A connection whose every read is timed, for the latency histogram.

Timing costs two clock reads and a bucket per read; so only one connection in
`Stats.SAMPLE` is a `TimedConnection`, and the others pay nothing.
"""

from __future__ import annotations

from time import perf_counter

from ecs_imds.dataplane.http import HttpConnection


class TimedConnection(HttpConnection):
    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        start = perf_counter()
        HttpConnection.data_received(self, data)
        self.plane.stats.observe(perf_counter() - start)
