"""A database that hangs, or is cut off, under running servers: every process of the
PostgreSQL stopped (SIGSTOP), only its postmaster stopped, and a network partition (the
database on TCP in a namespace of its own, the servers in another, the link set down).

While it lasts: the data plane answers every read; /readyz and the stale metric say so
within a bound (when the store can really not be read) and /healthz answers at once; an
API write ends in a 503 JSON error rather than waiting; no server holds more database
connections than its pool's size. After: every server is ready and serves a new change,
and its connections go back to idle.

Waits are bounded polls; durations are printed (pytest -s), never asserted.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from ecs_imds.control.fleet import import_fleet
from ecs_imds.protocol.snapshot import Snapshot
from ecs_imds.store.base import StoreSettings
from ecs_imds.store.feed import ChangeFeed, SnapshotBuilder
from ecs_imds.store.keys import ensure_token_keys
from ecs_imds.store.postgres import PostgresStore
from faults import (
    DB_IP,
    NETWORK,
    Partition,
    Reader,
    db_connections,
    db_connections_tcp,
    in_netns,
)
from pg import PostgresCluster, cluster, wait_until
from server import ServerProcess, free_port, get
from test_scope import FLEET, VPC, ip

NAME = "/latest/meta-data/instance/instance-name"
POOL = 4
# Short bounds, so that a hang outlasts them within a test.
STORE = {"statement-timeout": 2, "connect-timeout": 2, "stale-after": 2, "pool-size": POOL,
         "retry-max": 0.5}
HANG = 8.0  # seconds: past the statement deadline (2 s + 2 s of grace)


def start(workdir: Path, url: str, first: bool, launcher: Any = None) -> ServerProcess:
    port = free_port()
    srv = ServerProcess(workdir, FLEET, [{"bind": f"127.0.0.1:{port}", "vpc-id": VPC}],
                        store={"url": url, **STORE}, limits={"rate": 0},
                        **{"poll-interval": 0.2})
    srv.port = port
    if first:
        srv.start(launcher)
    else:  # the fleet is in the store already: wait until it is served (the API comes first)
        srv.launch(launcher)
        wait_until(lambda: readyz(srv)["ready"], timeout=60)
    return srv


def readyz(srv: ServerProcess, timeout: float = 2.0) -> dict[str, Any]:
    """/readyz, which must answer at once whatever the store does."""
    body: dict[str, Any] = srv.api().http.get("/readyz", timeout=timeout).json()
    return body


def stale_metric(srv: ServerProcess) -> str:
    text = srv.api().http.get("/metrics", timeout=2).text
    return next(line.split()[-1] for line in text.splitlines()
                if line.startswith("ecs_imds_snapshot_stale "))


def rename(srv: ServerProcess, n: int, name: str) -> httpx.Response:
    return srv.api().http.patch(f"/v1/instances/i-scope{n}", json={"instance-name": name},
                                timeout=30)


def application(url: str, name: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}application_name={name}"


def connections(admin_url: str) -> dict[str, int]:
    """Every client's connections to the database, by application_name."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute("SELECT application_name, count(*) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND application_name "
                            "LIKE 'srv-%%' GROUP BY 1").fetchall()
    return {name: int(count) for name, count in rows}


def per_server(counts: dict[str, int], name: str) -> int:
    return sum(n for app, n in counts.items() if app.split()[0] == name)


def survive(servers: list[ServerProcess], fault: Callable[[], None],
            recover: Callable[[], None], held: Callable[[ServerProcess], int],
            store_away: bool, admin_url: str, netns: str | None = None) -> None:
    """Readers on every server; `fault()`; checks while it lasts; `recover()`; checks after."""
    readers = [Reader(srv.port, NAME, ip(1), netns) for srv in servers]
    began = time.monotonic()
    try:
        fault()
        faulted = time.monotonic()
        try:
            if store_away:
                went = [wait_until(lambda s=srv: readyz(s)["stale"], timeout=15)
                        for srv in servers]
                for srv in servers:
                    assert readyz(srv)["status"] == "stale"
                    assert stale_metric(srv) == "1.0"
                    assert srv.api().http.get("/healthz", timeout=2).status_code == 200
                written = time.monotonic()
                resp = rename(servers[0], 2, "during")  # waits its deadline, no longer
                assert resp.status_code == 503, resp.text
                assert resp.json()["Code"] == "ServiceUnavailable"
                print(f"\nstale after {', '.join(f'{t:.1f}' for t in went)} s; the write "
                      f"refused after {time.monotonic() - written:.1f} s")
            while time.monotonic() - faulted < HANG:
                for srv in servers:
                    assert srv.proc is not None
                    assert held(srv) <= POOL
                time.sleep(0.5)
        finally:
            recover()
        recovered = time.monotonic()
        for srv in servers:
            wait_until(lambda s=srv: readyz(s)["ready"], timeout=30)
        assert rename(servers[1], 3, "after").status_code == 200
        for srv in servers:
            wait_until(lambda s=srv: in_netns(netns, lambda: get(s.port, NAME, ip(3)))[2]
                       == b"after", timeout=10)
        print(f"ready and serving a new change {time.monotonic() - recovered:.1f} s after "
              f"the fault ended")
    finally:
        for reader in readers:
            reader.stop()
    assert all(r.ok > 0 for r in readers)
    assert [r.failed for r in readers] == [[] for _ in readers], "reads failed"
    print(f"{sum(r.ok for r in readers)} reads in {time.monotonic() - began:.0f} s, "
          "none failed")
    counts = connections(admin_url)
    for srv in servers:
        assert per_server(counts, srv.workdir.name) <= POOL
    # and back to idle: only each change feed's connection once the pools have closed theirs
    idle = {f"{srv.workdir.name} change-feed": 1 for srv in servers}
    try:
        wait_until(lambda: connections(admin_url) == idle, timeout=45, step=0.5)
    except AssertionError:
        raise AssertionError(f"not idle: {connections(admin_url)}") from None


