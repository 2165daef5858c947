"""A server without a control plane (`api: false`, as on a host scoped to its instances)
loads only what serving needs: not FastAPI, uvicorn, the console, the HTTP client nor rich,
on PostgreSQL not sqlite3 (together ~30 MB resident, ~1 s of start-up per process), and
not the Prometheus client while nothing scrapes it (2 MB).

The real `ecs-imds serve` runs with PYTHONPROFILEIMPORTTIME, which makes Python itself name
every module it imports; nothing in the server is asked."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ecs_imds.demo import DEMO_VPC
from pg import wait_until
from server import ECS_IMDS, free_port, get

UNNEEDED = ("fastapi", "uvicorn", "starlette", "ecs_imds.control.console",
            "ecs_imds.control.app", "httpx", "rich", "sqlite3", "prometheus_client")


def imported(stderr: str) -> set[str]:
    """The modules `-X importtime` reported: `import time: self | cumulative | name`."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def test_a_postgresql_server_without_api_loads_only_what_serving_needs(
        tmp_path: Path, pg_url: str) -> None:
    port, ready = free_port(), tmp_path / "ready.json"
    log = tmp_path / "stderr"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [ECS_IMDS, "--data-dir", str(tmp_path / "data"), "--store", pg_url, "serve", "--demo",
             "--api", "off",
             "--listen", f"127.0.0.1:{port}={DEMO_VPC}", "--ready-file", str(ready)],
            env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
            stdout=subprocess.DEVNULL, stderr=err, text=True)
    try:
        wait_until(lambda: ready.exists() or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, log.read_text()[-2000:]
        assert json.loads(ready.read_text())["api"] is None
        status, _, _ = get(port, "/latest/meta-data/")  # serving: answered, not by an API
        assert status in (200, 403, 404)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    modules = imported(log.read_text())
    assert "ecs_imds.dataplane.plane" in modules and "ecs_imds.store.postgres" in modules
    assert {m for m in modules for top in UNNEEDED
            if m == top or m.startswith(top + ".")} == set()
