"""The change feed on PostgreSQL: LISTEN/NOTIFY, incremental rebuilds, and a database that
goes away and comes back (a cluster of this module's own, stopped and started for real).

Waits are bounded polls; durations are printed (run with -s to see them), never asserted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from ecs_imds.control.fleet import import_fleet
from ecs_imds.protocol.snapshot import Snapshot
from ecs_imds.store.base import Change
from ecs_imds.store.feed import ChangeFeed, SnapshotBuilder
from ecs_imds.store.keys import ensure_token_keys, rotate_token_key
from ecs_imds.store.postgres import PostgresStore
from pg import PostgresCluster, cluster, wait_until
from test_store_backends import VPC, fleet, instance


@pytest.fixture(scope="module")
def own_pg() -> Iterator[PostgresCluster]:
    """A cluster these tests may stop and start."""
    with cluster() as pg:
        yield pg


@pytest.fixture
def store(own_pg: PostgresCluster) -> Iterator[PostgresStore]:
    if not own_pg.running:
        own_pg.start()
    url = own_pg.create_database()
    s = PostgresStore(url)
    import_fleet(s, fleet(1, 2, 3))
    ensure_token_keys(s, int(time.time()))
    yield s
    s.close()
    if not own_pg.running:
        own_pg.start()
    own_pg.drop_database(url)


class Feed:
    """A feed over its own store (another server), recording what it publishes."""

    def __init__(self, url: str, **settings: Any) -> None:
        self.store = PostgresStore(url)
        self.builder = SnapshotBuilder(self.store)
        self.published: list[Snapshot] = []
        self.feed = ChangeFeed(self.builder, self.builder.build(), self.published.append,
                               **settings)

    @property
    def current(self) -> Snapshot:
        return self.feed.current

    def close(self) -> None:
        self.feed.stop()
        self.store.close()


@pytest.fixture
def feed(store: PostgresStore) -> Iterator[Feed]:
    f = Feed(store.url, interval=0.05, heartbeat=0.5)
    yield f
    f.close()


ID = [instance(n)["instance-id"] for n in range(4)]


def notices_until(subscription: Any, version: int) -> list[Change | None]:
    got: list[Change | None] = []
    deadline = time.monotonic() + 5
    while not any(n and n.version >= version for n in got):
        assert time.monotonic() < deadline, got
        got += subscription.wait(0.5)
    return got


def no_full_scan(store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(scope: object = None) -> dict[str, int]:
        raise AssertionError("read every revision: not incremental")

    monkeypatch.setattr(store, "revisions", refuse)


def test_notices_rebuild_only_the_instances_they_name(
        store: PostgresStore, feed: Feed, monkeypatch: pytest.MonkeyPatch) -> None:
    first = dict(feed.current.by_id)  # the indexes are patched in place (snapshot.Index)
    subscription = feed.store.subscribe()
    try:
        version = store.put_instance(instance(2, **{"instance-name": "renamed"}), None)
        store.delete_instances([ID[3]])
        notices = notices_until(subscription, version + 1)
    finally:
        subscription.close()
    no_full_scan(feed.store, monkeypatch)
    feed.feed.apply(notices)
    snap = feed.published[-1]
    assert snap.version == version + 1 == store.version()
    assert snap.by_id[ID[1]] is first[ID[1]]  # untouched: not rendered again
    assert snap.by_id[ID[2]] is not first[ID[2]]
    assert ID[3] not in snap.by_id and snap.identify(VPC, "10.0.0.5") is None
    assert snap.identify(VPC, "10.0.0.4") is snap.by_id[ID[2]]
    feed.feed.apply(notices)  # notices already applied change nothing
    assert len(feed.published) == 1


def test_key_rotation_arrives_by_notice(store: PostgresStore, feed: Feed,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    subscription = feed.store.subscribe()
    try:
        rotate_token_key(store)
        notices = notices_until(subscription, store.version())
    finally:
        subscription.close()
    no_full_scan(feed.store, monkeypatch)
    feed.feed.apply(notices)
    assert feed.current.key_ring.kids == [k.kid for k in store.token_keys()]
    assert len(feed.current.key_ring.kids) == 2


@pytest.mark.parametrize("notice", ["gap", "too long to name them", "unreadable"])
def test_anything_but_a_clean_run_of_notices_is_read_from_the_log(
        store: PostgresStore, feed: Feed, notice: str, monkeypatch: pytest.MonkeyPatch) -> None:
    version = store.put_instance(instance(1, **{"instance-name": "x"}), None)
    store.put_instance(instance(2, **{"instance-name": "y"}), None)
    notices: list[Change | None] = {
        "gap": [Change(version + 1, {"": frozenset({ID[2]})})],     # version missing
        "too long to name them": [Change(version, None), Change(version + 1, {"": None})],
        "unreadable": [None],
    }[notice]
    no_full_scan(feed.store, monkeypatch)
    feed.feed.apply(notices)
    snap = feed.published[-1]
    assert snap.version == store.version()
    assert {snap.by_id[ID[n]].entries["meta-data/instance/instance-name"].body  # type: ignore
            for n in (1, 2)} == {b"x", b"y"}


def test_a_change_reaches_a_listening_feed(store: PostgresStore, feed: Feed) -> None:
    feed.feed.start()
    times = []
    for n in range(5):
        started = time.monotonic()
        version = store.put_instance(instance(1, **{"instance-name": f"n{n}"}), None)
        times.append(wait_until(lambda v=version: feed.current.version >= v, timeout=5))
        assert time.monotonic() - started < 10
    print(f"\nnotice → new snapshot: max {max(times) * 1000:.1f} ms over {len(times)} changes")


def write_without_notice(store: PostgresStore, instance_id: str) -> None:
    """A deletion whose notice never arrives: written as a server writes, NOTIFY left out."""
    with psycopg.connect(store.url) as db, db.transaction():
        row = db.execute("UPDATE state SET value = value + 1 WHERE key = 'version' "
                         "RETURNING value").fetchone()
        assert row is not None
        db.execute("DELETE FROM instances WHERE instance_id = %s", (instance_id,))
        db.execute("DELETE FROM addresses WHERE instance_id = %s", (instance_id,))
        db.execute("INSERT INTO changes (version, host, ids) VALUES (%s, '', %s)",
                   (row[0], [instance_id]))


def test_a_missed_notice_is_caught_by_the_heartbeat(store: PostgresStore, feed: Feed,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    no_full_scan(feed.store, monkeypatch)
    feed.feed.start()
    write_without_notice(store, ID[1])
    wait_until(lambda: ID[1] not in feed.current.by_id, timeout=10)


def test_lost_subscription_resubscribes_and_catches_up(store: PostgresStore, feed: Feed,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    no_full_scan(feed.store, monkeypatch)
    feed.feed.heartbeat = 60  # only catching up after subscribing again can find the change
    feed.feed.start()
    wait_until(lambda: listeners(store) == 1, timeout=5)
    write_without_notice(store, ID[2])
    with psycopg.connect(store.url, autocommit=True) as db:
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE application_name = 'ecs-imds change-feed' "
                   "AND datname = current_database()")
    wait_until(lambda: ID[2] not in feed.current.by_id, timeout=10)
    assert not feed.current.stale


def listeners(store: PostgresStore) -> int:
    with psycopg.connect(store.url, autocommit=True) as db:
        row = db.execute("SELECT count(*) FROM pg_stat_activity "
                         "WHERE application_name = 'ecs-imds change-feed' "
                         "AND datname = current_database()").fetchone()
        return int(row[0]) if row else 0


def test_database_down_keeps_serving_then_catches_up(own_pg: PostgresCluster,
                                                     store: PostgresStore, feed: Feed) -> None:
    feed.feed.start()
    serving = feed.current
    own_pg.stop()
    went = wait_until(lambda: feed.current.stale, timeout=10)
    snap = feed.current
    assert snap.by_id is serving.by_id and snap.key_ring is serving.key_ring
    assert snap.identify(VPC, "10.0.0.3") is serving.by_id[ID[1]]
    time.sleep(0.5)  # retrying meanwhile publishes nothing new
    count = len(feed.published)
    time.sleep(0.3)
    assert len(feed.published) == count
    restarted = time.monotonic()
    own_pg.start()
    wait_until(lambda: not feed.current.stale, timeout=15)
    back = time.monotonic() - restarted
    version = store.put_instance(instance(1, **{"instance-name": "after"}), None)
    caught = wait_until(lambda: feed.current.version >= version, timeout=10)
    name = feed.current.by_id[ID[1]].entries["meta-data/instance/instance-name"]
    assert name.body == b"after"  # type: ignore[union-attr]
    print(f"\nstale after {went * 1000:.0f} ms; fresh {back * 1000:.0f} ms after `pg_ctl start`; "
          f"next change in {caught * 1000:.0f} ms")


def test_without_notices_the_feed_polls(store: PostgresStore, feed: Feed,
                                        monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    def refuse() -> None:
        raise psycopg.errors.FeatureNotSupported("cannot execute LISTEN during recovery")

    monkeypatch.setattr(feed.store, "subscribe", refuse)
    with caplog.at_level(logging.WARNING, logger="ecs_imds.feed"):
        feed.feed.start()
        store.delete_instances([ID[1]])
        wait_until(lambda: ID[1] not in feed.current.by_id, timeout=10)
        store.delete_instances([ID[2]])
        wait_until(lambda: ID[2] not in feed.current.by_id, timeout=10)
    assert not any(s.stale for s in feed.published)  # the store itself is fine
    assert [r.getMessage() for r in caplog.records if "polling" in r.getMessage()] == [
        "no change notices from the store, polling it: cannot execute LISTEN during recovery"]
