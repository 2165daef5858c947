"""The control plane while its store is held or away: the data plane and the health routes
keep answering, store calls wait on threads of their own, and nothing else waits on them.

The store is "hung" for real: another connection holds SQLite's write lock, so every write
the API makes blocks inside SQLite until the lock is let go."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from ecs_imds.control.fleet import import_fleet
from ecs_imds.demo import DEMO_VPC, demo_fleet
from ecs_imds.store.postgres import PostgresStore
from pg import wait_until
from server import ServerProcess, demo_server, free_port, get

WEB = "i-bp1demo0000000000001"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = demo_server(tmp_path, {"127.0.0.1": WEB})
    yield srv
    srv.cleanup()


def test_a_held_store_stalls_only_the_writes_waiting_for_it(server: ServerProcess) -> None:
    port = server.port
    auth = {"Authorization": f"Bearer {server.token()}"}
    holder = sqlite3.connect(server.workdir / "data" / "ecs-imds.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # SQLite's write lock, held by someone else
    done: list[int] = []

    def write(n: int) -> None:
        resp = httpx.patch(f"{server.api_url}/v1/instances/{WEB}/metadata-options",
                           json={"HttpPutResponseHopLimit": 1 + n % 3}, headers=auth,
                           timeout=120)
        done.append(resp.status_code)

    writers = [threading.Thread(target=write, args=(n,)) for n in range(48)]
    try:
        for t in writers:  # more writers than any thread pool has threads
            t.start()
        with httpx.Client(base_url=server.api_url, headers=auth, timeout=20) as api:
            for _ in range(3):
                assert api.get("/healthz").json() == {"status": "ok"}
                assert api.get("/readyz").json()["ready"] is True
                assert "ecs_imds_snapshot_version" in api.get("/metrics").text
                assert get(port, "/latest/meta-data/instance-id")[2] == WEB.encode()
        assert done == [], "a write finished while the store's lock was held"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        for t in writers:
            t.join(timeout=120)
    assert done == [200] * 48


def test_readyz_says_starting_until_the_first_snapshot(tmp_path: Path, pg_url: str) -> None:
    """The first snapshot cannot be built while another session holds the instances table:
    the API answers already, /readyz says "starting", and "ready" once the table is free."""
    store = PostgresStore(pg_url)
    import_fleet(store, demo_fleet())
    store.close()
    srv = ServerProcess(tmp_path, demo_fleet(),
                        [{"bind": f"127.0.0.1:{free_port()}", "vpc-id": DEMO_VPC}],
                        store=pg_url, api={"bind": f"127.0.0.1:{free_port()}"})
    holder = psycopg.connect(pg_url)
    try:
        holder.execute("LOCK TABLE instances IN ACCESS EXCLUSIVE MODE")
        srv.launch()
        for _ in range(3):
            ready = httpx.get(srv.api_url + "/readyz")
            assert ready.status_code == 503
            assert ready.json() == {"status": "starting", "ready": False, "stale": False,
                                    "version": None, "age_seconds": None, "instances": 0}
            assert httpx.get(srv.api_url + "/healthz").json() == {"status": "ok"}
        holder.rollback()
        wait_until(lambda: httpx.get(srv.api_url + "/readyz").status_code == 200)
        assert httpx.get(srv.api_url + "/readyz").json()["instances"] == 3
    finally:
        holder.close()
        srv.cleanup()
