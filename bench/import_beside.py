"""An operator's import beside the data plane: what an instance's latency does meanwhile.

    python bench/import_beside.py [--instances 100000]

One server (SQLite, the demo fleet, its control plane on loopback) is asked to import a
fleet file of N synthetic instances (bench/fleetgen.py) through `POST /v1/fleet`, while one
demo instance reads its instance id on a kept-alive connection every 5 ms. Printed: the
import's time, and the instance's p50, p99 and worst latency from the import's start to 3 s
after its end, with the worst moments (their time after the import began). The control plane
shares the data plane's process and GIL: this is what an import costs everyone else.
Loopback only.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import fleetgen  # noqa: E402
import httpx  # noqa: E402

from server import demo_server  # noqa: E402

READ = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n\r\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=100_000)
    opts = parser.parse_args()
    body = json.dumps(fleetgen.fleet(opts.instances)).encode()
    srv = demo_server(Path(tempfile.mkdtemp(prefix="ecs-imds-bench-")),
                      {"127.0.0.1": "i-bp1demo0000000000001"})
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def reader() -> None:
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            while not stop.is_set():
                began = time.perf_counter()
                s.sendall(READ)
                s.recv(4096)
                samples.append((began, time.perf_counter() - began))
                time.sleep(0.005)

    thread = threading.Thread(target=reader)
    try:
        thread.start()
        time.sleep(1)
        began = time.perf_counter()
        answer = httpx.post(srv.api_url + "/v1/fleet", content=body, timeout=600, headers={
            "Authorization": "Bearer " + srv.token(), "Content-Type": "application/json"})
        took = time.perf_counter() - began
        time.sleep(3)
    finally:
        stop.set()
        thread.join()
        srv.cleanup()
    during = sorted((lat, at - began) for at, lat in samples if began <= at <= began + took + 3)
    times = sorted(lat for lat, _ in during)
    worst = sorted(during, reverse=True)[:5]
    print(f"import of {opts.instances:,} instances ({len(body) / 1e6:.0f} MB): "
          f"{answer.status_code} in {took:.1f} s")
    print(f"an instance's GETs meanwhile: {len(times):,}, p50 {times[len(times) // 2] * 1e3:.1f}"
          f" ms, p99 {times[int(len(times) * 0.99)] * 1e3:.1f} ms, worst "
          f"{times[-1] * 1e3:.0f} ms; the worst at "
          + ", ".join(f"{at:.1f} s ({lat * 1e3:.0f} ms)" for lat, at in worst))


if __name__ == "__main__":
    main()
