"""Fleet mode at scale: as many scoped servers as this machine holds, against a primary and a
streaming replica, running the real change-feed code.

    python bench/subscribers.py [--subscribers 1000] [--processes 4] [--instances 100000]
                                [--rate 20] [--seconds 60] [--away 60] [--poll 1.0]
                                [--out BENCHMARKS.md]

A PostgreSQL primary and a hot standby (`pg_basebackup -R`, unix sockets, PostgreSQL's own
durability) hold a fleet of synthetic instances placed 100 per host. Each subscriber is what
a server scoped to one host runs — its own store (one connection to the standby), its own
`SnapshotBuilder` scoped to its host and its own `ChangeFeed` polling the change log every
`poll` seconds — spread over a few worker processes. Only the data plane is left out: what
is measured is the time from a write's commit on the primary until the subscriber of that
instance's host publishes a snapshot holding it.

1. Start: every subscriber builds its first snapshot (time until all have).
2. Steady state: `rate` writes per second (`put_instance`, the control plane's write) to
   random instances for `seconds`: change-to-served p50/p99/max across all subscribers; the
   CPU time of the standby's and the primary's PostgreSQL processes per second and per
   subscriber; connections per subscriber; the subscribers' own CPU.
3. The standby away: it is stopped for `away` seconds while the writes go on, then started:
   the time until every subscriber serves every change made meanwhile (from the change log:
   no subscriber reads its scope again).

Results go to stdout and into BENCHMARKS.md between the `bench:subscribers` markers; the
capacity plan in docs/capacity.md is worked out from them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "tests"))

import fleetgen  # noqa: E402
from fleet import PER_HOST, host_of, machine, placed_fleet  # noqa: E402
from run import write_report as write_between  # noqa: E402

from ecs_imds.protocol.snapshot import Snapshot  # noqa: E402
from ecs_imds.store import open_store  # noqa: E402
from ecs_imds.store.base import StoreSettings  # noqa: E402
from ecs_imds.store.feed import ChangeFeed, SnapshotBuilder  # noqa: E402
from ecs_imds.store.keys import ensure_token_keys  # noqa: E402
from pg import PostgresCluster  # noqa: E402

BEGIN, END = "<!-- bench:subscribers:begin -->", "<!-- bench:subscribers:end -->"
STATUS_EVERY = 0.5
# A thousand servers on one standby: at most 5 s between their retries while it is away
# (store.retry-max; docs/capacity.md). Retrying every second, as many feeds kept a standby
# that restarted refusing them for 10 minutes.
SETTINGS = StoreSettings(retry_max=5.0)


# --- a worker: many subscribers in one process ---------------------------------------------------
class Subscriber:
    """One scoped server's change feed, recording when it published which version."""

    def __init__(self, url: str, host: str, poll: float) -> None:
        self.host = host
        self.store = open_store(url, Path("/nonexistent"), replica=True, settings=SETTINGS)
        self.builder = SnapshotBuilder(self.store, scope=frozenset({host}))
        self.published: list[tuple[float, int]] = []
        first = self.builder.build()
        self.published.append((time.time(), first.version))
        self.feed = ChangeFeed(self.builder, first, self.publish, interval=poll,
                               settings=SETTINGS)

    def publish(self, snap: Snapshot) -> None:
        if not snap.stale:
            self.published.append((time.time(), snap.version))


class Resyncs(logging.Handler):
    """Counts the feeds that found the change log too short and read their scope again."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "does not reach back" in record.getMessage()


def worker(url: str, hosts: list[str], poll: float, out: Path) -> None:
    """Run subscribers for `hosts` until SIGTERM; report status lines on stdout, then write
    every subscriber's publications to `out`."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    resyncs = Resyncs()
    logging.getLogger("ecs_imds.feed").addHandler(resyncs)
    started = time.monotonic()
    subs = [Subscriber(url, host, poll) for host in hosts]
    print(f"READY {time.monotonic() - started:.3f}", flush=True)
    for sub in subs:
        sub.feed.start()
    while not stop.wait(STATUS_EVERY):
        versions = [s.feed.current.version for s in subs]
        stale = sum(s.feed.current.stale for s in subs)
        print(f"STATUS {min(versions)} {stale} {time.process_time():.3f}", flush=True)
    for sub in subs:
        sub.feed.stop()
    out.write_text(json.dumps({"published": {s.host: s.published for s in subs},
                               "resyncs": resyncs.count}))
    for sub in subs:
        sub.store.close()


