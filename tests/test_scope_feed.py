"""Servers scoped to hosts: the snapshot and the change feed hold and read only the instances
placed on them; a change elsewhere costs a version number; a large change is carried by the
change log; only past the log's retention is the scope read again in full (afresh). Run on both
stores (SQLite, and a real PostgreSQL with LISTEN/NOTIFY)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ecs_imds.control.fleet import import_fleet
from ecs_imds.protocol.snapshot import Snapshot
from ecs_imds.store import open_store
from ecs_imds.store.base import PRUNE_EVERY, Change, Scope, Store
from ecs_imds.store.feed import ChangeFeed, SnapshotBuilder
from ecs_imds.store.keys import ensure_token_keys
from pg import PostgresCluster, wait_until
from test_store_backends import DEFAULTS, VPC, instance

H1, H2 = frozenset({"h1"}), frozenset({"h2"})


def on(host: str | None, n: int, **extra: Any) -> dict[str, Any]:
    doc = instance(n, **extra)
    if host is not None:
        doc["dedicated-host-id"] = host
    return doc


class Reads:
    """What a store was asked for: the instances read, the revisions listed."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loaded: list[list[str] | None] = []
        self.scans: list[Scope] = []
        load, revisions = store.load_instances, store.revisions

        def load_instances(ids: list[str] | None = None, scope: Scope = None) -> Any:
            self.loaded.append(None if ids is None else sorted(ids))
            return load(ids, scope)

        def scan(scope: Scope = None) -> dict[str, int]:
            self.scans.append(scope)
            return revisions(scope)

        monkeypatch.setattr(store, "load_instances", load_instances)
        monkeypatch.setattr(store, "revisions", scan)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path}/imds.db"
        return
    pg: PostgresCluster = request.getfixturevalue("postgres")
    url = pg.create_database()
    yield url
    pg.drop_database(url)


@pytest.fixture
def writer(url: str) -> Iterator[Store]:
    store = open_store(url, Path("/nonexistent"))
    import_fleet(store, {"defaults": DEFAULTS, "instances": [
        on("h1", 1), on("h1", 2), on("h2", 3), on(None, 4)]})
    ensure_token_keys(store)
    yield store
    store.close()


class Server:
    """A scoped server's store, builder and feed (another process, as far as the store
    knows), recording what the feed publishes."""

    def __init__(self, url: str, scope: Scope) -> None:
        self.store = open_store(url, Path("/nonexistent"))
        self.builder = SnapshotBuilder(self.store, scope=scope)
        self.published: list[Snapshot] = []
        self.feed = ChangeFeed(self.builder, self.builder.build(), self.published.append,
                               interval=0.05, heartbeat=0.5)

    @property
    def ids(self) -> set[str]:
        return set(self.feed.current.by_id)

    def close(self) -> None:
        self.feed.stop()
        self.store.close()


@pytest.fixture
def servers(url: str, writer: Store) -> Iterator[dict[str, Server]]:
    made = {"h1": Server(url, H1), "h2": Server(url, H2), "all": Server(url, None)}
    yield made
    for s in made.values():
        s.close()


ID = [instance(n)["instance-id"] for n in range(10)]


def test_a_scoped_snapshot_holds_only_its_hosts(servers: dict[str, Server]) -> None:
    assert servers["h1"].ids == {ID[1], ID[2]}
    assert servers["h2"].ids == {ID[3]}
    assert servers["all"].ids == {ID[1], ID[2], ID[3], ID[4]}
    snap = servers["h1"].feed.current
    assert snap.identify(VPC, "10.0.0.3") is snap.by_id[ID[1]]
    assert snap.identify(VPC, "10.0.0.5") is None  # i-3's address: on another host


