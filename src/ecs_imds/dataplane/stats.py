"""What the data plane counts: plain integers on the hot path, metric families at scrape."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import Metric

from ..api.metrics import counter


class Stats:
    __slots__ = ("responses", "tokens_issued")

    def __init__(self) -> None:
        self.responses: Counter[int] = Counter()
        self.tokens_issued = 0

    def count(self, status: int) -> None:
        self.responses[status] += 1

    def metrics(self) -> Iterator[Metric]:
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