# --- the orchestra -------------------------------------------------------------------------------
class Workers:
    """The worker processes, and the last status line of each."""

    def __init__(self, work: Path, url: str, hosts: list[str], processes: int,
                 poll: float) -> None:
        self.outs = [work / f"worker-{n}.json" for n in range(processes)]
        self.procs = []
        self.status: list[tuple[int, int, float]] = [(0, 0, 0.0)] * processes
        self.ready: list[float | None] = [None] * processes
        for n in range(processes):
            mine = hosts[n::processes]
            self.procs.append(subprocess.Popen(
                [sys.executable, __file__, "--worker", url, str(poll), str(self.outs[n]),
                 *mine], stdout=subprocess.PIPE, text=True, bufsize=1))
            threading.Thread(target=self._read, args=(n,), daemon=True).start()

    def _read(self, n: int) -> None:
        stream = self.procs[n].stdout
        assert stream is not None
        for line in stream:
            parts = line.split()
            if parts[0] == "READY":
                self.ready[n] = float(parts[1])
            elif parts[0] == "STATUS":
                self.status[n] = (int(parts[1]), int(parts[2]), float(parts[3]))

    def wait(self, until: Any, timeout: float) -> float:
        started = time.monotonic()
        while not until():
            if any(p.poll() is not None for p in self.procs):
                raise SystemExit("a worker exited")
            if time.monotonic() - started > timeout:
                raise SystemExit("the workers did not get there")
            time.sleep(0.05)
        return time.monotonic() - started

    @property
    def version(self) -> int:
        return min(s[0] for s in self.status)

    @property
    def stale(self) -> int:
        return sum(s[1] for s in self.status)

    @property
    def cpu(self) -> float:
        return sum(s[2] for s in self.status)

    def stop(self) -> tuple[dict[str, list[tuple[float, int]]], int]:
        """Stop them: what every subscriber published, and how many read their scope
        again (the change log did not reach back)."""
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        published: dict[str, list[tuple[float, int]]] = {}
        resyncs = 0
        for p, out in zip(self.procs, self.outs, strict=True):
            p.wait(timeout=120)
            done = json.loads(out.read_text())
            published |= {h: [(t, v) for t, v in pubs] for h, pubs in done["published"].items()}
            resyncs += done["resyncs"]
        return published, resyncs


def pg_cpu(cluster: PostgresCluster) -> float:
    """CPU seconds (user + system) of a cluster's processes so far."""
    pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
    pids = [pid, *children(pid)]
    ticks = 0
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def connections(cluster: PostgresCluster, db: str) -> int:
    import psycopg

    with psycopg.connect(cluster.url(db), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                           "AND application_name LIKE 'ecs-imds%%'", (db,)).fetchone()
    return int(row[0]) if row else 0


@dataclass
class Write:
    at: float  # when the commit returned (wall clock)
    version: int
    host: str


def writing(url: str, size: int, rate: float, seconds: float, seed: int) -> list[Write]:
    """`rate` writes per second to random instances, each renaming one."""
    store = open_store(url, Path("/nonexistent"))
    rng = random.Random(seed)
    docs = {}
    writes: list[Write] = []
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        target = rng.randrange(size)
        doc = docs.get(target) or fleetgen.instance(target) | {"dedicated-host-id":
                                                                 host_of(target)}
        docs[target] = doc | {"instance-name": f"w{seed}-{n}"}
        version = store.put_instance(docs[target], None)
        writes.append(Write(time.time(), version, host_of(target)))
        n += 1
        time.sleep(max(0.0, start + n / rate - time.monotonic()))
    store.close()
    return writes


def served(writes: list[Write], published: dict[str, list[tuple[float, int]]]) -> list[float]:
    """Per write: when (wall clock) its host's subscriber first published it."""
    out = []
    for w in writes:
        at = next((t for t, v in published[w.host] if v >= w.version), None)
        if at is None:
            raise SystemExit(f"version {w.version} never published for {w.host}")
        out.append(at)
    return out


@dataclass
class Result:
    subscribers: int
    processes: int
    instances: int
    rate: float
    seconds: float
    poll: float
    started_s: float
    steady_ms: list[float]
    replica_cpu: float  # CPU seconds per second, the standby's processes
    primary_cpu: float
    workers_cpu: float  # CPU seconds per second, every subscriber together
    conns: int
    away: float
    catch_up_s: float
    away_ms: list[float]
    resyncs: int


