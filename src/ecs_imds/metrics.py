"""Prometheus metrics, read at scrape time from what the data plane counts anyway.

The data plane keeps plain counters (cheap on the hot path); this collector turns them
into metric families only when /metrics is asked for.

With `serve --workers N`, every worker counts for itself, and only the first one answers
/metrics. So that it reports the whole server, each worker publishes its metric families
about once a second into its slot of a `MetricsBoard`: a small shared-memory segment made
before the fork. The first worker sums every worker's counters and histograms, and combines
their gauges by what each means (the oldest snapshot version, the largest age, stale if any
is). A slot is written under a sequence number (odd while being written), so a reader never
takes half of one.

`prometheus_client` is imported at the first scrape (or publication), not at start: a server
that is never scraped (no API, one worker: the server beside each host) never loads it and
the part of the standard library it brings (2 MB of a scoped server's resident memory).
"""

from __future__ import annotations

import json
import mmap
import platform
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from ecs_imds.protocol.snapshot import Snapshot

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# How gauges of several workers combine (any other gauge is summed: memory, descriptors).
_GAUGES: dict[str, Callable[[Iterable[float]], float]] = {
    "ecs_imds_snapshot_version": min,
    "ecs_imds_snapshot_age_seconds": max,
    "ecs_imds_snapshot_stale": max,
    "ecs_imds_instances": max,
    "process_start_time_seconds": min,
    "process_max_fds": max,
}


class Metrics:
    """The metrics of this process (its sources, its snapshot, the process itself), and,
    given a board, the sum of every worker's."""

    def __init__(self, snapshot: Callable[[], Snapshot | None],
                 sources: Callable[[], Iterable[Any]],
                 board: MetricsBoard | None = None, worker: int = 0) -> None:
        self.snapshot = snapshot
        self.sources = sources
        self.board = board
        self.worker = worker
        self._registry: CollectorRegistry | None = None

    @property
    def registry(self) -> CollectorRegistry:
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry()
            self._registry.register(self)
        return self._registry

    def local(self) -> list[Metric]:
        """This process's metric families."""
        from prometheus_client import ProcessCollector

        families: list[Metric] = []
        for source in self.sources():
            families += source.metrics()
        families += self._snapshot_gauges()
        families += ProcessCollector(registry=None).collect()
        return families

    def collect(self) -> Iterator[Metric]:
        families = self.local()
        workers = 1
        if self.board is not None:
            others = [self.board.read(i) for i in range(self.board.slots) if i != self.worker]
            published = [f for f in others if f is not None]
            workers += len(published)
            families = combine([families, *published])
        yield from families
        from prometheus_client.core import GaugeMetricFamily

        count = GaugeMetricFamily("ecs_imds_workers", "Data plane processes counted here")
        count.add_metric([], workers)
        yield count
        yield build_info()

    def publish(self) -> None:
        """This worker's families into its slot of the board (a worker calls it each second)."""
        if self.board is not None:
            self.board.write(self.worker, self.local())

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import generate_latest
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def _snapshot_gauges(self) -> list[Metric]:
        from prometheus_client.core import GaugeMetricFamily

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
        return [version, age, stale, instances]


def counter(name: str, documentation: str, labels: list[str],
            values: dict[tuple[str, ...], float]) -> CounterMetricFamily:
    from prometheus_client.core import CounterMetricFamily

    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


def build_info() -> GaugeMetricFamily:
    from prometheus_client.core import GaugeMetricFamily

    try:
        release = version("ecs-imds")
    except PackageNotFoundError:
        release = "unknown"
    info = GaugeMetricFamily("ecs_imds_build_info", "The running release (always 1)",
                             labels=["version", "python"])
    info.add_metric([release, platform.python_version()], 1)
    return info


def combine(workers: list[list[Metric]]) -> list[Metric]:
    """Several workers' families as one: samples with the same name and labels are summed,
    or, for the gauges of `_GAUGES`, combined as said there."""
    from prometheus_client.core import Metric

    merged: dict[str, Metric] = {}
    values: dict[tuple[str, str, tuple[tuple[str, str], ...]], list[float]] = {}
    for families in workers:
        for family in families:
            merged.setdefault(family.name, Metric(family.name, family.documentation,
                                                  family.type))
            for sample in family.samples:
                key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                values.setdefault(key, []).append(sample.value)
    for (name, sample_name, labels), found in values.items():
        how = _GAUGES.get(name, sum) if merged[name].type == "gauge" else sum
        merged[name].add_sample(sample_name, dict(labels), how(found))
    return list(merged.values())


class MetricsBoard:
    """One slot per worker in anonymous shared memory; make it before forking the workers."""

    SLOT = 64 * 1024
    _HEAD = struct.Struct("<QI")  # sequence (odd while written), length of the JSON

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._mem = mmap.mmap(-1, slots * self.SLOT)  # MAP_SHARED: children see writes

    def write(self, slot: int, families: list[Metric]) -> None:
        data = json.dumps([[f.name, f.documentation, f.type,
                            [[s.name, s.labels, s.value] for s in f.samples]]
                           for f in families], separators=(",", ":")).encode()
        if len(data) > self.SLOT - self._HEAD.size:
            raise ValueError(f"worker metrics of {len(data)} bytes do not fit a slot")
        base = slot * self.SLOT
        sequence, _ = self._HEAD.unpack_from(self._mem, base)
        self._HEAD.pack_into(self._mem, base, sequence + 1, 0)
        self._mem[base + self._HEAD.size:base + self._HEAD.size + len(data)] = data
        self._HEAD.pack_into(self._mem, base, sequence + 2, len(data))

    def read(self, slot: int) -> list[Metric] | None:
        """The families a worker published last; None when it has not published yet."""
        base = slot * self.SLOT
        for _ in range(100):
            before, length = self._HEAD.unpack_from(self._mem, base)
            if before % 2:
                continue
            data = self._mem[base + self._HEAD.size:base + self._HEAD.size + length]
            if self._HEAD.unpack_from(self._mem, base)[0] == before:
                break
        else:
            return None
        if before == 0:
            return None
        from prometheus_client.core import Metric

        families = []
        for name, documentation, kind, samples in json.loads(data):
            family = Metric(name, documentation, kind)
            for sample_name, labels, value in samples:
                family.add_sample(sample_name, labels, value)
            families.append(family)
        return families
