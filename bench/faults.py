"""`make bench`, fleet mode under faults: three servers on one PostgreSQL, every one read
without pause, while the database is stopped, crashes (kill -9), hangs (SIGSTOP of every
process), is cut off by a partition, runs out of connections (max_connections), and is
replaced by a restore of an earlier base backup.

    python bench/faults.py [--quick] [--hang 40] [--down 10] [--size 1000] [--out FILE]

`--quick` (hangs of 8 s, outages of 3 s) is for trying it; BENCHMARKS.md holds a full run.

Needs root: the database runs on TCP in a network namespace of its own and the servers in
another, joined by a veth pair (tests/faults.py), so that a partition is a link set down.
Readers and the data planes are in the servers' namespace; nothing leaves it.

For each fault:
- **failed reads**: answers other than 200 from the data planes, from the fault until the
  servers are current again (target 0);
- **truth**: seconds from the fault until every server's /readyz says what is so ("stale"
  while the store cannot be read; for the restore, "ready" only with the restored
  history), and the samples in which one said "ready" while it was not so (target ≤ 5 s,
  and none);
- **current**: seconds from the end of the fault (the database back, the link up, a
  connection free, the restored copy started) until every server serves a change written
  at that moment (target ≤ 2 s);
- **connections**: the most database connections one server held during the fault, and
  after it once idle (target: at most its pool's size, 10; back to one, its change feed's).

Then the cost of durability on SQLite: API writes (PATCH of metadata options) with
`synchronous=FULL` (the store's setting) and NORMAL.

The results go to stdout and into BENCHMARKS.md between its `bench:faults` markers.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "tests"))

import fleetgen  # noqa: E402

from ecs_imds.store.postgres import PostgresStore  # noqa: E402
from faults import (  # noqa: E402
    DB_IP,
    NETWORK,
    Partition,
    Reader,
    db_connections_tcp,
    enter_netns,
    in_netns,
)
from pg import PostgresCluster  # noqa: E402
from server import ServerProcess, free_port, get  # noqa: E402

BEGIN, END = "<!-- bench:faults:begin -->", "<!-- bench:faults:end -->"
SERVERS = 3
POOL = 10  # store.pool-size: the default
NAME = "/latest/meta-data/instance/instance-name"
PROBE = 1  # the instance whose name each fault's probe change sets
ROLE = "imds"  # the servers' database role: not a superuser, so the benchmark keeps a way in


@dataclass
class Outcome:
    fault: str
    seconds: float  # how long the fault lasted
    reads: int = 0
    failed: int = 0
    truth_s: float | None = None
    lies: int = 0
    current_s: float | None = None
    during: int = 0  # most connections of one server during the fault
    after: list[int] = field(default_factory=list)  # each server's, once idle
    notes: str = ""


@dataclass
class Sample:
    at: float
    server: int
    status: str
    served: bytes


class Sampler:
    """Every 50 ms, each server's /readyz and then the probe instance's name as it serves
    it (in the servers' namespace): what it said and what it did."""

    def __init__(self, servers: list[ServerProcess], netns: str) -> None:
        self.servers, self.netns = servers, netns
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        enter_netns(self.netns)
        clients = [srv.api() for srv in self.servers]
        while not self._stop.wait(0.05):
            for i, (srv, client) in enumerate(zip(self.servers, clients, strict=True)):
                try:
                    status = client.http.get("/readyz", timeout=2).json()["status"]
                except Exception as exc:
                    status = f"error {type(exc).__name__}"
                try:
                    served = get(srv.port, NAME, source(PROBE))[2]
                except OSError:
                    served = b"?"
                self.samples.append(Sample(time.monotonic(), i, status, served))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]


def source(n: int) -> str:
    return f"127.0.0.{n + 1}"


