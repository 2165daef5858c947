"""A store whose history changed under running servers.

First the stamps themselves (base.py), on both stores: every version has one, whoever
wrote it; `changes` with a reader's stamp says `resync` when the store's history is not
the reader's; notices carry their stamp; and a feed whose store went back to a backup and
was written to up to the same version reads its scope afresh.

Then for real: a PostgreSQL restored from a base backup taken before its last commits, and
a hot standby promoted before it received them, each put in the place of the lost primary
(the same socket, the same URL), under running servers.

In both, the new primary is written to before the servers can reach it, until its version
number is the one they serve: a server that trusted version numbers alone would go on
serving the lost commits forever, saying it is ready. Every server must serve the new
primary's state, without a restart, and its /readyz must never say "ready" while it serves
a lost commit (a watcher samples /readyz, then the data, all along).

Waits are bounded polls; the durations are printed (pytest -s), not asserted.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from ecs_imds.control.console.fleetview import FleetView
from ecs_imds.control.fleet import import_fleet
from ecs_imds.protocol.snapshot import Snapshot
from ecs_imds.store.base import Change
from ecs_imds.store.feed import ChangeFeed, SnapshotBuilder
from ecs_imds.store.keys import ensure_token_keys
from ecs_imds.store.postgres import PostgresStore
from ecs_imds.store.sqlite import SQLiteStore
from pg import PostgresCluster, wait_until
from server import ServerProcess, get
from test_replica import start
from test_scope import ip, placed
from test_store_backends import Backend, backend, fleet, instance

__all__ = ["backend"]


def bump(b: Backend) -> None:
    """A version bumped by hand (or by a server of an older release)."""
    query = "UPDATE state SET value = value + 1 WHERE key = 'version'"
    if b.kind == "sqlite":
        with sqlite3.connect(b.url.removeprefix("sqlite://")) as db:
            db.execute(query)
    else:
        with psycopg.connect(b.url) as db:
            db.execute(query)


def test_every_version_is_stamped_whoever_writes_it(backend: Backend) -> None:
    store = backend.open()
    import_fleet(store, fleet(1, 2))
    v1, s1 = store.head()
    store.put_instance(instance(1, **{"instance-name": "x"}), None)
    v2, s2 = store.head()
    bump(backend)
    v3, s3 = store.head()
    assert (v2, v3) == (v1 + 1, v1 + 2) and len({s1, s2, s3}) == 3
    changes = store.changes(v1, stamp=s1)
    assert not changes.resync and changes.ids == {"i-store00001"}
    assert (changes.version, changes.stamp) == (v3, s3)
    assert store.changes(v1, stamp=s1 + 1).resync  # another history
    assert store.changes(v2, stamp=s1).resync
    assert store.changes(v3 + 1, stamp=s3).resync  # the store is behind the reader
    assert not store.changes(v1).resync  # no stamp: not checked
    assert store.changes(v3 + 1).resync  # but the store being behind is seen anyway


def test_notices_carry_their_stamp(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    subscription = store.subscribe()
    assert subscription is not None
    try:
        version = store.put_instance(instance(1), None)
        notices: list[Change | None] = []
        while not notices:
            notices += subscription.wait(5)
        assert [(n.version, n.stamp) for n in notices if n] == [(version, store.head()[1])]
    finally:
        subscription.close()
        store.close()
    assert Change.parse(Change(3, {}, 42).payload()) == Change(3, {})
    assert Change.parse(Change(3, None, 42).payload()).stamp == 42  # type: ignore[union-attr]
    assert Change.parse('{"v":3,"s":"x"}') is None


def name_in(snap: Snapshot, instance_id: str) -> bytes:
    leaf = snap.by_id[instance_id].entries["meta-data/instance/instance-name"]  # type: ignore
    return bytes(leaf.body)


def test_a_feed_reads_afresh_a_store_gone_back_to_a_backup(tmp_path: Path) -> None:
    path, copy = tmp_path / "imds.db", tmp_path / "backup.db"
    writer = SQLiteStore(path)
    import_fleet(writer, fleet(1, 2))
    ensure_token_keys(writer)
    writer.put_instance(instance(1, **{"instance-name": "kept"}), None)
    with sqlite3.connect(path) as live, sqlite3.connect(copy) as backup:
        live.backup(backup)
    reader = SQLiteStore(path)
    builder = SnapshotBuilder(reader)
    published: list[Snapshot] = []
    feed = ChangeFeed(builder, builder.build(), published.append)
    console = FleetView(reader)  # the web console's view follows the history too
    version = writer.put_instance(instance(1, **{"instance-name": "lost"}), None)
    feed.poll()
    assert name_in(feed.current, "i-store00001") == b"lost"
    assert console.table().rows["i-store00001"].name == "lost"
    with sqlite3.connect(copy) as backup, sqlite3.connect(path) as live:
        backup.backup(live)  # the store goes back: "lost" was never written
    assert writer.version() == version - 1
    writer.put_instance(instance(2, **{"instance-name": "other"}), None)  # same version
    assert writer.version() == version == feed.current.version
    feed.poll()
    assert name_in(feed.current, "i-store00001") == b"kept"
    assert name_in(feed.current, "i-store00002") == b"other"
    assert [s.stale for s in published[1:]] == [True, False]  # said while it read again
    assert console.table().rows["i-store00001"].name == "kept"
    feed.poll()
    assert len(published) == 3
    writer.close()
    reader.close()

NAME = "/latest/meta-data/instance/instance-name"
LOST = b"lost"


def name_of(srv: ServerProcess, n: int) -> bytes:
    status, _, body = get(srv.port, NAME, ip(n))
    assert status == 200, (status, body)
    return body


def ready(srv: ServerProcess) -> dict[str, object]:
    body: dict[str, object] = srv.api().http.get("/readyz").json()
    return body


def rename(srv: ServerProcess, n: int, name: str) -> None:
    resp = srv.api().http.patch(f"/v1/instances/i-scope{n}", json={"instance-name": name})
    assert resp.status_code == 200, resp.text


class Watcher:
    """Samples each server's /readyz and then what it serves, until stopped; remembers
    every sample in which a server said it was ready while serving a lost commit."""

    def __init__(self, servers: list[ServerProcess]) -> None:
        self.servers = servers
        self.lies: list[tuple[str, object, bytes]] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for srv in self.servers:
                said = ready(srv)  # first: a later snapshot can only be truer
                names = {name_of(srv, n) for n in (1, 2, 3)}
                self.samples += 1
                if said["ready"] and LOST in names:
                    self.lies.append((srv.workdir.name, said["version"], LOST))
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def primary() -> Iterator[tuple[PostgresCluster, str]]:
    pg = PostgresCluster()
    try:
        pg.start()
        yield pg, pg.create_database("history")
    finally:
        pg.close()


@pytest.fixture
def servers(primary: tuple[PostgresCluster, str], tmp_path: Path
            ) -> Iterator[list[ServerProcess]]:
    _, url = primary
    made: list[ServerProcess] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            made.append(start(tmp_path / name, url, first=not made))
        version = ready(made[0])["version"]
        for srv in made:
            srv.wait_version(int(str(version)))
        yield made
    finally:
        for srv in made:
            srv.cleanup()


def write_until(cluster: PostgresCluster, url: str, version: int) -> None:
    """Write to `cluster` (on its own socket, out of the servers' reach) until its store
    is at `version`: the numbers the servers serve, with other content."""
    store = PostgresStore(cluster.url(url.split("/")[3].split("?")[0]))
    try:
        n = 0
        while store.version() < version:
            n += 1
            store.put_instance(placed(1 + n % 3, "h1" if n % 3 < 2 else "h2")
                               | {"instance-name": f"new-{n}"}, None)
        assert store.version() == version
    finally:
        store.close()


def lose_commits(servers: list[ServerProcess]) -> int:
    """Commits the servers serve, about to be lost; the version they reach."""
    for n in (1, 2, 3):
        rename(servers[0], n, LOST.decode())
    version = int(str(ready(servers[0])["version"]))
    for srv in servers:
        srv.wait_version(version)
        assert name_of(srv, 1) == LOST
    return version


def follow(servers: list[ServerProcess], old: PostgresCluster, url: str,
           prepare: Callable[[], PostgresCluster]) -> None:
    """Stop `old`, `prepare` the cluster that replaces it (on a socket of its own), put it
    in the place of `old` under the running servers: they serve its state. The watcher
    starts once every server has noticed `old` is gone: until then, ready and serving the
    commits `old` still held was the truth."""
    old.stop()
    for srv in servers:
        wait_until(lambda s=srv: not ready(s)["ready"], timeout=30)
    watcher = Watcher(servers)
    try:
        new = prepare()
        new.take_place_of(old)
        new.start()
        started = time.monotonic()
        store = PostgresStore(url)
        try:
            version = store.version()
            expected = {n: store.load_instances([f"i-scope{n}"])[0].doc.get("instance-name")
                        for n in (1, 2, 3)}
        finally:
            store.close()
        took = []
        for srv in servers:
            took.append(wait_until(lambda s=srv: all(
                name_of(s, n) == str(expected[n] or f"i-scope{n}").encode()
                for n in (1, 2, 3)), timeout=30))
            wait_until(lambda s=srv: ready(s)["ready"], timeout=30)
            assert ready(srv)["version"] == version
            assert "reading the whole fleet again" in srv.log()
        print(f"\nthe new primary started → every server serves its state after "
              f"{(time.monotonic() - started) * 1000:.0f} ms "
              f"({', '.join(f'{t * 1000:.0f}' for t in took)} ms); "
              f"{watcher.samples} samples of /readyz")
    finally:
        watcher.stop()
    assert watcher.lies == []
    for srv in servers:  # and they follow it from then on
        rename(srv, 2, f"after-{srv.workdir.name}")
        wait_until(lambda s=srv: all(name_of(o, 2) == f"after-{s.workdir.name}".encode()
                                     for o in servers), timeout=10)


def test_a_restore_to_an_earlier_base_backup_is_followed(
        primary: tuple[PostgresCluster, str], servers: list[ServerProcess]) -> None:
    pg, url = primary
    backup = PostgresCluster(primary=pg, standby=False)  # before the last commits
    version = lose_commits(servers)

    def restore() -> PostgresCluster:
        backup.start()  # restored, on a socket of its own: written to, then stopped
        write_until(backup, url, version)
        backup.stop()
        return backup

    try:
        follow(servers, pg, url, restore)
    finally:
        backup.close()


def test_a_standby_promoted_before_it_received_the_last_commits_is_followed(
        primary: tuple[PostgresCluster, str], servers: list[ServerProcess]) -> None:
    pg, url = primary
    standby = PostgresCluster(primary=pg)
    try:
        standby.start()
        wait_until(lambda: standby.replayed(pg))
        standby.stop()  # it receives nothing more
        version = lose_commits(servers)

        def fail_over() -> PostgresCluster:
            standby.start()  # the primary is gone: nothing more to receive
            standby.promote()
            write_until(standby, url, version)
            standby.stop()
            return standby

        follow(servers, pg, url, fail_over)
    finally:
        standby.close()
