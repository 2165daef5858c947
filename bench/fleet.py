"""`make bench`, the fleet at scale: operators' writes through the API, imports, and servers
scoped to a few hosts of a large fleet, on SQLite and PostgreSQL.

    python bench/fleet.py [--sizes 1000,10000,100000] [--stores sqlite,postgresql]
                          [--patches 300] [--out BENCHMARKS.md]

For each store and fleet size, a real server (`ecs-imds serve`, control plane on loopback)
is started on an empty store; the fleet (bench/fleetgen.py, placed on hosts of 100
instances) is imported through `POST /v1/fleet` and timed; then `PATCH
…/metadata-options` (ModifyInstanceMetadataOptions) is sent to random instances, one at a
time on one keep-alive connection, and each answer is timed. Then, on the largest fleet, a
second server scoped to one host (100 instances) is started: the time until it answers
and its resident memory. PostgreSQL is a cluster of the benchmark's own (tests/pg.py), on a
unix socket, with its default durability (fsync on).

Results go to stdout and into BENCHMARKS.md between the `bench:fleet` markers.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "tests"))

import fleetgen  # noqa: E402
from run import ECS_IMDS, fetch, free_port, rss_of, stop, wait_port  # noqa: E402
from run import write_report as write_between  # noqa: E402

from pg import PostgresCluster, pg_bin  # noqa: E402

BEGIN, END = "<!-- bench:fleet:begin -->", "<!-- bench:fleet:end -->"
PER_HOST = 100  # instances placed on one host


@dataclass
class Writes:
    store: str
    instances: int
    import_s: float
    patch_ms: list[float] = field(default_factory=list)

    def pct(self, q: float) -> float:
        ordered = sorted(self.patch_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Scoped:
    store: str
    instances: int
    hosts: int
    ready_s: float
    rss: int
    served: int


def placed_fleet(size: int) -> dict[str, Any]:
    doc = fleetgen.fleet(size)
    for n, inst in enumerate(doc["instances"]):
        inst["dedicated-host-id"] = host_of(n)
    return doc


def host_of(n: int) -> str:
    return f"host-{n // PER_HOST:05d}"


class Api:
    """One keep-alive connection to the control plane, with the admin token."""

    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body, headers=self.headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def close(self) -> None:
        self.conn.close()


@contextlib.contextmanager
def server(workdir: Path, store: str | None, *, api: bool = True, scope: list[str] | None = None,
           listen: tuple[int, str] | None = None) -> Iterator[tuple[subprocess.Popen[bytes],
                                                                   int, float]]:
    """`ecs-imds serve` on `store`; yields it, its API port (0 without one) and the seconds
    until the data plane answered (with `listen`: (port, an instance it knows))."""
    api_port = free_port() if api else 0
    port, alias = listen or (free_port(), None)
    config: dict[str, Any] = {"data-dir": str(workdir / "data"), "limits": {"rate": 0},
                              "api": {"bind": f"127.0.0.1:{api_port}"} if api else False,
                              "listeners": [{"bind": f"127.0.0.1:{port}", "vpc-id": fleetgen.VPC,
                                             "aliases": {"127.0.0.1": alias} if alias else {}}]}
    if store:
        config["store"] = store
    if scope is not None:
        config["scope"] = {"hosts": scope}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    log = (workdir / "server.log").open("wb")
    started = time.perf_counter()
    proc = subprocess.Popen([ECS_IMDS, "--config", str(workdir / "config.yaml"), "serve"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        if api:
            wait_port(api_port, proc, "ecs-imds API")
        ready = 0.0
        if listen is not None:
            wait_port(listen[0], proc, "ecs-imds")
            while fetch(listen[0], "/latest/meta-data/instance-id")[0] != 200:
                if proc.poll() is not None:
                    raise SystemExit("ecs-imds exited")
                time.sleep(0.005)
            ready = time.perf_counter() - started
        yield proc, api_port, ready
    finally:
        stop(proc)
        log.close()


def admin_token(workdir: Path) -> str:
    path = workdir / "data" / "admin.token"
    deadline = time.monotonic() + 30
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit("no admin token written")
        time.sleep(0.02)
    return path.read_text().strip()


def wait_ready(api: Api, version: int, timeout: float = 600) -> None:
    """Until the server's own snapshot has caught up with `version` (its feed has built
    it), so that the measured writes do not share the CPU with that rebuild."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = api.call("GET", "/readyz")
        if status == 200 and json.loads(body).get("version", 0) >= version:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the server did not reach version {version}")
        time.sleep(0.1)


