"""What the data plane counts: plain integers on the hot path, metric families at scrape."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import Metric

from ..api.metrics import counter


class Stats:
    __slots__ = ("responses",)

    def __init__(self) -> None:
        self.responses: Counter[int] = Counter()

    def count(self, status: int) -> None:
        self.responses[status] += 1

    def metrics(self) -> Iterator[Metric]:
        by_class: Counter[tuple[str, ...]] = Counter()
        for status, n in self.responses.items():
            by_class[(f"{status // 100}xx", str(status))] += n
        yield counter("ecs_imds_dataplane_responses", "Data plane responses by status",
                      ["class", "code"], dict(by_class))
