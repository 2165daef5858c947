"""A server under steady load while its fleet changes: is its memory flat?

    python bench/soak.py [--minutes 5] [--rate 4000] [--instances 1000] [--label after]
                         [--out BENCHMARKS.md]

One server (SQLite store, control plane on loopback, no rate limit) with a fleet of
synthetic instances; wrk sends a steady mix of requests from one instance (bench/soak.lua:
leaves, listings, `all`, token PUTs and GETs with the token, the RAM credential, the
identity document) paced to about `rate` per second; meanwhile one operator write per
second goes through the API (ModifyInstanceMetadataOptions or a rename of a random
instance but the caller, so every second a new snapshot is built and swapped in). Every 10 s
the server's resident memory, open descriptors and threads are sampled from /proc. A fifth
of the run (at most 5 minutes) is warm-up; the growth is measured from its end. `make bench`
runs it for 10 minutes, `make soak` for 30.

The samples and the verdict go to stdout and into BENCHMARKS.md between the
`bench:soak:<label>` markers, so a run before a fix and one after it stand side by side.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import fleetgen  # noqa: E402
from fleet import Api, admin_token, machine, placed_fleet, server  # noqa: E402
from run import free_port, rss_of  # noqa: E402
from run import write_report as write_between  # noqa: E402

from ecs_imds.control.fleet import import_fleet  # noqa: E402
from ecs_imds.store import open_store  # noqa: E402

SAMPLE_EVERY = 10.0


@dataclass
class Sample:
    at: float
    rss: int
    fds: int
    threads: int


@dataclass
class Soak:
    minutes: float
    rate: int
    instances: int
    samples: list[Sample] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    writes: int = 0
    write_errors: int = 0

    @property
    def warm(self) -> Sample:
        """The first sample after warm-up: a fifth of the run, at most 5 minutes (by then
        the memory of verified tokens, 65,536 of them, has filled at this mix's rate)."""
        start = min(300.0, self.minutes * 60 / 5)
        return next(s for s in self.samples if s.at >= start)

    @property
    def growth(self) -> int:
        return self.samples[-1].rss - self.warm.rss


def proc_state(pid: int) -> tuple[int, int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    threads = int(status.split("Threads:")[1].split()[0])
    return rss_of(pid), len(list(Path(f"/proc/{pid}/fd").iterdir())), threads


def writer(api: Api, size: int, stop: threading.Event, result: Soak) -> None:
    """One operator write per second: options or a name, of a random instance."""
    rng = random.Random(7)
    while not stop.wait(1.0):
        target = fleetgen.instance_id(rng.randrange(1, size))  # not the caller's own options
        if rng.random() < 0.5:
            path, body = (f"/v1/instances/{target}/metadata-options",
                          {"HttpTokens": rng.choice(["optional", "required"])})
        else:
            path, body = f"/v1/instances/{target}", {"instance-name": f"soak-{result.writes}"}
        try:
            status, _ = api.call("PATCH", path, json.dumps(body).encode())
        except OSError:
            status = 0
        result.writes += 1
        result.write_errors += status != 200


def soak(work: Path, minutes: float, rate: int, size: int) -> Soak:
    result = Soak(minutes, rate, size)
    port = free_port()
    first = fleetgen.instance_id(0)  # it has the RAM role
    store = open_store(None, work / "server" / "data")
    import_fleet(store, placed_fleet(size))
    store.close()
    with server(work / "server", None, listen=(port, first)) as (proc, api_port, _):
        api = Api(api_port, admin_token(work / "server"))
        connections = max(1, rate // 1000)
        seconds = round(minutes * 60)
        load = subprocess.Popen(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
             "-s", "soak.lua", f"http://127.0.0.1:{port}/", "--",
             fleetgen.ROLE, str(round(1000 * connections / rate))],
            cwd=BENCH, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        stop = threading.Event()
        writes = threading.Thread(target=writer, args=(api, size, stop, result), daemon=True)
        writes.start()
        started = time.monotonic()
        while load.poll() is None:
            rss, fds, threads = proc_state(proc.pid)
            result.samples.append(Sample(time.monotonic() - started, rss, fds, threads))
            print(f"  {result.samples[-1].at:6.0f} s  {rss / 2**20:6.1f} MiB  {fds} fds  "
                  f"{threads} threads  {result.writes} writes", flush=True)
            time.sleep(SAMPLE_EVERY - (time.monotonic() - started) % SAMPLE_EVERY)
        stop.set()
        writes.join()
        out = load.stdout.read() if load.stdout else ""
        line = next((ln for ln in out.splitlines() if ln.startswith("BENCH ")), None)
        if line is None:
            raise SystemExit(f"wrk failed: {out}")
        data = json.loads(line[6:])
        result.requests = data["requests"]
        result.errors = sum(data[k] for k in ("connect_errors", "read_errors",
                                               "write_errors", "status_errors", "timeouts"))
        api.close()
    return result


def report(r: Soak, label: str, command: str, where: list[str]) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    w = r.warm
    last = r.samples[-1]
    fds = {s.fds for s in r.samples if s.at >= w.at}
    threads = {s.threads for s in r.samples if s.at >= w.at}
    ok = (r.growth <= 20e6 and max(fds) - min(fds) <= 2 and len(threads) == 1
          and r.errors == 0 and r.write_errors == 0)
    curve = ", ".join(f"{s.rss / 2**20:.0f}" for s in r.samples[::max(1, len(r.samples) // 30)])
    return "\n".join([
        f"<!-- bench:soak:{label}:begin -->", "",
        f"**{label}** — run {now} with `{command}`: {r.minutes:g} min, "
        f"{r.instances:,} instances, {r.requests:,} requests "
        f"({r.requests / (r.minutes * 60):,.0f}/s), {r.writes} API writes.", "",
        *where, "",
        f"- resident: {r.samples[0].rss / 2**20:.1f} MiB at start, {w.rss / 2**20:.1f} MiB "
        f"after warm-up ({w.at:.0f} s), {last.rss / 2**20:.1f} MiB at the end: "
        f"**{r.growth / 1e6:+.1f} MB** after warm-up",
        f"- descriptors {min(fds)}-{max(fds)}, threads {min(threads)}-{max(threads)} after "
        f"warm-up; errors: {r.errors} requests, {r.write_errors} writes",
        f"- target (after warm-up ≤ 20 MB growth, descriptors and threads flat, 0 errors): "
        f"{'met' if ok else '**missed**'}",
        f"- resident MiB every {SAMPLE_EVERY * max(1, len(r.samples) // 30):.0f} s: {curve}",
        "", f"<!-- bench:soak:{label}:end -->"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--rate", type=int, default=4000)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--label", default="after")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    opts = parser.parse_args()
    command = " ".join(["python", "bench/soak.py", *sys.argv[1:]])
    work = Path(tempfile.mkdtemp(prefix="ecs-imds-soak-"))
    work.chmod(0o755)
    where = machine()  # the load when the run begins, not after it
    try:
        result = soak(work, opts.minutes, opts.rate, opts.instances)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(result, opts.label, command, where)
    print(text)
    write_between(opts.out, text, f"<!-- bench:soak:{opts.label}:begin -->",
                  f"<!-- bench:soak:{opts.label}:end -->")


if __name__ == "__main__":
    main()