def run(work: Path, subscribers: int, processes: int, size: int, rate: float,
        seconds: float, away: float, poll: float) -> Result:
    primary = PostgresCluster(durable=True, max_connections=subscribers + 100)
    standby: PostgresCluster | None = None
    workers: Workers | None = None
    try:
        primary.start()
        url = primary.create_database("subs")
        store = open_store(url, work)
        print(f"writing a fleet of {size:,}", flush=True)
        doc = placed_fleet(size)
        store.write_fleet(doc["defaults"], doc["instances"])
        ensure_token_keys(store)
        store.close()
        del doc
        standby = PostgresCluster(primary=primary)
        standby.start()
        db = url.split("/")[3].split("?")[0]
        hosts = [host_of(n * PER_HOST) for n in range(subscribers)]
        print(f"starting {subscribers} subscribers in {processes} processes", flush=True)
        started = time.monotonic()
        workers = Workers(work, standby.url(db), hosts, processes, poll)
        workers.wait(lambda: all(r is not None for r in workers.ready), timeout=1800)
        start_s = time.monotonic() - started
        time.sleep(2 * poll + 1)
        conns = connections(standby, db)

        print(f"steady: {rate:g} writes/s for {seconds:g} s", flush=True)
        cpu0 = pg_cpu(standby), pg_cpu(primary), workers.cpu, time.monotonic()
        steady = writing(url, size, rate, seconds, 1)
        cpu1 = pg_cpu(standby), pg_cpu(primary), workers.cpu, time.monotonic()
        elapsed = cpu1[3] - cpu0[3]
        workers.wait(lambda: workers.version >= steady[-1].version, timeout=60)

        print(f"the standby away for {away:g} s", flush=True)
        standby.stop()
        meanwhile = writing(url, size, rate, away, 2)
        standby.start()
        back = time.time()
        target = meanwhile[-1].version
        catch_up = workers.wait(lambda: workers.version >= target and workers.stale == 0,
                                timeout=600)
        time.sleep(1)
        published, resyncs = workers.stop()
        workers = None
        result = Result(
            subscribers, processes, size, rate, seconds, poll, start_s,
            [max(0.0, at - w.at) * 1000 for at, w in zip(served(steady, published), steady,
                                                          strict=True)],
            (cpu1[0] - cpu0[0]) / elapsed, (cpu1[1] - cpu0[1]) / elapsed,
            (cpu1[2] - cpu0[2]) / elapsed, conns, away, catch_up,
            [(at - back) * 1000 for at in served(meanwhile, published)], resyncs)
        print(f"  {result}"[:400], flush=True)
        return result
    finally:
        if workers is not None:
            with contextlib.suppress(Exception):
                workers.stop()
        if standby is not None:
            standby.close()
        primary.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(r: Result, command: str, where: list[str]) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        BEGIN, "", f"Run {now} with `{command}`.", "", *where, "",
        f"{r.subscribers:,} subscribers (the change feed of a server scoped to one host of "
        f"{PER_HOST} instances) in {r.processes} processes, on a hot standby of a primary "
        f"holding {r.instances:,} instances; each polls the change log every {r.poll:g} s.", "",
        "| measure | value |", "|---|---:|",
        f"| all subscribers started (first snapshot built) | {r.started_s:.1f} s |",
        f"| writes on the primary | {r.rate:g}/s for {r.seconds:g} s "
        f"({len(r.steady_ms)} writes) |",
        f"| change-to-served p50 / p99 / max | {pct(r.steady_ms, 0.5):.0f} / "
        f"{pct(r.steady_ms, 0.99):.0f} / {max(r.steady_ms):.0f} ms |",
        f"| standby CPU (all its processes) | {r.replica_cpu:.3f} s/s = "
        f"{r.replica_cpu / r.subscribers * 1e3:.3f} ms/s per subscriber |",
        f"| primary CPU (writes, WAL to the standby) | {r.primary_cpu:.3f} s/s |",
        f"| subscribers' own CPU | {r.workers_cpu:.3f} s/s = "
        f"{r.workers_cpu / r.subscribers * 1e3:.3f} ms/s per subscriber |",
        f"| connections to the standby | {r.conns} = {r.conns / r.subscribers:.2f} per "
        "subscriber |",
        f"| standby stopped {r.away:g} s, writes going on: every subscriber current again | "
        f"{r.catch_up_s:.2f} s after it started ({len(r.away_ms)} changes; each served "
        f"{pct(r.away_ms, 0.5):.0f} ms p50, {max(r.away_ms):.0f} ms max after the start) |",
        f"| subscribers that read their scope again | {r.resyncs} |",
        "", END])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, poll, out, *hosts = sys.argv[2:]
        worker(url, hosts, float(poll), Path(out))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--away", type=float, default=60)
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    opts = parser.parse_args()
    if opts.subscribers * PER_HOST > opts.instances:
        raise SystemExit("--instances must hold 100 instances per subscriber")
    command = " ".join(["python", "bench/subscribers.py", *sys.argv[1:]])
    work = Path(tempfile.mkdtemp(prefix="ecs-imds-subs-"))
    work.chmod(0o755)
    where = machine()  # the load when the run begins, not after it
    try:
        result = run(work, opts.subscribers, opts.processes, opts.instances, opts.rate,
                     opts.seconds, opts.away, opts.poll)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(result, command, where)
    print(text)
    write_between(opts.out, text, BEGIN, END)
    print(f"medians: steady {statistics.median(result.steady_ms):.0f} ms")


if __name__ == "__main__":
    main()