def test_a_change_elsewhere_costs_a_version_number(writer: Store, servers: dict[str, Server],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    h1 = servers["h1"]
    before = h1.feed.current
    reads = Reads(h1.store, monkeypatch)
    version = writer.put_instance(on("h2", 3, **{"instance-name": "elsewhere"}), None)
    h1.feed.poll()
    after = h1.feed.current
    assert after.version == version and after.by_id is before.by_id
    assert after.by_address is before.by_address and after.key_ring is before.key_ring
    assert reads.loaded == [] and reads.scans == []


def test_an_instance_moves_between_servers(writer: Store, servers: dict[str, Server],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    reads = {name: Reads(s.store, monkeypatch) for name, s in servers.items()}
    writer.put_instance(on("h2", 2), None)
    for s in servers.values():
        s.feed.poll()
    assert servers["h1"].ids == {ID[1]} and servers["h2"].ids == {ID[2], ID[3]}
    assert servers["h1"].feed.current.identify(VPC, "10.0.0.4") is None
    assert servers["h2"].feed.current.identify(VPC, "10.0.0.4") is not None
    assert all(r.loaded == [[ID[2]]] and r.scans == [] for r in reads.values())
    writer.put_instance(on(None, 2), None)  # unplaced: only the unscoped server has it
    for s in servers.values():
        s.feed.poll()
    assert ID[2] not in servers["h2"].ids and ID[2] in servers["all"].ids


def test_a_listening_scoped_feed_follows_a_move(url: str, writer: Store,
                                                servers: dict[str, Server]) -> None:
    for s in servers.values():
        s.feed.start()
    writer.put_instance(on("h2", 1), None)
    wait_until(lambda: ID[1] in servers["h2"].ids and ID[1] not in servers["h1"].ids)
    version = writer.delete_instance(ID[3], None)
    wait_until(lambda: ID[3] not in servers["h2"].ids)
    wait_until(lambda: servers["h1"].feed.current.version == version)


def test_a_large_change_is_carried_by_the_log(writer: Store, servers: dict[str, Server],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    h1, everything = servers["h1"], servers["all"]
    subscription = h1.store.subscribe()
    try:
        big = [on("h9", n, ip=f"10.1.{n // 250}.{n % 250 + 2}") for n in range(100, 2100)]
        version = writer.write_fleet(None, [*big, on("h1", 1, **{"instance-name": "one"})])
        notices = [] if subscription is None else wait_for_notices(subscription)
    finally:
        if subscription is not None:
            subscription.close()
    if notices:  # PostgreSQL: the notice names the hosts only, the log has the rest
        assert notices == [Change(version, {"h1": None, "h9": None})]
    reads = Reads(h1.store, monkeypatch)
    if notices:
        h1.feed.apply(notices)
    else:
        h1.feed.poll()
    assert h1.feed.current.version == version and reads.loaded == [[ID[1]]]
    assert reads.scans == []
    name = h1.feed.current.by_id[ID[1]].entries["meta-data/instance/instance-name"]
    assert name.body == b"one"  # type: ignore[union-attr]
    all_reads = Reads(everything.store, monkeypatch)
    everything.feed.poll()
    assert len(everything.ids) == 2004 and all_reads.scans == []
    assert [len(ids or ()) for ids in all_reads.loaded] == [2001]


def wait_for_notices(subscription: Any) -> list[Change | None]:
    got: list[Change | None] = []
    while not got:
        got += subscription.wait(5)
        assert got, "no notice"
    return got


def test_past_the_retention_only_the_scope_is_read_again(
        url: str, writer: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    pruning = open_store(url, Path("/nonexistent"), retention=0)
    h1 = Server(url, H1)
    try:
        reads = Reads(h1.store, monkeypatch)
        writer.put_instance(on("h1", 2, **{"instance-name": "while away"}), None)
        while pruning.version() % PRUNE_EVERY:  # the log is pruned at these versions
            pruning.put_instance(on("h2", 3), None)
        h1.feed.poll()
        assert reads.scans == [H1]  # its scope's revisions, not the fleet's
        # and its scope afresh: past the log, the store cannot say the history is the same
        assert reads.loaded == [[ID[1], ID[2]]]
        assert h1.feed.current.version == writer.version()
        name = h1.feed.current.by_id[ID[2]].entries["meta-data/instance/instance-name"]
        assert name.body == b"while away"  # type: ignore[union-attr]
    finally:
        h1.close()
        pruning.close()


def test_defaults_and_keys_reach_every_scope(writer: Store, servers: dict[str, Server]
                                             ) -> None:
    import_fleet(writer, {"defaults": DEFAULTS | {"region-id": "cn-beijing"}, "instances": []})
    for s in servers.values():
        s.feed.poll()
        region = next(iter(s.feed.current.by_id.values())).entries["meta-data/region-id"]
        assert region.body == b"cn-beijing"  # type: ignore[union-attr]