@pytest.fixture
def own_pg() -> Iterator[PostgresCluster]:
    with cluster() as pg:
        yield pg


@pytest.mark.parametrize("postmaster_only", [False, True], ids=["every-process",
                                                                 "postmaster-only"])
def test_a_hung_database(own_pg: PostgresCluster, tmp_path: Path,
                         postmaster_only: bool) -> None:
    """Every process stopped: the store cannot be read. The postmaster alone: open
    connections go on working, so the servers are still current and say so (a change
    written meanwhile on an open connection is served), while new connections hang."""
    url = own_pg.create_database("hang")
    servers: list[ServerProcess] = []
    try:
        for name in ("srv-a", "srv-b"):
            (tmp_path / name).mkdir()
            servers.append(start(tmp_path / name, application(url, name), first=not servers))
        open_before = psycopg.connect(url, autocommit=True)

        def fault() -> None:
            own_pg.freeze(postmaster_only)
            if postmaster_only:  # the servers are current: they read what is written
                write_on(open_before, "i-scope4", "while-frozen")
                for srv in servers:
                    wait_until(lambda s=srv: get(s.port, NAME, ip(4))[2] == b"while-frozen",
                               timeout=10)
                    assert readyz(srv)["ready"]

        survive(servers, fault, own_pg.thaw,
                lambda srv: db_connections(srv.proc.pid, own_pg.socket),  # type: ignore
                store_away=not postmaster_only, admin_url=url)
        open_before.close()
    finally:
        for srv in servers:
            srv.cleanup()


def write_on(conn: psycopg.Connection[Any], instance_id: str, name: str) -> None:
    """Rename an instance as a server writes (version, change log, notice), on `conn`."""
    with conn.transaction():
        row = conn.execute("UPDATE state SET value = value + 1 WHERE key = 'version' "
                           "RETURNING value").fetchone()
        assert row is not None
        conn.execute("UPDATE instances SET doc = jsonb_set(doc::jsonb, '{instance-name}', "
                     "to_jsonb(%s::text))::text, revision = %s WHERE instance_id = %s",
                     (name, row[0], instance_id))
        conn.execute("INSERT INTO changes (version, host, ids) VALUES (%s, '', %s)",
                     (row[0], [instance_id]))


def test_a_partition_between_the_servers_and_their_database(tmp_path: Path) -> None:
    partition = Partition()
    pg = PostgresCluster()
    servers: list[ServerProcess] = []
    try:
        pg.listen_tcp(DB_IP, NETWORK, partition.db)
        pg.start()
        local = pg.create_database("partition")  # over the unix socket, for the test
        db = local.split("/")[3].split("?")[0]
        url = f"postgresql://postgres@{DB_IP}:5432/{db}"
        for name in ("srv-a", "srv-b"):
            (tmp_path / name).mkdir()
            servers.append(start(tmp_path / name, application(url, name), not servers,
                                 partition.launcher))
        survive(servers, partition.cut, partition.heal,
                lambda srv: db_connections_tcp(srv.proc.pid, partition.srv),  # type: ignore
                store_away=True, admin_url=local, netns=partition.srv)
    finally:
        for srv in servers:
            srv.cleanup()
        pg.close()
        partition.close()


