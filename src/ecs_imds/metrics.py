"""Prometheus metrics, read at scrape time from what the data plane counts anyway.

The data plane keeps plain counters (cheap on the hot path); this collector turns them
into metric families only when /metrics is asked for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ecs_imds.protocol.snapshot import Snapshot


class Metrics:
    def __init__(self, snapshot: Callable[[], Snapshot | None],
                 sources: Callable[[], Iterable[Any]]) -> None:
        self.snapshot = snapshot
        self.sources = sources
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        for source in self.sources():
            yield from source.metrics()
        snap = self.snapshot()
        version = GaugeMetricFamily("ecs_imds_snapshot_version",
                                    "Store version the served snapshot was built from")
        age = GaugeMetricFamily("ecs_imds_snapshot_age_seconds",
                                "Seconds since the served snapshot was built")
        stale = GaugeMetricFamily("ecs_imds_snapshot_stale",
                                  "1 while the store cannot be read and the last snapshot "
                                  "is served")
        instances = GaugeMetricFamily("ecs_imds_instances", "Instances in the served snapshot")
        if snap is not None:
            version.add_metric([], snap.version)
            age.add_metric([], time.time() - snap.built_at)
            stale.add_metric([], 1 if snap.stale else 0)
            instances.add_metric([], len(snap.by_id))
        yield from (version, age, stale, instances)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def counter(name: str, documentation: str, labels: list[str],
            values: dict[tuple[str, ...], float]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family
