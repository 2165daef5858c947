"""Reads from a hot standby: a primary and a streaming replica of the test's own
(`pg_basebackup -R`, unix sockets only), and real servers whose change feed reads the
replica (`store: {url: PRIMARY, read-url: STANDBY}`) while their control plane writes to the
primary. A change made on the primary is served; the servers keep serving while the standby
is down and catch up when it is back; an idle server holds one database connection; and
after a failover (the primary gone, the standby promoted) they follow the new primary.

Waits are bounded polls; the durations are printed (pytest -s), not asserted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ecs_imds.store.pgpool import IDLE_TIMEOUT
from pg import PostgresCluster, wait_until
from server import ServerProcess, free_port, get
from test_scope import FLEET, VPC, ip

NAME = "/latest/meta-data/instance/instance-name"


@pytest.fixture(scope="module")
def clusters() -> Iterator[tuple[PostgresCluster, PostgresCluster, str]]:
    """A primary, a database on it, and a hot standby streaming from it."""
    primary = PostgresCluster()
    standby: PostgresCluster | None = None
    try:
        primary.start()
        url = primary.create_database("replica")
        standby = PostgresCluster(primary=primary)
        standby.start()
        yield primary, standby, url.split("/")[3].split("?")[0]
    finally:
        if standby is not None:
            standby.close()
        primary.close()


def both(first: PostgresCluster, second: PostgresCluster, db: str, attrs: str) -> str:
    """A libpq URL naming two servers: the first that is `attrs` (read-write, …) is used."""
    return (f"postgresql://postgres@/{db}?host={first.dir},{second.dir}&port=5432,5432"
            f"&target_session_attrs={attrs}")


def start(workdir: Path, store: dict[str, Any] | str, first: bool = False) -> ServerProcess:
    """A server of FLEET on a free loopback port (`.port`) on `store`; the first one
    imports the fleet, the others find it there."""
    port = free_port()
    srv = ServerProcess(workdir, FLEET, [{"bind": f"127.0.0.1:{port}", "vpc-id": VPC}],
                        store=store, limits={"rate": 0}, **{"poll-interval": 0.2})
    srv.port = port
    if first:
        srv.start()
    else:
        srv.launch()
    return srv


@pytest.fixture(scope="module")
def servers(clusters: tuple[PostgresCluster, PostgresCluster, str],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    """`listener` reads from the primary (LISTEN); `reader` polls the standby; `follower`
    names both servers in both URLs, to follow a failover: it reads from the standby while
    there is one and writes to whichever is the primary."""
    primary, standby, db = clusters
    made: dict[str, ServerProcess] = {}
    try:
        made["listener"] = start(tmp_path_factory.mktemp("listener"),
                                 {"url": primary.url(db)}, first=True)
        made["reader"] = start(tmp_path_factory.mktemp("reader"), {
            "url": primary.url(db), "read-url": standby.url(db)})
        made["follower"] = start(tmp_path_factory.mktemp("follower"), {
            "url": both(primary, standby, db, "read-write"),
            "read-url": both(standby, primary, db, "prefer-standby")})
        wait_until(lambda: standby.replayed(primary))
        version = version_of(made["listener"])
        for srv in made.values():
            srv.wait_version(version)
        yield made
    finally:
        for srv in made.values():
            srv.cleanup()


def version_of(srv: ServerProcess) -> int:
    return int(srv.api().http.get("/readyz").json()["version"])


def name_of(srv: ServerProcess, n: int) -> bytes:
    status, _, body = get(srv.port, NAME, ip(n))
    assert status == 200, (status, body)
    return body


def rename(srv: ServerProcess, n: int, name: str) -> float:
    """Rename instance n through `srv`'s control plane; when it was answered."""
    resp = srv.api().http.patch(f"/v1/instances/i-scope{n}", json={"instance-name": name})
    assert resp.status_code == 200, resp.text
    return time.monotonic()


def connections(cluster: PostgresCluster, db: str) -> dict[str, int]:
    """The servers' connections to `cluster`, by application_name."""
    with psycopg.connect(cluster.url(db), autocommit=True) as conn:
        rows = conn.execute("SELECT application_name, count(*) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND application_name "
                            "LIKE 'ecs-imds%%' GROUP BY 1").fetchall()
    return {name: int(count) for name, count in rows}


