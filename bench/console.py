"""`make bench-console`: the web console's reads on a large fleet, through a real server.

    python bench/console.py [--size 100000] [--requests 200] [--out BENCHMARKS.md]

Writes a synthetic fleet (bench/fleetgen.py; every fifth instance in security hardening
mode) into a SQLite store, starts `ecs-imds serve` with its control plane on loopback and
times, over one keep-alive connection, what the console's pages ask: the fleet page (the
first page, random pages), filters that match nothing cached (a new text each time, a tag,
an access mode, all at once), the page right after a change in the store, and an instance
page (its whole tree crawled both ways). Prints p50/p99 and writes them into BENCHMARKS.md
between its `console:` markers. Loopback only; it stops by itself.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import fleetgen  # noqa: E402
from run import ECS_IMDS, free_port, rss_of, stop, wait_port  # noqa: E402
from run import write_report as write_between  # noqa: E402

from ecs_imds.store import open_store  # noqa: E402

BEGIN, END = "<!-- console:begin -->", "<!-- console:end -->"


def instance(n: int) -> dict[str, Any]:
    doc = fleetgen.instance(n)
    if n % 5 == 0:
        doc["metadata-options"] = {**doc.get("metadata-options", {}), "http-tokens": "required"}
    return doc


def timed(call: Callable[[int], httpx.Response], count: int) -> list[float]:
    """Milliseconds of `count` calls (each told its number); every answer must be 200."""
    out = []
    for n in range(count):
        start = time.perf_counter()
        resp = call(n)
        out.append((time.perf_counter() - start) * 1000)
        assert resp.status_code == 200, resp.text[:300]
    return out


def p(values: list[float], q: float) -> float:
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, round(q * (len(ranked) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    opts = parser.parse_args()
    size, count = opts.size, opts.requests
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="ecs-imds-console-") as tmp:
        work = Path(tmp)
        store = open_store(None, work / "data")
        store.write_fleet(fleetgen.DEFAULTS, [instance(n) for n in range(size)], replace=True)
        api_port, port = free_port(), free_port()
        config = work / "config.yaml"
        config.write_text(yaml.safe_dump({
            "data-dir": str(work / "data"), "api": {"bind": f"127.0.0.1:{api_port}"},
            "listeners": [{"bind": f"127.0.0.1:{port}", "vpc-id": fleetgen.VPC}]}))
        with (work / "server.log").open("wb") as log:
            proc = subprocess.Popen([ECS_IMDS, "--config", str(config), "serve"],
                                    stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_port(api_port, proc, "ecs-imds")
            token = (work / "data" / "admin.token").read_text().strip()
            results = measure(httpx.Client(
                base_url=f"http://127.0.0.1:{api_port}", timeout=120,
                headers={"Authorization": f"Bearer {token}"}), store, proc, size, count, rng)
        finally:
            stop(proc)
            store.close()
    text = report(results, size, count)
    print(text)
    old = opts.out.read_text() if opts.out.exists() else ""
    if BEGIN not in old:
        opts.out.write_text(old.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n")
    write_between(opts.out, text, BEGIN, END)
    print(f"written to {opts.out}")


def measure(api: httpx.Client, store: Any, proc: subprocess.Popen[bytes], size: int,
            count: int, rng: random.Random) -> dict[str, Any]:
    def fleet(**params: Any) -> httpx.Response:
        return api.get("/v1/console/fleet", params={"page-size": 50, **params})

    while api.get("/readyz").status_code != 200:
        time.sleep(0.1)
    rss_before = rss_of(proc.pid)
    start = time.perf_counter()
    first = fleet()
    cold = time.perf_counter() - start
    assert first.json()["fleet-size"] == size
    rss_after = rss_of(proc.pid)
    ids = [fleetgen.instance_id(n) for n in range(size)]
    out: dict[str, Any] = {"cold_s": cold, "table_bytes": (rss_after - rss_before) / size}
    out["first page"] = timed(lambda n: fleet(), count)
    out["a random page"] = timed(lambda n: fleet(after=rng.choice(ids)), count)
    out["text (new each time)"] = timed(lambda n: fleet(q=f"bench-{rng.randrange(size)}7"),
                                        count)
    out["tag and text (new each time)"] = timed(
        lambda n: fleet(tag=f"team=team-{rng.randrange(7)}", q=str(n)), count)
    out["mode, VPC and text"] = timed(
        lambda n: fleet(mode="security-hardening", **{"vpc-id": fleetgen.VPC}, q=f"-{n}"), count)

    def changed(n: int) -> httpx.Response:
        (stored,) = store.load_instances([ids[n]])
        store.put_instance(dict(stored.doc, **{"instance-name": f"changed-{n}"}), None)
        return fleet(q=f"changed-{n}")

    out["first page after a change"] = timed(changed, max(10, count // 10))
    out["instance page"] = timed(
        lambda n: api.get(f"/v1/console/instances/{rng.choice(ids)}"), max(20, count // 4))
    return out


def report(results: dict[str, Any], size: int, count: int) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = [f"| {name} | {len(ms)} | {p(ms, 0.5):.1f} | {p(ms, 0.99):.1f} | {max(ms):.1f} |"
            for name, ms in results.items() if isinstance(ms, list)]
    return "\n".join([
        BEGIN, "",
        f"Run {now} with `make bench-console`: {size:,} instances, SQLite store, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start (the "
        "machine may be shared with other work).", "",
        "| console request (page of 50) | requests | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|", *rows, "",
        f"The first fleet request after start builds the table: {results['cold_s']:.2f} s, "
        f"{results['table_bytes'] / 1024:.2f} KB resident per instance.", "",
        END,
    ])


if __name__ == "__main__":
    main()