def test_a_database_with_no_connection_free(own_pg: PostgresCluster, tmp_path: Path) -> None:
    """The servers' role may open no connection (CONNECTION LIMIT 0: PostgreSQL refuses
    as at max_connections, SQLSTATE 53300). A server starting then waits, saying so once,
    and starts when a connection is free; a running server whose connection was cut says
    so once, keeps serving, tries again with backoff (not every poll interval), and is
    current again when one is free."""
    local = own_pg.create_database("full")
    db = local.split("/")[3].split("?")[0]
    limit = connection_limit(local, db)
    limit(0)
    url = local.replace("postgres@", "imds@")
    port = free_port()
    srv = ServerProcess(tmp_path, FLEET, [{"bind": f"127.0.0.1:{port}", "vpc-id": VPC}],
                        store={"url": url, "retry-max": 1}, limits={"rate": 0},
                        **{"poll-interval": 0.1})
    srv.port = port
    try:
        with srv.log_path.open("a") as log:
            srv.proc = subprocess.Popen(srv.command(), stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: "waiting for it" in srv.log(), timeout=20)
        time.sleep(2)  # it goes on waiting, and says so only once
        assert srv.proc.poll() is None
        assert srv.log().count("waiting for it") == 1
        assert "too many connections" in srv.log()
        limit(-1)
        srv.wait_api(timeout=30)
        srv.import_fleet()
        reader = Reader(srv.port, NAME, ip(1))
        try:
            limit(0)
            refused = own_pg.log().count("too many connections")
            cut(local)
            wait_until(lambda: readyz(srv)["stale"], timeout=15)
            assert rename(srv, 2, "while-full").status_code == 503
            time.sleep(4)
            attempts = own_pg.log().count("too many connections") - refused
            assert 0 < attempts <= 4 / 0.1 / 2, attempts  # fewer than half of every poll
            assert srv.log().count("store unreachable") == 1
            limit(-1)
            wait_until(lambda: readyz(srv)["ready"], timeout=15)
            assert rename(srv, 2, "after").status_code == 200
            wait_until(lambda: get(srv.port, NAME, ip(2))[2] == b"after", timeout=10)
        finally:
            reader.stop()
        assert reader.failed == [] and reader.ok > 0
        print(f"\n{attempts} connection attempts in 4 s while full; {reader.ok} reads, "
              "none failed")
    finally:
        srv.cleanup()


def connection_limit(admin_url: str, db: str) -> Callable[[int], None]:
    """A role `imds` owning database `db`; the function sets its CONNECTION LIMIT."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("CREATE ROLE imds LOGIN")
        conn.execute(f'ALTER DATABASE "{db}" OWNER TO imds')

    def limit(n: int) -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"ALTER ROLE imds CONNECTION LIMIT {n}")
    return limit


def cut(admin_url: str) -> None:
    """End every connection of the role `imds`."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE usename = 'imds'")


def test_the_feed_says_stale_while_its_own_call_hangs(own_pg: PostgresCluster) -> None:
    """The watchdog, not the feed's call: with a statement timeout far longer than the
    staleness bound, the snapshot is said to be stale while the call still waits."""
    url = own_pg.create_database("watchdog")
    settings = StoreSettings(statement_timeout=60, stale_after=1)
    store = PostgresStore(url, settings)
    import_fleet(store, FLEET)
    ensure_token_keys(store)
    builder = SnapshotBuilder(store)
    published: list[Snapshot] = []
    feed = ChangeFeed(builder, builder.build(), published.append, interval=0.05,
                      heartbeat=0.2, settings=settings)
    feed.start()
    try:
        own_pg.freeze()
        try:
            went = wait_until(lambda: feed.current.stale, timeout=20)
        finally:
            own_pg.thaw()
        back = wait_until(lambda: not feed.current.stale, timeout=20)
        assert [s.stale for s in published] == [True, False]
        print(f"\nstale {went:.1f} s into the hang; fresh {back:.1f} s after it")
    finally:
        feed.stop()
        store.close()


def _switches(thread_name: str) -> int:
    """How often a thread of this process has slept and been woken (voluntary switches)."""
    import threading

    for thread in threading.enumerate():
        if thread.name == thread_name:
            status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
            return int(status.split("voluntary_ctxt_switches:")[1].split()[0])
    raise AssertionError(f"no thread {thread_name}")


def test_round_trips_do_not_wake_the_deadline_thread(pg_url: str) -> None:
    """Every round trip has a deadline, but only a hang needs the thread that enforces them
    awake: a hundred writes (a dozen round trips each) leave it asleep, where it used to
    wake for each round trip."""
    store = PostgresStore(pg_url, StoreSettings(statement_timeout=30))
    try:
        import_fleet(store, FLEET)
        doc = store.load_instances()[0].doc
        before = _switches("pg-deadlines")
        for _ in range(100):
            store.put_instance(doc, None)
        assert _switches("pg-deadlines") - before <= 2
    finally:
        store.close()