def writes(work: Path, store_kind: str, url: str | None, size: int, patches: int
           ) -> Writes:
    workdir = work / f"writes-{store_kind}-{size}"
    body = json.dumps(placed_fleet(size)).encode()
    with server(workdir, url) as (_, port, _):
        api = Api(port, admin_token(workdir))
        try:
            started = time.perf_counter()
            status, answer = api.call("POST", "/v1/fleet", body)
            imported = time.perf_counter() - started
            if status != 200:
                raise SystemExit(f"import failed: {status} {answer[:300]!r}")
            wait_ready(api, json.loads(answer)["Version"])
            result = Writes(store_kind, size, imported)
            rng = random.Random(size)
            for n in range(patches + 20):
                target = fleetgen.instance_id(rng.randrange(size))
                options = {"HttpTokens": "required" if n % 2 else "optional"}
                started = time.perf_counter()
                status, answer = api.call("PATCH", f"/v1/instances/{target}/metadata-options",
                                          json.dumps(options).encode())
                took = time.perf_counter() - started
                if status != 200:
                    raise SystemExit(f"PATCH failed: {status} {answer[:300]!r}")
                if n >= 20:  # the first ones warm up connections and caches
                    result.patch_ms.append(took * 1000)
            print(f"  {store_kind} {size:,}: import {imported:.2f} s; PATCH p50 "
                  f"{result.pct(0.5):.2f} ms p99 {result.pct(0.99):.2f} ms", flush=True)
        finally:
            api.close()
    return result


def scoped(work: Path, store_kind: str, url: str | None, size: int) -> Scoped:
    """A server scoped to one host of the fleet the last `writes` left in the store."""
    workdir = work / f"scoped-{store_kind}-{size}"
    if url is None:  # the SQLite store of the writes run
        url = f"sqlite://{work / f'writes-{store_kind}-{size}' / 'data' / 'ecs-imds.db'}"
    port = free_port()
    with server(workdir, url, api=False, scope=[host_of(0)],
                listen=(port, fleetgen.instance_id(0))) as (proc, _, ready):
        time.sleep(1)  # settled
        rss = rss_of(proc.pid)
        served = sum(fetch(port, "/latest/meta-data/instance-id")[0] == 200 for _ in range(10))
    return Scoped(store_kind, size, 1, ready, rss, served)


def report(results: list[Writes], scopes: list[Scoped], command: str, where: list[str]
           ) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [BEGIN, "", f"Run {now} with `{command}`.", "", *where, "",
             "Operators' writes through the control plane (HTTP on loopback, one keep-alive "
             "connection, one request at a time), on a server holding the whole fleet. "
             "*Import*: `POST /v1/fleet` of the whole fleet file (JSON) into an empty store, "
             "from the first byte sent to the answer. *PATCH*: `PATCH "
             "/v1/instances/{id}/metadata-options` (ModifyInstanceMetadataOptions) of a random "
             "instance, each answer timed; the server's own change feed rebuilds its snapshot "
             "after each one meanwhile.", "",
             "| store | instances | import | PATCH p50 | PATCH p99 | PATCH max | PATCHes |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.store} | {r.instances:,} | {r.import_s:.2f} s | "
                     f"{r.pct(0.5):.2f} ms | {r.pct(0.99):.2f} ms | {max(r.patch_ms):.2f} ms | "
                     f"{len(r.patch_ms)} |")
    if scopes:
        lines += ["", "A server scoped to one host (`scope: {hosts: [host-00000]}`: 100 "
                  "instances) of the whole fleet, control plane off: from exec to its first "
                  "answer, and its resident memory then.", "",
                  "| store | fleet | ready | resident |", "|---|---:|---:|---:|"]
        for s in scopes:
            lines.append(f"| {s.store} | {s.instances:,} | {s.ready_s:.2f} s | "
                         f"{s.rss / 2**20:.0f} MiB |")
    lines += ["", *targets(results, scopes), "", END]
    return "\n".join(lines)


