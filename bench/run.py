"""`make bench`: the data plane against nginx serving the same bytes, and fleets at scale.

    python bench/run.py [--seconds 3] [--rounds 5] [--sizes 1000,10000,100000] [--out BENCHMARKS.md]

Part 1 runs each case of issue 5 against ecs-imds and against nginx serving the same bytes
as static files (same paths, same content types), each server on core 0 with one worker,
wrk on core 1, all on loopback. Each case is run in `rounds` rounds of `seconds` seconds,
ecs-imds and nginx taking turns, and the median round of each counts (the machine may be
shared: taking turns and the median keep a burst of other work from deciding a ratio); the
servers' CPU time per request is read from /proc. Then p99 is read at about half the best
rate of keep-alive GETs.

Part 2 builds fleets of synthetic instances (bench/fleetgen.py) in a SQLite store and
measures, in a fresh process, the snapshot build (bench/scale.py), the resident memory
before and after every instance is rendered, and, against a running server, the time from
a change committed in the store to the data plane serving it.

The results go to stdout and into BENCHMARKS.md between its `bench:` markers; the text
around them is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import math
import os
import platform
import shutil
import socket
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

from ecs_imds.testing.server import end as stop  # SIGTERM, SIGKILL after 10 s

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import fleetgen  # noqa: E402

from ecs_imds.cli import DEMO_VPC, demo_fleet  # noqa: E402
from ecs_imds.control.fleet import import_fleet  # noqa: E402
from ecs_imds.store import open_store  # noqa: E402

ECS_IMDS = str(Path(sys.executable).with_name("ecs-imds"))
SERVER_CORE, LOAD_CORE = "0", "1"
WEB, HARDENED = "i-bp1demo0000000000001", "i-bp1demo0000000000002"
TTL_HEADER = "X-aliyun-ecs-metadata-token-ttl-seconds"
CONNECTIONS = 50
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


@dataclass
class Case:
    key: str
    title: str
    path: str
    script: str = "plain.lua"
    listener: str = "normal"  # which ecs-imds listener: 127.0.0.1 is WEB or HARDENED there
    headers: tuple[str, ...] = ()
    token: bool = False


CASES = [
    Case("a", "keep-alive GET of a leaf (`instance-id`), normal mode",
         "/latest/meta-data/instance-id"),
    Case("b", "new connection per request (`Connection: close`)",
         "/latest/meta-data/instance-id", headers=("Connection: close",)),
    Case("c", "keep-alive GET with a token, hardened mode", "/latest/meta-data/instance-id",
         script="token_get.lua", listener="hardened", token=True),
    Case("d", "token PUT (`/latest/api/token`, TTL 21600)", "/latest/api/token",
         script="token_put.lua", listener="hardened"),
    Case("e", "`meta-data/all`", "/latest/meta-data/all"),
    Case("f", "directory listing (`meta-data/`)", "/latest/meta-data/"),
]


@dataclass
class Run:
    rps: float
    p50_us: int
    p99_us: int
    requests: int
    errors: int
    connections: int = CONNECTIONS
    cpu_us: float = 0.0  # the server's CPU time per request (user + system)


@dataclass
class Result:
    case: Case
    imds: list[Run] = field(default_factory=list)
    nginx: list[Run] = field(default_factory=list)

    @staticmethod
    def best(runs: list[Run]) -> Run:
        return max(runs, key=lambda r: r.rps)

    @staticmethod
    def median(runs: list[Run]) -> Run:
        return sorted(runs, key=lambda r: r.rps)[len(runs) // 2]


# --- processes ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 300.0
              ) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{what} not listening on {port}") from None
            time.sleep(0.02)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its children so far."""
    ticks = 0
    for p in (pid, *children(pid)):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        return [int(p) for p in path.read_text().split()]
    return []


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def fetch(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None
          ) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@contextlib.contextmanager
def ecs_imds(workdir: Path, listeners: list[dict[str, Any]], *ports: int,
             **settings: Any) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """A server on core 0; yields it and the seconds it took to answer on every port (it
    listens at once, and answers once its first snapshot is built)."""
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump({
        "data-dir": str(workdir / "data"), "listeners": listeners, "api": False,
        "limits": {"rate": 0}, **settings}))
    log = (workdir / "server.log").open("wb")
    start = time.perf_counter()
    proc = subprocess.Popen(["taskset", "-c", SERVER_CORE, ECS_IMDS, "--config", str(config),
                             "serve"], stdout=log, stderr=subprocess.STDOUT)
    try:
        for port in ports:
            wait_port(port, proc, "ecs-imds")
            while True:
                with contextlib.suppress(OSError):
                    fetch(port, "/")
                    break
                time.sleep(0.01)
        yield proc, time.perf_counter() - start
    finally:
        stop(proc)
        log.close()