class Bench:
    """The database, the namespaces, three servers and their readers."""

    def __init__(self, work: Path, size: int) -> None:
        self.work, self.size = work, size
        self.partition = Partition()
        self.pg = PostgresCluster(max_connections=40)
        self.pg.listen_tcp(DB_IP, NETWORK, self.partition.db)
        self.pg.start()
        local = self.pg.create_database("faults")
        self.db = local.split("/")[3].split("?")[0]
        with psycopg.connect(local, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN")
            conn.execute(f'ALTER DATABASE "{self.db}" OWNER TO {ROLE}')
        self.servers: list[ServerProcess] = []
        fleet = fleetgen.fleet(size)
        aliases = {source(n): fleetgen.instance_id(n) for n in range(4)}
        for i in range(SERVERS):
            workdir = work / f"srv{i}"
            workdir.mkdir()
            port = free_port()
            url = f"postgresql://{ROLE}@{DB_IP}:5432/{self.db}?application_name=srv{i}"
            srv = ServerProcess(workdir, fleet, [{"bind": f"127.0.0.1:{port}",
                                                  "vpc-id": fleetgen.VPC, "aliases": aliases}],
                                store=url, limits={"rate": 0}, **{"poll-interval": 0.2})
            srv.port = port
            if self.servers:
                srv.launch(self.partition.launcher)
            else:
                srv.start(self.partition.launcher)
            self.servers.append(srv)
        for srv in self.servers:  # the data plane listens once its first snapshot is built
            if not wait_for(lambda s=srv: readyz(s) == "ready", 120):
                raise SystemExit(f"a server never got ready: {srv.log()[-2000:]}")
        self._admin: PostgresStore | None = None
        self.probes = 0

    def admin(self) -> PostgresStore:
        """The benchmark's own way into the store: the unix socket, as a superuser."""
        if self._admin is None:
            self._admin = PostgresStore(self.pg.url(self.db))
        return self._admin

    def probe(self, timeout: float = 60.0) -> bytes:
        """Write a change (the probe instance's name) as soon as the store takes it."""
        self.probes += 1
        name = f"probe-{self.probes}"
        doc = fleetgen.instance(PROBE) | {"instance-name": name}
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.admin().put_instance(doc, None)
                return name.encode()
            except psycopg.Error:
                if time.monotonic() > deadline:
                    raise
                if self._admin is not None:
                    self._admin.close()
                    self._admin = None
                time.sleep(0.05)

    def connections(self) -> list[int]:
        return [db_connections_tcp(srv.proc.pid, self.partition.srv)  # type: ignore[union-attr]
                for srv in self.servers]

    def run(self, fault: str, seconds: float, start: Callable[[], None],
            end: Callable[[], None], away: bool = True,
            lost: frozenset[bytes] = frozenset()) -> Outcome:
        """Readers and a sampler on every server; `start()`, `seconds` of fault (its
        connections sampled), `end()`; then until every server serves a change written at
        once, and its connections once idle."""
        if away:
            self.probe()  # a known state first (a restore has its own: the lost commits)
        readers = [Reader(srv.port, NAME, source(PROBE), self.partition.srv)
                   for srv in self.servers]
        sampler = Sampler(self.servers, self.partition.srv)
        outcome = Outcome(fault, seconds)
        try:
            time.sleep(1)
            began = time.monotonic()
            start()
            while time.monotonic() - began < seconds:
                outcome.during = max(outcome.during, *self.connections())
                time.sleep(0.5)
            ending = time.monotonic()  # from here the database may answer again
            end()
            ended = time.monotonic()
            name = self.probe()
            caught = wait_for(lambda: all(name in r.first_seen for r in readers), 60)
            outcome.current_s = max(r.first_seen[name] for r in readers) - ended \
                if caught else None
            wait_for(lambda: all(s.status == "ready" for s in sampler.samples[-SERVERS:]), 30)
        finally:
            time.sleep(0.5)
            sampler.stop()
            for reader in readers:
                reader.stop()
        outcome.reads = sum(r.ok for r in readers)
        outcome.failed = sum(len(r.failed) for r in readers)
        kinds = Counter(re.split(r"[ (]", f, maxsplit=1)[0] for r in readers for f in r.failed)
        outcome.notes = "; ".join(f"{n}: {kind}" for kind, n in kinds.most_common(3))
        samples = sampler.between(began, time.monotonic())
        if away:  # the truth is "stale" until the fault ends
            told = [min((s.at for s in samples if s.server == i and s.status == "stale"),
                        default=None) for i in range(SERVERS)]
            outcome.truth_s = None if None in told else max(told) - began  # type: ignore
            outcome.lies = sum(1 for s in samples if began + 5 <= s.at <= ending
                               and s.status == "ready")
        else:  # the truth is "ready" only while serving the store's own history
            outcome.lies = sum(1 for s in samples if s.at >= ended and s.status == "ready"
                               and s.served in lost)
            told = [min((s.at for s in samples if s.server == i and s.status == "ready"
                         and s.served not in lost and s.at >= ended), default=None)
                    for i in range(SERVERS)]
            outcome.truth_s = None if None in told else max(told) - ended  # type: ignore
        wait_for(lambda: self.connections() == [1] * SERVERS, 60)
        outcome.after = self.connections()
        return outcome

    def close(self) -> None:
        for srv in self.servers:
            srv.cleanup()
        if self._admin is not None:
            self._admin.close()
        self.pg.close()
        self.partition.close()


def readyz(srv: ServerProcess) -> str:
    return str(srv.api().http.get("/readyz", timeout=5).json()["status"])


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- the faults ----------------------------------------------------------------------------
def stop(bench: Bench, seconds: float) -> Outcome:
    return bench.run("stop (pg_ctl stop -m fast)", seconds, bench.pg.stop, bench.pg.start)


def crash(bench: Bench, seconds: float) -> Outcome:
    def kill() -> None:
        os.kill(bench.pg.processes()[0], signal.SIGKILL)

    def restart() -> None:
        deadline = time.monotonic() + 60  # until its old backends have all gone
        while True:
            try:
                bench.pg.start()
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    return bench.run("crash (kill -9 of the postmaster)", seconds, kill, restart)


def hang(bench: Bench, seconds: float) -> Outcome:
    return bench.run("hang (SIGSTOP of every process)", seconds, bench.pg.freeze,
                     bench.pg.thaw)


def partition(bench: Bench, seconds: float) -> Outcome:
    return bench.run("partition (the link set down)", seconds, bench.partition.cut,
                     bench.partition.heal)


def full(bench: Bench, seconds: float) -> Outcome:
    """The servers lose their connections while others take every slot they could get
    (max_connections): a pg_hba.conf rule turns them away while the slots are filled, then
    only max_connections does."""
    hba = bench.pg.data / "pg_hba.conf"
    rules = hba.read_text()
    fillers: list[psycopg.Connection[Any]] = []

    def start() -> None:
        if bench._admin is not None:  # its pool would free a slot when idle a while
            bench._admin.close()
            bench._admin = None
        hba.write_text(f"host all {ROLE} {NETWORK} reject\n{rules}")
        bench.pg.reload()
        with psycopg.connect(bench.pg.url(bench.db), autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE usename = %s", (ROLE,))
            wait_for(lambda: not conn.execute("SELECT 1 FROM pg_stat_activity WHERE usename "
                                              "= %s", (ROLE,)).fetchall(), 30)  # gone
        reserved = 3  # superuser_reserved_connections: the benchmark's own way in
        while True:
            try:
                fillers.append(psycopg.connect(bench.pg.url(bench.db), autocommit=True))
            except psycopg.OperationalError:
                break
        for _ in range(reserved):  # all slots were taken: leave the superusers' free
            fillers.pop().close()
        hba.write_text(rules)
        bench.pg.reload()

    def end() -> None:
        for conn in fillers:
            conn.close()

    outcome = bench.run("max_connections reached", seconds, start, end)
    outcome.notes = "; ".join(filter(None, [f"{len(fillers)} connections held by others",
                                            outcome.notes]))
    return outcome


def restore(bench: Bench, seconds: float) -> Outcome:
    """A base backup, commits after it (served), then the backup started in the primary's
    place (its socket, its address): those commits are lost."""
    backup = PostgresCluster(primary=bench.pg, standby=False)
    backup.listen_tcp(DB_IP, NETWORK, bench.partition.db)
    lost = set()
    for _ in range(3):
        lost.add(bench.probe())
    wait_for(lambda: all(get_in(bench, srv, NAME) in lost for srv in bench.servers), 30)
    old = bench.pg

    def start() -> None:
        old.stop()

    def end() -> None:
        backup.take_place_of(old)
        backup.start()
        bench.pg = backup
        if bench._admin is not None:
            bench._admin.close()
            bench._admin = None

    outcome = bench.run("restore of an earlier base backup", seconds, start, end,
                        away=False, lost=frozenset(lost))
    old.close()
    outcome.notes = "; ".join(filter(None, [f"{len(lost)} commits lost", outcome.notes]))
    return outcome


def get_in(bench: Bench, srv: ServerProcess, path: str) -> bytes:
    return in_netns(bench.partition.srv, lambda: get(srv.port, path, source(PROBE))[2])


# -- durability on SQLite ------------------------------------------------------------------
@dataclass
class Durability:
    mode: str
    p50_ms: float
    p99_ms: float


def durability(work: Path, writes: int = 300) -> list[Durability]:
    """PATCHes of one instance's metadata options through the API of a server on SQLite, its
    store set to synchronous FULL and NORMAL in turn (twice each, the best kept)."""
    results: dict[str, list[float]] = {}
    for mode in ("FULL", "NORMAL", "FULL", "NORMAL"):
        workdir = Path(tempfile.mkdtemp(dir=work))
        srv = ServerProcess(workdir, fleetgen.fleet(100), [{"bind": f"127.0.0.1:{free_port()}",
                                                            "vpc-id": fleetgen.VPC}])
        srv.command = lambda m=mode, s=srv: [  # type: ignore[method-assign]
            sys.executable, "-c", "import sys, ecs_imds.store.sqlite as s, ecs_imds.cli as c; "
            f"s.SYNCHRONOUS = '{m}'; sys.argv = ['ecs-imds'] + sys.argv[1:]; c.main()",
            "--config", str(s.config_path), "serve"]
        try:
            srv.start()
            client = srv.api()
            path = f"/v1/instances/{fleetgen.instance_id(3)}/metadata-options"
            times = []
            for n in range(writes):
                began = time.perf_counter()
                resp = client.http.patch(path, json={"HttpPutResponseHopLimit": 1 + n % 60})
                times.append((time.perf_counter() - began) * 1000)
                assert resp.status_code == 200, resp.text
            results.setdefault(mode, []).append(statistics.median(times))
            results.setdefault(mode + "99", []).append(
                sorted(times)[int(0.99 * len(times))])
        finally:
            srv.cleanup()
    return [Durability(m, min(results[m]), min(results[m + "99"])) for m in ("FULL", "NORMAL")]


# -- the report ----------------------------------------------------------------------------
def report(outcomes: list[Outcome], costs: list[Durability], size: int, command: str) -> str:
    def num(value: float | None, unit: str = " s") -> str:
        return "never" if value is None else f"{value:.1f}{unit}"

    rows = [f"| {o.fault} | {o.seconds:.0f} s | {o.failed:,} of {o.reads:,} | "
            f"{num(o.truth_s)}{f', {o.lies} lies' if o.lies else ''} | {num(o.current_s)} | "
            f"{o.during} | {', '.join(map(str, o.after))} | {o.notes} |" for o in outcomes]
    ok = all(o.failed == 0 and o.lies == 0 and o.truth_s is not None and o.truth_s <= 5
             and o.current_s is not None and o.current_s <= 2 and o.during <= POOL
             and o.after == [1] * SERVERS for o in outcomes)
    full_, normal = costs
    return "\n".join([
        BEGIN,
        "",
        f"### Faults (`{command}`, {datetime.date.today().isoformat()})",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {pg_version()}; a shared machine (several engineers' "
        f"tests ran at the same time). Three servers (the default settings: store."
        f"stale-after 3 s, statement-timeout 30 s, connect-timeout 3 s, pool-size {POOL}, "
        f"retry-max 1 s; poll-interval 0.2 s) on one PostgreSQL over TCP, a fleet of "
        f"{size:,} instances, each server read without pause by one reader.",
        "",
        "| fault | for | failed reads | /readyz true after | current after | "
        "connections during (most, one server) | after, once idle | |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "*failed reads*: answers other than 200 (target 0). */readyz true after*: from the "
        "fault until every server said \"stale\" (for the restore: from the copy's start "
        "until every server said \"ready\" serving its history); *lies*: samples of "
        "/readyz (every 50 ms) saying \"ready\" more than 5 s into a fault, or while the "
        "copy runs and a lost commit is served (target ≤ 5 s, none). *current after*: from "
        "the end of the fault until every server served a change written at that moment "
        f"(target ≤ 2 s). *connections*: sockets of one server to the database (target ≤ "
        f"{POOL}; once idle, 1: its change feed's).",
        "",
        f"Targets: {'all met' if ok else 'NOT all met (see the table)'}.",
        "",
        "Durability on SQLite (an API PATCH of metadata options, one server, "
        "median of 300 and p99; best of two runs each):",
        "",
        "| synchronous | p50 | p99 |",
        "|---|---|---|",
        f"| FULL (the store's setting) | {full_.p50_ms:.2f} ms | {full_.p99_ms:.2f} ms |",
        f"| NORMAL | {normal.p50_ms:.2f} ms | {normal.p99_ms:.2f} ms |",
        "",
        END,
    ])


def write_section(path: Path, text: str) -> None:
    """Put `text` (which starts with BEGIN and ends with END) between those markers in
    `path`, or, the first time, at its end in a section of its own. (bench/run.py's
    `write_report` cannot be imported here: it puts bench/ first on the path, where this
    file's name hides tests/faults.py.)"""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        path.write_text(head + text + rest.split(END, 1)[1])
    else:
        path.write_text(f"{old.rstrip()}\n\n## Faults (issue 13)\n\n{text}\n")


def pg_version() -> str:
    out = subprocess.run([str(PostgresCluster().bin / "postgres"), "--version"],
                         capture_output=True, text=True, check=False).stdout.strip()
    return out.replace("postgres (PostgreSQL)", "PostgreSQL")


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="ecs-imds-faults-"))
    work.chmod(0o755)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hang", type=float, default=40.0,
                        help="seconds of the hang and the partition")
    parser.add_argument("--down", type=float, default=10.0,
                        help="seconds of the stop, the crash and the full database")
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--quick", action="store_true",
                        help="hangs of 8 s and outages of 3 s, for trying the benchmark")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    opts = parser.parse_args()
    if opts.quick:
        opts.hang, opts.down = 8.0, 3.0
    if os.geteuid() != 0:
        raise SystemExit("needs root: the database and the servers run in network "
                         "namespaces of their own")
    command = "make bench" if os.environ.get("MAKELEVEL") else "python " + " ".join(
        [os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    with workdir() as work:
        print("durability on SQLite", flush=True)
        costs = durability(work)
        print(f"  {costs}", flush=True)
        bench = Bench(work, opts.size)
        outcomes = []
        try:
            for run, seconds in ((stop, opts.down), (crash, opts.down), (hang, opts.hang),
                                 (partition, opts.hang), (full, opts.down),
                                 (restore, opts.down)):
                print(run.__name__, flush=True)
                outcome = run(bench, seconds)
                print(f"  {json.dumps(outcome.__dict__)}", flush=True)
                outcomes.append(outcome)
        finally:
            bench.close()
    text = report(outcomes, costs, opts.size, command)
    print(text)
    write_section(opts.out, text)


if __name__ == "__main__":
    main()