def targets(results: list[Writes], scopes: list[Scoped]) -> list[str]:
    out = ["Targets of issue 11:", ""]
    for kind in sorted({r.store for r in results}):
        runs = sorted((r for r in results if r.store == kind), key=lambda r: r.instances)
        p50 = max(r.pct(0.5) for r in runs)
        p99 = max(r.pct(0.99) for r in runs)
        out.append(f"- {kind}: PATCH p50 ≤ 5 ms and p99 ≤ 20 ms at every size "
                   f"({', '.join(f'{r.instances:,}' for r in runs)}): worst p50 {p50:.2f} ms, "
                   f"worst p99 {p99:.2f} ms — {verdict(p50 <= 5 and p99 <= 20)}")
        if runs and runs[-1].instances >= 100_000:
            out.append(f"- {kind}: import of {runs[-1].instances:,} ≤ 15 s: "
                       f"{runs[-1].import_s:.2f} s — {verdict(runs[-1].import_s <= 15)}")
    for s in scopes:
        out.append(f"- {s.store}: scoped to 100 of {s.instances:,}, ready ≤ 1 s and ≤ 60 MB: "
                   f"{s.ready_s:.2f} s, {s.rss / 1e6:.0f} MB — "
                   f"{verdict(s.ready_s <= 1 and s.rss <= 60e6)}")
    return out


def machine() -> list[str]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in
                Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")),
               platform.processor())
    mem = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
               if ln.startswith("MemTotal"))
    postgres = subprocess.run([str(pg_bin() / "postgres"), "--version"], capture_output=True,
                              text=True).stdout.strip()
    return [f"- CPU: {cpu}, {os.cpu_count()} cores; memory {mem / 2**20:.1f} GiB; "
            f"Linux {platform.release()}; Python {platform.python_version()}; {postgres}",
            f"- load average when the run began: {os.getloadavg()[0]:.2f} (a shared machine: "
            "other work ran beside it)"]


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--patches", type=int, default=300)
    parser.add_argument("--no-scoped", dest="scoped", action="store_false")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    opts = parser.parse_args()
    command = " ".join(["python", "bench/fleet.py", *sys.argv[1:]])
    work = Path(tempfile.mkdtemp(prefix="ecs-imds-fleet-"))
    where = machine()  # the load when the run begins, not after it
    work.chmod(0o755)
    sizes = [int(s) for s in opts.sizes.split(",") if s]
    results: list[Writes] = []
    scopes: list[Scoped] = []
    try:
        for kind in opts.stores.split(","):
            print(f"{kind}:", flush=True)
            pg = PostgresCluster(durable=True) if kind == "postgresql" else None
            try:
                if pg is not None:
                    pg.start()
                for size in sizes:
                    url = pg.create_database("bench") if pg is not None else None
                    results.append(writes(work, kind, url, size, opts.patches))
                    if size == max(sizes) and opts.scoped:
                        scopes.append(scoped(work, kind, url, size))
                        print(f"  {scopes[-1]}", flush=True)
                    # The SQLite store the scoped server read, once it has read it.
                    shutil.rmtree(work / f"writes-{kind}-{size}", ignore_errors=True)
                    if pg is not None and url is not None:
                        pg.drop_database(url)
            finally:
                if pg is not None:
                    pg.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(results, scopes, command, where)
    print(text)
    write_between(opts.out, text, BEGIN, END)
    print(f"written to {opts.out}; medians: " + ", ".join(
        f"{r.store} {r.instances}: {statistics.median(r.patch_ms):.2f} ms" for r in results))


if __name__ == "__main__":
    main()