def test_a_change_on_the_primary_is_served_from_the_standby(
        clusters: tuple[PostgresCluster, PostgresCluster, str],
        servers: dict[str, ServerProcess]) -> None:
    reader = servers["reader"]
    assert reader.api().http.get("/readyz").json()["instances"] == 4
    written = rename(servers["listener"], 1, "from-the-primary")
    took = wait_until(lambda: name_of(reader, 1) == b"from-the-primary")
    assert name_of(servers["listener"], 1) == b"from-the-primary"
    written = rename(reader, 2, "through-the-reader")  # its writes go to the primary
    took = wait_until(lambda: name_of(reader, 2) == b"through-the-reader")
    print(f"\nwritten on the primary → served from the standby in {took * 1000:.0f} ms "
          f"({(time.monotonic() - written) * 1000:.0f} ms after the write was answered)")


def test_an_idle_server_holds_one_connection(
        clusters: tuple[PostgresCluster, PostgresCluster, str],
        servers: dict[str, ServerProcess]) -> None:
    primary, standby, db = clusters
    rename(servers["listener"], 3, "wake-the-pools")
    # once the pools have closed what sat idle: the listener's change feed on the primary
    # (it also does the feed's reads); on the standby, the one polling connection of each
    # of the reader and the follower
    waited = wait_until(lambda: connections(primary, db) == {"ecs-imds change-feed": 1},
                        timeout=IDLE_TIMEOUT * 3)
    assert connections(standby, db) == {"ecs-imds": 2}
    print(f"\npools idle after {waited:.1f} s")


def test_serving_goes_on_while_the_standby_is_down(
        clusters: tuple[PostgresCluster, PostgresCluster, str],
        servers: dict[str, ServerProcess]) -> None:
    _, standby, _ = clusters
    reader, follower = servers["reader"], servers["follower"]
    before = name_of(reader, 1)
    standby.stop()
    try:
        wait_until(lambda: reader.api().http.get("/readyz").json()["stale"])
        assert name_of(reader, 1) == before  # the last snapshot keeps serving
        rename(reader, 1, "while-the-standby-was-down")  # writes go on: to the primary
        assert name_of(reader, 1) == before
        time.sleep(1)  # polls fail meanwhile, without harm
        assert name_of(reader, 1) == before
        # the follower, told of both, reads from the primary meanwhile
        wait_until(lambda: name_of(follower, 1) == b"while-the-standby-was-down")
        assert not follower.api().http.get("/readyz").json()["stale"]
    finally:
        restarted = time.monotonic()
        standby.start()
    took = wait_until(lambda: name_of(reader, 1) == b"while-the-standby-was-down",
                      timeout=30)
    assert not reader.api().http.get("/readyz").json()["stale"]
    print(f"\nthe standby back → the change made meanwhile served in {took * 1000:.0f} ms "
          f"({(time.monotonic() - restarted) * 1000:.0f} ms after pg_ctl start was called)")


def test_a_promoted_standby_is_followed(
        clusters: tuple[PostgresCluster, PostgresCluster, str],
        servers: dict[str, ServerProcess]) -> None:
    primary, standby, _ = clusters
    follower, reader = servers["follower"], servers["reader"]
    rename(follower, 4, "before-the-failover")
    wait_until(lambda: name_of(follower, 4) == b"before-the-failover")
    primary.stop()  # the primary is lost ...
    standby.promote()  # ... and its standby takes over
    promoted = time.monotonic()
    # the follower's control plane writes to the new primary, its feed reads from it
    wait_until(lambda: write_works(follower, 4, "after-the-failover"), timeout=30)
    took = wait_until(lambda: name_of(follower, 4) == b"after-the-failover", timeout=30)
    assert not follower.api().http.get("/readyz").json()["stale"]
    assert name_of(follower, 1) == b"while-the-standby-was-down"
    # the reader, whose standby became the primary, reads the change there too
    wait_until(lambda: name_of(reader, 4) == b"after-the-failover", timeout=30)
    # both caught up from the change log: neither read the fleet again
    assert not any("does not reach back" in s.log() for s in servers.values())
    print(f"\npromoted → a write through the follower served in "
          f"{(time.monotonic() - promoted) * 1000:.0f} ms (last wait {took * 1000:.0f} ms)")


def write_works(srv: ServerProcess, n: int, name: str) -> bool:
    resp = srv.api().http.patch(f"/v1/instances/i-scope{n}", json={"instance-name": name})
    return resp.status_code == 200
