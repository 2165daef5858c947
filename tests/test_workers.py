"""`serve --workers N`: N processes behind the same listeners (SO_REUSEPORT)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from ecs_imds.demo import DEMO_VPC, demo_fleet
from server import ServerProcess, free_port, get

WEB = "i-bp1demo0000000000001"


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    return inodes


def sockets_of(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(
        f"/proc/{pid}/stat").read_text().split()[2]


def start(tmp: Path, **settings: Any) -> tuple[ServerProcess, int]:
    port = free_port()
    srv = ServerProcess(tmp, demo_fleet(),
                        [{"bind": f"127.0.0.1:{port}", "vpc-id": DEMO_VPC,
                          "aliases": {"127.0.0.1": WEB}}],
                        workers=2, limits={"rate": 0}, **settings)
    srv.start()
    srv.wait_ready("127.0.0.1", port)
    return srv, port


def test_every_worker_listens_and_serves(tmp_path: Path) -> None:
    srv, port = start(tmp_path)
    try:
        assert srv.proc is not None
        workers = children(srv.proc.pid)
        assert len(workers) == 2
        listening = listening_inodes(port)
        assert len(listening) == 2
        for pid in workers:  # each worker has a listening socket of its own on the port
            assert len(sockets_of(pid) & listening) == 1
        deadline = time.monotonic() + 10
        while True:  # until both workers have the fleet: every new connection is answered
            answers = {get(port, "/latest/meta-data/instance-id")[2] for _ in range(40)}
            if answers == {WEB.encode()}:
                break
            assert time.monotonic() < deadline, answers
            time.sleep(0.1)
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=15) == 0
        assert not any(alive(pid) for pid in workers)
    finally:
        srv.cleanup()


def test_a_dead_worker_stops_the_service(tmp_path: Path) -> None:
    srv, _ = start(tmp_path)
    try:
        assert srv.proc is not None
        first, second = children(srv.proc.pid)
        os.kill(first, signal.SIGKILL)
        assert srv.proc.wait(timeout=15) == 1
        deadline = time.monotonic() + 10
        while alive(second):
            assert time.monotonic() < deadline, "the other worker kept running"
            time.sleep(0.05)
    finally:
        srv.cleanup()


def test_metrics_total_every_worker(tmp_path: Path) -> None:
    """Only the first worker answers /metrics; it reports the sum of both workers' counters
    (published through shared memory), opened to scrapers without a token."""
    srv, port = start(tmp_path, api={"bind": f"127.0.0.1:{free_port()}", "open-metrics": True})
    try:
        metrics = srv.api_url + "/metrics"
        for _ in range(40):  # new connections: the kernel spreads them over both workers
            assert get(port, "/latest/meta-data/instance-id")[0] == 200

        def served() -> float:
            return sum(float(line.split()[1]) for line in httpx.get(metrics).text.splitlines()
                       if line.startswith("ecs_imds_dataplane_responses_total{"))

        deadline = time.monotonic() + 10
        while served() != 40:
            assert time.monotonic() < deadline, f"{served()} responses counted, not 40"
            time.sleep(0.1)
        text = httpx.get(metrics).text
        assert "ecs_imds_workers 2.0" in text
        assert 'ecs_imds_dataplane_responses_total{class="2xx",code="200"} 40.0' in text
        rss = [float(ln.split()[1]) for ln in text.splitlines()
               if ln.startswith("process_resident_memory_bytes ")]
        assert srv.proc is not None
        each = [int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf(
            "SC_PAGE_SIZE") for pid in children(srv.proc.pid)]
        assert rss[0] > 1.5 * max(each)  # both processes' memory, summed
        assert "ecs_imds_build_info{" in text
        assert httpx.get(srv.api_url + "/v1/instances").status_code == 401
    finally:
        srv.cleanup()
