"""What the data plane counts: plain integers on the hot path, metric families at scrape."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ecs_imds.metrics import counter

if TYPE_CHECKING:
    from prometheus_client.core import Metric

# Upper bounds (seconds) of the latency histogram's buckets.
BUCKETS = (0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1)


class Stats:
    SAMPLE = 16  # one connection in SAMPLE is timed (see timed.py)

    __slots__ = ("_connections", "buckets", "responses", "tokens_issued", "total_seconds")

    def __init__(self) -> None:
        self.responses: Counter[int] = Counter()
        self.tokens_issued = 0
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one: above every bound
        self.total_seconds = 0.0
        self._connections = 0

    def sampled(self) -> bool:
        """Whether the next connection is one to time."""
        self._connections += 1
        return self._connections % self.SAMPLE == 0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(BUCKETS, seconds)] += 1
        self.total_seconds += seconds

    def count(self, status: int) -> None:
        self.responses[status] += 1

    def metrics(self) -> Iterator[Metric]:
        from prometheus_client.core import HistogramMetricFamily  # at a scrape (see metrics)

        by_class: Counter[tuple[str, ...]] = Counter()
        for status, n in self.responses.items():
            by_class[(f"{status // 100}xx", str(status))] += n
        yield counter("ecs_imds_dataplane_responses", "Data plane responses by status",
                      ["class", "code"], dict(by_class))
        yield counter("ecs_imds_tokens_issued", "Session tokens issued", [],
                      {(): self.tokens_issued})
        # A 401 answers nothing but a token that is invalid, expired or another instance's.
        yield counter("ecs_imds_tokens_refused", "Requests refused for their token", [],
                      {(): self.responses.get(401, 0)})
        cumulative, running = [], 0
        for bound, n in zip((*map(str, BUCKETS), "+Inf"), self.buckets, strict=True):
            running += n
            cumulative.append((bound, running))
        yield HistogramMetricFamily(
            "ecs_imds_dataplane_processing_seconds",
            "Time to answer what one read from an instance brought (parse, decide, write), "
            f"on one connection in {self.SAMPLE} handed to the event loop",
            buckets=cumulative, sum_value=self.total_seconds)