# nginx at its fastest for these small bodies: one writev of headers and body per answer
# (sendfile with tcp_nopush adds two setsockopt calls and a second write; measured slower).
NGINX_CONF = """\
user root;
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  types {{ }}
  default_type text/plain;
  charset utf-8;
  sendfile off;
  tcp_nopush off;
  tcp_nodelay on;
  open_file_cache max=1000 inactive=60s;
  keepalive_requests 1000000000;
  client_body_temp_path {work}/client-body;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    root {root};
    index .listing;
    location = /latest/meta-data/all {{ default_type application/json; }}
    location = /latest/api/token {{ return 200 "{token}"; }}
  }}
}}
"""


@contextlib.contextmanager
def nginx(workdir: Path, port: int, files: dict[str, bytes], token: str
          ) -> Iterator[subprocess.Popen[bytes]]:
    """nginx on core 0, one worker, serving `files` (path → bytes) as static files."""
    root = workdir / "root"
    for path, body in files.items():
        target = root / path.lstrip("/")
        if path.endswith("/"):
            target = target / ".listing"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=workdir, port=port, root=root, token=token))
    proc = subprocess.Popen(["taskset", "-c", SERVER_CORE, "nginx", "-c", str(conf),
                             "-p", str(workdir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc, "nginx")
        yield proc
    finally:
        stop(proc)


# --- wrk ---------------------------------------------------------------------------------------
def wrk(server: int, port: int, case: Case, seconds: float, connections: int = CONNECTIONS,
        script: str | None = None, args: tuple[str, ...] = ()) -> Run:
    """One wrk run against `port`; `server` is the pid whose CPU time is counted."""
    cmd = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{round(seconds)}s",
           "--timeout", "5s", "-s", script or case.script]
    for header in case.headers:
        cmd += ["-H", header]
    cmd += [f"http://127.0.0.1:{port}{case.path}", "--", *args]
    cpu = cpu_seconds(server)
    out = subprocess.run(cmd, cwd=BENCH, capture_output=True, text=True, timeout=seconds + 60)
    cpu = cpu_seconds(server) - cpu
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {out.stdout}{out.stderr}")
    data = json.loads(line[6:])
    errors = sum(data[k] for k in ("connect_errors", "read_errors", "write_errors",
                                   "status_errors", "timeouts"))
    return Run(rps=data["requests"] / (data["duration_us"] / 1e6), p50_us=data["p50_us"],
               p99_us=data["p99_us"], requests=data["requests"], errors=errors,
               connections=connections, cpu_us=cpu * 1e6 / max(data["requests"], 1))


def at_half(server: int, port: int, case: Case, best_rps: float, seconds: float
            ) -> list[Run]:
    """Latency at about half the best rate: the fewest connections that reach it, three
    runs. (wrk 4 has no constant-rate mode, and pacing with its 1 ms timers sends bursts.)"""
    for connections in (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32):
        run = wrk(server, port, case, 2, connections)
        if run.rps >= best_rps / 2:
            break
    return [wrk(server, port, case, seconds, connections) for _ in range(3)]


# --- part 1: ecs-imds against nginx --------------------------------------------------------
def serving(work: Path, seconds: float, rounds: int
            ) -> tuple[list[Result], dict[str, list[Run]]]:
    imds_dir, nginx_dir = work / "imds", work / "nginx"
    imds_dir.mkdir()
    nginx_dir.mkdir()
    import_fleet(open_store(None, imds_dir / "data"), demo_fleet(), replace=True)
    normal, hardened, nginx_port = free_port(), free_port(), free_port()
    listeners = [
        {"bind": f"127.0.0.1:{normal}", "vpc-id": DEMO_VPC, "aliases": {"127.0.0.1": WEB}},
        {"bind": f"127.0.0.1:{hardened}", "vpc-id": DEMO_VPC,
         "aliases": {"127.0.0.1": HARDENED}},
    ]
    ports = {"normal": normal, "hardened": hardened}
    results = [Result(case) for case in CASES]
    with ecs_imds(imds_dir, listeners, normal, hardened) as (server, _):
        files = {}
        for path in ("/latest/meta-data/instance-id", "/latest/meta-data/all",
                     "/latest/meta-data/"):
            status, body = fetch(normal, path)
            assert status == 200, (path, status)
            files[path] = body
        status, token = fetch(hardened, "/latest/api/token", "PUT", {TTL_HEADER: "21600"})
        assert status == 200, status
        args = {"c": (token.decode(),)}
        with nginx(nginx_dir, nginx_port, files, "T" * len(token)) as web:
            for path, body in files.items():
                assert fetch(nginx_port, path) == (200, body), path
            for result in results:
                case = result.case
                print(f"case {case.key}: {case.title}", flush=True)
                for n in range(rounds):
                    order = ("imds", "nginx") if n % 2 == 0 else ("nginx", "imds")
                    for who in order:
                        if who == "imds":
                            run = wrk(server.pid, ports[case.listener], case, seconds,
                                      args=args.get(case.key, ()))
                            result.imds.append(run)
                        else:
                            run = wrk(web.pid, nginx_port, case, seconds,
                                      args=args.get(case.key, ()))
                            result.nginx.append(run)
                        print(f"  {who:5} {run.rps:10,.0f} req/s  p50 {run.p50_us:6} us  "
                              f"p99 {run.p99_us:6} us  {run.cpu_us:5.1f} us CPU/request  "
                              f"errors {run.errors}", flush=True)
            a = results[0]
            half: dict[str, list[Run]] = {}
            for who, pid, port, runs in (("imds", server.pid, normal, a.imds),
                                         ("nginx", web.pid, nginx_port, a.nginx)):
                half[who] = at_half(pid, port, a.case, Result.best(runs).rps, seconds)
                for run in half[who]:
                    print(f"half rate {who:5}: {run.rps:10,.0f} req/s ({run.connections} "
                          f"connections) p50 {run.p50_us} us  p99 {run.p99_us} us", flush=True)
    return results, half


# --- part 2: fleets at scale -----------------------------------------------------------------
@dataclass
class Scale:
    instances: int
    store_write_s: float
    build_s: float
    render_all_s: float
    bytes_built: float
    bytes_rendered: float
    server_ready_s: float
    server_rss: int
    change_s: list[float]


def fleet_at_scale(work: Path, size: int) -> Scale:
    workdir = work / f"fleet-{size}"
    data = workdir / "data"
    data.mkdir(parents=True)
    doc = fleetgen.fleet(size)
    store = open_store(None, data)
    start = time.perf_counter()
    store.write_fleet(doc["defaults"], doc["instances"], replace=True)
    written = time.perf_counter() - start
    del doc
    out = subprocess.run(["taskset", "-c", SERVER_CORE, sys.executable,
                          str(BENCH / "scale.py"), str(data)],
                         capture_output=True, text=True, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert measured["instances"] == size, measured
    port = free_port()
    first = fleetgen.instance_id(0)
    listeners = [{"bind": f"127.0.0.1:{port}", "vpc-id": fleetgen.VPC,
                  "aliases": {"127.0.0.1": first}}]
    changes = []
    with ecs_imds(workdir, listeners, port) as (proc, ready):
        assert fetch(port, "/latest/meta-data/instance-id") == (200, first.encode())
        rss = rss_of(proc.pid)
        for n in range(5):
            (stored,) = store.load_instances([first])
            name = f"changed-{n}"
            stored.doc["instance-name"] = name
            start = time.perf_counter()
            store.put_instance(stored.doc, None)
            while fetch(port, "/latest/meta-data/instance/instance-name")[1] != name.encode():
                if time.perf_counter() - start > 30:
                    raise SystemExit(f"change never served on a fleet of {size}")
                time.sleep(0.002)
            changes.append(time.perf_counter() - start)
            time.sleep(0.3)
    store.close()
    shutil.rmtree(workdir, ignore_errors=True)
    base = measured["rss_before"]
    return Scale(instances=size, store_write_s=written, build_s=measured["build_s"],
                 render_all_s=measured["render_all_s"],
                 bytes_built=(measured["rss_built"] - base) / size,
                 bytes_rendered=(measured["rss_rendered"] - base) / size,
                 server_ready_s=ready, server_rss=rss, change_s=changes)


# --- the report ----------------------------------------------------------------------------------
def machine() -> list[str]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in
                Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")),
               platform.processor())
    mem = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
               if ln.startswith("MemTotal"))
    nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    import httptools
    import uvloop

    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores; memory {mem / 1024 / 1024:.1f} GiB; "
        f"Linux {platform.release()}",
        f"- Python {platform.python_version()}, uvloop {uvloop.__version__}, "
        f"httptools {httptools.__version__}; {nginx_v.replace('nginx version: ', '')}; "
        f"{wrk_v.split(' [')[0]}",
        f"- load average when the run began: {os.getloadavg()[0]:.2f} "
        "(the machine may be shared with other work)",
    ]


def ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def median_p99(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.p99_us)[len(runs) // 2]


def report(results: list[Result], half: dict[str, list[Run]], scales: list[Scale],
           seconds: float, rounds: int, command: str) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [BEGIN, "", f"Run {now} with `{command}`.", "", *machine(), "",
             f"Each case: {rounds} rounds of {seconds:g} s per server, taking turns; the median "
             f"round of each counts. `wrk -t1 -c{CONNECTIONS}` on core 1; ecs-imds (one process) "
             "and nginx (`worker_processes 1`) on core 0. ecs-imds runs with "
             "`limits: {rate: 0}` (no per-instance rate limit: all the load comes from one "
             "instance) and its control plane off.", ""]
    if results:
        lines += ["| case | ecs-imds req/s | p50 ms | p99 ms | CPU µs/req | nginx req/s | "
                  "p50 ms | p99 ms | CPU µs/req | ecs-imds / nginx |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in results:
            i, n = Result.median(r.imds), Result.median(r.nginx)
            errors = sum(x.errors for x in r.imds + r.nginx)
            note = f" ({errors} errors)" if errors else ""
            lines.append(f"| {r.case.key}. {r.case.title}{note} | {i.rps:,.0f} | {ms(i.p50_us)}"
                         f" | {ms(i.p99_us)} | {i.cpu_us:.1f} | {n.rps:,.0f} | {ms(n.p50_us)} | "
                         f"{ms(n.p99_us)} | {n.cpu_us:.1f} | {i.rps / n.rps:.2f} |")
        lines += ["", "*CPU µs/req*: the server's CPU time (user + system, from /proc) over the "
                  "round divided by its requests, a measure the other work on a shared machine "
                  "disturbs less than req/s. Every round (req/s), ecs-imds / nginx: " + "; ".join(
                      f"{r.case.key}: " + ", ".join(f"{x.rps:,.0f}" for x in r.imds) + " / "
                      + ", ".join(f"{x.rps:,.0f}" for x in r.nginx) for r in results) + ".", ""]
        hi, hn = median_p99(half["imds"]), median_p99(half["nginx"])
        lines += [
            "Latency at half the best rate of case a: the fewest connections whose rate reaches "
            "half of the best round, three runs, the median p99 (wrk 4 has no constant-rate "
            "mode; pacing with its 1 ms timers sends requests in bursts that measure wrk more "
            f"than the server): ecs-imds {hi.rps:,.0f} req/s with {hi.connections} connections, "
            f"p50 {ms(hi.p50_us)} ms, p99 {ms(hi.p99_us)} ms (runs: "
            + ", ".join(ms(r.p99_us) for r in half["imds"]) + f"); nginx {hn.rps:,.0f} req/s "
            f"with {hn.connections} connections, p50 {ms(hn.p50_us)} ms, p99 {ms(hn.p99_us)} ms "
            "(runs: " + ", ".join(ms(r.p99_us) for r in half["nginx"]) + ").", ""]
    if scales:
        lines += ["Fleets of synthetic instances (`bench/fleetgen.py`: one VPC, 1-2 interfaces, "
                  "1-2 disks, tags, a role and user data on half of them) in the SQLite store:",
                  "", "| instances | snapshot built | every instance rendered | resident per "
                  "instance, built | resident per instance, all rendered | server ready | "
                  "server resident | change served (median / max of 5) |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for s in scales:
            lines.append(
                f"| {s.instances:,} | {s.build_s:.2f} s | {s.render_all_s:.1f} s | "
                f"{s.bytes_built / 1024:.1f} KB | {s.bytes_rendered / 1024:.1f} KB | "
                f"{s.server_ready_s:.2f} s | {s.server_rss / 2**20:.0f} MiB | "
                f"{statistics.median(s.change_s) * 1000:.0f} / {max(s.change_s) * 1000:.0f} ms |")
        lines += ["", "*Snapshot built*: `SnapshotBuilder.build()` on a fresh process, reading "
                  "the store; *every instance rendered*: then rendering each one as its first "
                  "request would; *resident per instance*: growth of the process's RSS divided "
                  "by the instances; *server ready*: from exec to the first answer (it listens "
                  "at once, and answers once its snapshot is built); *change served*: from the "
                  "commit of a changed instance in the store to the first answer with the new "
                  "value (poll interval 0.2 s).", ""]
    lines += targets(results, half, scales)
    lines += ["", END]
    return "\n".join(lines)


def targets(results: list[Result], half: dict[str, list[Run]], scales: list[Scale]
            ) -> list[str]:
    out = ["Targets of issue 5:", ""]
    if results:
        by = {r.case.key: r for r in results}
        ratio = {k: Result.median(r.imds).rps / Result.median(r.nginx).rps
                 for k, r in by.items()}
        ca = Result.median(by["c"].imds).rps / Result.median(by["a"].imds).rps
        d = Result.median(by["d"].imds).rps
        p99 = median_p99(half["imds"]).p99_us / 1000
        out += [
            f"- a ≥ 1.0x nginx: {ratio['a']:.2f}x — {verdict(ratio['a'] >= 1.0)}",
            f"- b ≥ 0.9x nginx: {ratio['b']:.2f}x — {verdict(ratio['b'] >= 0.9)}",
            f"- c ≥ 0.9x a: {ca:.2f}x — {verdict(ca >= 0.9)}",
            f"- d ≥ 30,000 tokens/s: {d:,.0f} — {verdict(d >= 30000)}",
            f"- p99 ≤ 1 ms at half the maximum rate: {p99:.2f} ms — {verdict(p99 <= 1.0)}",
        ]
    big = max(scales, key=lambda s: s.instances) if scales else None
    if big is not None and big.instances >= 100_000:
        small = [s for s in scales if s.instances < big.instances]
        growth = ""
        if small:
            prev = max(small, key=lambda s: s.instances)
            growth = (f"; per instance vs {prev.instances:,}: build "
                      f"{(big.build_s / big.instances) / (prev.build_s / prev.instances):.2f}x, "
                      f"memory {big.bytes_rendered / prev.bytes_rendered:.2f}x")
        out += [
            f"- 100k snapshot ≤ 10 s: {big.build_s:.2f} s — {verdict(big.build_s <= 10)}",
            f"- ≤ 10 KB resident per instance (all rendered): "
            f"{big.bytes_rendered / 1024:.1f} KB — {verdict(big.bytes_rendered <= 10240)}"
            + growth,
            f"- a change served within 1 s on 100k: {max(big.change_s):.2f} s at most — "
            f"{verdict(max(big.change_s) <= 1.0)}",
        ]
    return out


def write_report(path: Path, text: str, begin: str = BEGIN, end: str = END) -> None:
    """Put `text` (which starts with `begin` and ends with `end`) between those markers."""
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + text + rest.split(end, 1)[1]
    else:
        new = ("# Benchmarks\n\nHow fast the data plane is, against nginx serving the same "
               "bytes, and how it holds large fleets. `make bench` runs everything and rewrites "
               "the part between the markers below; see bench/run.py.\n\n" + text + "\n")
    path.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--skip-serving", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    opts = parser.parse_args()
    for tool in ("wrk", "nginx", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: `make bench` installs it")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs two cores: the servers on core 0, wrk on core 1")
    command = "make bench" if os.environ.get("MAKELEVEL") else "python " + " ".join(
        [os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    work = Path(tempfile.mkdtemp(prefix="ecs-imds-bench-"))
    work.chmod(0o755)
    started = time.monotonic()
    try:
        results: list[Result] = []
        half: dict[str, list[Run]] = {}
        if not opts.skip_serving:
            results, half = serving(work, opts.seconds, opts.rounds)
        scales = []
        for size in (int(s) for s in opts.sizes.split(",") if s):
            print(f"fleet of {size:,}", flush=True)
            scale = fleet_at_scale(work, size)
            print(f"  {scale}", flush=True)
            scales.append(scale)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(results, half, scales, opts.seconds, opts.rounds, command)
    print(text)
    write_report(opts.out, text)
    print(f"written to {opts.out} in {math.ceil(time.monotonic() - started)} s")


if __name__ == "__main__":
    main()
