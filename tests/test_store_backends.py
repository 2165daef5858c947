"""The `Store` contract, run against both stores: SQLite and a real PostgreSQL.

Every test here takes `backend`, parametrised over the two; a backend opens as many stores
on the same data as a test wants (each one is "another server"). PostgreSQL-only behaviour
(migrations, LISTEN/NOTIFY, a database that goes away and comes back) is at the end.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ecs_imds.control.fleet import export_fleet, import_fleet
from ecs_imds.errors import AddressTaken, Conflict, StoreUnavailable
from ecs_imds.protocol.tokens import TokenKey
from ecs_imds.store import open_store
from ecs_imds.store.base import FLEET, PRUNE_EVERY, Change, Changes, Store, StoreDump
from ecs_imds.store.keys import ensure_token_keys, rotate_token_key
from ecs_imds.store.postgres import MIGRATIONS, PostgresStore
from ecs_imds.store.sqlite import SQLiteStore
from pg import PostgresCluster

VPC, OTHER_VPC = "vpc-store0001", "vpc-store0002"
DEFAULTS = {"region-id": "cn-hangzhou", "zone-id": "cn-hangzhou-i",
            "owner-account-id": "1234567890", "image-id": "ubuntu_22_04_x64",
            "instance-type": "ecs.g7.large"}


def instance(n: int, ip: str | None = None, vpc: str = VPC, **extra: Any) -> dict[str, Any]:
    """A small valid instance document."""
    ip = ip or f"10.0.{n // 250}.{n % 250 + 2}"
    return {"instance-id": f"i-store{n:05d}", **extra, "network-interfaces": [{
        "mac": f"00:16:3e:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}",
        "network-interface-id": f"eni-store{n:05d}", "vpc-id": vpc, "vswitch-id": "vsw-store",
        "private-ipv4s": [ip], "vswitch-cidr-block": "10.0.0.0/16",
        "vpc-cidr-block": "10.0.0.0/8"}]}


def fleet(*numbers: int) -> dict[str, Any]:
    return {"defaults": dict(DEFAULTS), "instances": [instance(n) for n in numbers]}


@dataclass
class Backend:
    kind: str
    url: str
    opened: list[Store]

    def open(self) -> Store:
        store = open_store(self.url, Path("/nonexistent"))
        self.opened.append(store)
        return store


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        b = Backend("sqlite", f"sqlite://{tmp_path}/imds.db", [])
    else:
        pg: PostgresCluster = request.getfixturevalue("postgres")
        b = Backend("postgresql", pg.create_database(), [])
    yield b
    for store in b.opened:
        store.close()
    if request.param == "postgresql":
        pg.drop_database(b.url)


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


def contents(store: Store) -> tuple[int, dict[str, Any], list[tuple[str, Any, int]],
                                    list[TokenKey]]:
    return (store.version(), store.load_defaults(),
            [(s.instance_id, s.doc, s.revision) for s in store.load_instances()],
            store.token_keys())


def in_threads(n: int, work: Callable[[int], Any]) -> list[Any]:
    """Run `work(i)` in n threads released at once; their results (or exceptions)."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


# --- the contract -------------------------------------------------------------------------
def test_open_store_picks_the_backend(backend: Backend, store: Store) -> None:
    assert isinstance(store, SQLiteStore if backend.kind == "sqlite" else PostgresStore)


def test_instances_after_pages_through_the_primary_key(store: Store) -> None:
    import_fleet(store, fleet(7, 3, 12, 1, 9))
    ids = ["i-store00001", "i-store00003", "i-store00007", "i-store00009", "i-store00012"]
    assert [s.instance_id for s in store.instances_after(None, 100)] == ids
    first = store.instances_after(None, 2)
    assert [s.instance_id for s in first] == ids[:2] and first[0].doc == instance(1)
    assert [s.instance_id for s in store.instances_after(ids[1], 2)] == ids[2:4]
    assert [s.instance_id for s in store.instances_after("i-store00010", 9)] == ids[4:]
    assert store.instances_after(ids[-1], 9) == []


def test_fresh_store_is_empty(store: Store) -> None:
    assert store.version() == 0
    assert store.load_defaults() == {}
    assert store.revisions() == {}
    assert store.load_instances() == []
    assert store.token_keys() == []


def test_write_fleet_versions_and_revisions(store: Store) -> None:
    a, b = {"instance-id": "i-a", "n": 1}, {"instance-id": "i-b", "n": 1}
    assert store.write_fleet({"region-id": "x"}, [a, b]) == 1
    assert store.revisions() == {"i-a": 1, "i-b": 1}
    assert [(s.instance_id, s.doc) for s in store.load_instances()] == [("i-a", a), ("i-b", b)]
    assert store.write_fleet(None, [{"instance-id": "i-b", "n": 2}]) == 2
    assert store.revisions() == {"i-a": 1, "i-b": 2}
    assert store.load_defaults() == {"region-id": "x"}
    assert [s.doc["n"] for s in store.load_instances(["i-b"])] == [2]
    assert [s.instance_id for s in store.load_instances()] == ["i-a", "i-b"]  # first insertion
    assert store.write_fleet({}, [{"instance-id": "i-c"}], replace=True) == 3
    assert store.revisions() == {"i-c": 3}
    assert store.load_defaults() == {}
    assert store.delete_instances(["i-c", "i-unknown"]) == 4
    assert store.revisions() == {}



def test_a_batch_of_new_and_held_instances_keeps_the_order_of_first_insertion(
        store: Store) -> None:
    store.write_fleet(None, [{"instance-id": "i-b", "n": 1}, {"instance-id": "i-d", "n": 1}])
    batch = [{"instance-id": i, "n": 2} for i in ("i-e", "i-d", "i-a", "i-b", "i-c")]
    assert store.write_fleet(None, batch) == 2
    assert [(s.instance_id, s.doc["n"], s.revision) for s in store.load_instances()] == [
        ("i-b", 2, 2), ("i-d", 2, 2), ("i-e", 2, 2), ("i-a", 2, 2), ("i-c", 2, 2)]

def test_load_instances_by_id(store: Store) -> None:
    docs = [{"instance-id": f"i-{n:04d}"} for n in range(1203)]
    store.write_fleet(None, docs)
    wanted = [d["instance-id"] for d in docs[::2]] + ["i-missing"]
    assert sorted(s.instance_id for s in store.load_instances(wanted)) == sorted(wanted[:-1])
    assert store.load_instances([]) == []


def test_documents_keep_non_ascii_and_key_order(store: Store) -> None:
    doc = {"instance-id": "i-a", "z": "网站", "a": {"y": 1, "b": [1, "二", None, 2.5, True]}}
    store.write_fleet(None, [doc])
    (loaded,) = store.load_instances()
    assert json.dumps(loaded.doc) == json.dumps(doc)


def test_failed_write_leaves_the_store_as_it_was(store: Store) -> None:
    store.write_fleet({"region-id": "x"}, [{"instance-id": "i-a"}])
    before = contents(store)
    with pytest.raises(KeyError):  # the second document has no id
        store.write_fleet({"region-id": "y"}, [{"instance-id": "i-b"}, {"no-id": 1}],
                          replace=True)
    assert contents(store) == before


def test_conditional_writes(store: Store) -> None:
    assert store.put_instance({"instance-id": "i-a", "n": 1}, 0) == 1
    with pytest.raises(Conflict) as info:
        store.put_instance({"instance-id": "i-a", "n": 2}, 0)
    assert info.value.current == 1
    assert store.version() == 1  # a refused write changes nothing, not even the version
    assert store.put_instance({"instance-id": "i-a", "n": 2}, 1) == 2
    assert store.put_instance({"instance-id": "i-a", "n": 3}, None) == 3
    with pytest.raises(Conflict):
        store.delete_instance("i-a", 2)
    assert store.delete_instance("i-a", 3) == 4
    with pytest.raises(Conflict) as info:
        store.delete_instance("i-a", None)
    assert info.value.current == 0
    assert store.revisions() == {} and store.version() == 4


def test_conditional_writes_from_many_servers_lose_nothing(backend: Backend) -> None:
    backend.open().put_instance({"instance-id": "i-a", "n": 0}, 0)
    stores = [backend.open() for _ in range(6)]

    def increment(i: int) -> int:
        store, tries = stores[i], 0
        for _ in range(5):
            while True:
                (current,) = store.load_instances(["i-a"])
                doc = dict(current.doc, n=current.doc["n"] + 1)
                try:
                    store.put_instance(doc, current.revision)
                    break
                except Conflict:
                    tries += 1
        return tries

    results = in_threads(6, increment)
    assert all(isinstance(r, int) for r in results), results
    assert stores[0].load_instances(["i-a"])[0].doc["n"] == 30


def test_token_keys(store: Store) -> None:
    keys = [TokenKey(1, b"\x00" * 32, 10), TokenKey(2, b"\xff" * 32, 20)]
    assert store.replace_token_keys(keys) == 1
    assert sorted(store.token_keys(), key=lambda k: k.kid) == keys
    assert store.replace_token_keys(keys[1:]) == 2
    assert store.token_keys() == keys[1:]
    big = TokenKey(2**32 - 1, b"k" * 32, 2**40)  # kid is a u32 in the token
    store.replace_token_keys([big])
    assert store.token_keys() == [big]


def test_first_token_key_is_made_once(backend: Backend) -> None:
    first = backend.open()
    first.version()
    stores = [backend.open() for _ in range(8)]
    rings = in_threads(8, lambda i: stores[i].first_token_key(
        TokenKey(1, bytes([i]) * 32, 100 + i)))
    assert all(isinstance(r, list) for r in rings), rings
    assert len({tuple(r) for r in rings}) == 1 and len(rings[0]) == 1
    assert first.version() == 1
    # with a ring already there, nothing is added
    assert first.first_token_key(TokenKey(9, b"x" * 32, 1)) == rings[0]
    assert first.version() == 1


def test_ensure_token_keys_from_many_servers(backend: Backend) -> None:
    backend.open().version()
    stores = [backend.open() for _ in range(6)]
    rings = in_threads(6, lambda i: ensure_token_keys(stores[i], 1000))
    assert len({tuple(r) for r in rings}) == 1, rings
    assert stores[0].token_keys() == rings[0]


def test_secret_is_made_once(backend: Backend) -> None:
    first, second = backend.open(), backend.open()
    calls: list[str] = []

    def make(tag: str) -> Callable[[], bytes]:
        return lambda: calls.append(tag) or tag.encode() * 4  # type: ignore[func-returns-value]

    assert first.secret("identity", make("a")) == b"aaaa"
    assert second.secret("identity", make("b")) == b"aaaa"
    assert first.secret("credentials", make("c")) == b"cccc"
    assert calls == ["a", "c"]
    assert first.version() == 0  # secrets are not fleet changes


def test_secret_made_once_under_concurrency(backend: Backend) -> None:
    backend.open().version()
    stores = [backend.open() for _ in range(8)]
    results = in_threads(8, lambda i: stores[i].secret("identity", lambda: bytes([i]) * 8))
    assert all(isinstance(r, bytes) for r in results), results
    assert len(set(results)) == 1
    assert stores[0].secret("identity", lambda: b"late") == results[0]


def test_set_secret_replaces_and_bumps(store: Store) -> None:
    store.secret("identity", lambda: b"old")
    assert store.set_secret("identity", b"new") == 1
    assert store.secret("identity", lambda: b"unused") == b"new"
    assert store.set_secret("fresh", b"x") == 2


def test_changes_reach_another_server(backend: Backend) -> None:
    writer, reader = backend.open(), backend.open()
    assert reader.version() == 0
    import_fleet(writer, fleet(1, 2))
    assert reader.version() == writer.version()
    assert set(reader.revisions()) == {"i-store00001", "i-store00002"}


def test_dump_and_restore(backend: Backend, store: Store) -> None:
    import_fleet(store, fleet(1, 2, 3))
    rotate_token_key(store, 1000)
    rotate_token_key(store, 2000)
    store.secret("identity", lambda: b"\x00\xffid")
    dump = store.dump()
    assert dump.defaults == store.load_defaults()
    assert [d["instance-id"] for d in dump.instances] == list(store.revisions())
    assert [k.kid for k in dump.token_keys] == [1, 2]
    assert dump.secrets == {"identity": b"\x00\xffid"}
    assert "identity" not in repr(dump) or b"\x00\xffid" not in repr(dump).encode()

    other = backend.open()
    other.write_fleet({"region-id": "gone"}, [{"instance-id": "i-gone"}])
    other.secret("stray", lambda: b"gone")
    version = other.restore(dump)
    assert version > 1 and other.version() == version
    assert other.dump() == dump


def test_failed_restore_changes_nothing(store: Store) -> None:
    import_fleet(store, fleet(1))
    before = store.dump()
    broken = StoreDump({}, [{"no-id": 1}], [], {"x": b"y"})
    with pytest.raises(KeyError):
        store.restore(broken)
    assert store.dump() == before


@pytest.mark.parametrize("direction", ["sqlite→postgresql→sqlite"])
def test_fleet_copied_between_stores_without_loss(tmp_path: Path, postgres: PostgresCluster,
                                                  direction: str) -> None:
    source = SQLiteStore(tmp_path / "a.db")
    import_fleet(source, fleet(1, 2, 3) | {"instances": [
        instance(1, extra={"x": "网站"}), instance(2), instance(3, vpc=OTHER_VPC)]})
    ensure_token_keys(source, 1000)
    source.secret("identity", lambda: b"identity-blob")
    source.secret("credentials", lambda: b"\x01" * 32)
    url = postgres.create_database()
    try:
        middle = PostgresStore(url)
        middle.restore(source.dump())
        back = SQLiteStore(tmp_path / "b.db")
        back.restore(middle.dump())
        assert back.dump() == middle.dump() == source.dump()
        assert export_fleet(back) == export_fleet(source)
        middle.close()
    finally:
        postgres.drop_database(url)


def placed(instance_id: str, host: str | None = None, ip: str = "10.0.0.2",
           vpc: str = VPC, **extra: Any) -> dict[str, Any]:
    """A document as the store sees it: only what it indexes."""
    doc: dict[str, Any] = {"instance-id": instance_id, **extra, "network-interfaces": [
        {"vpc-id": vpc, "private-ipv4s": [ip]}]}
    if host is not None:
        doc["dedicated-host-id"] = host
    return doc


def test_subscription_only_where_there_are_notices(backend: Backend, store: Store) -> None:
    subscription = store.subscribe()
    if backend.kind == "sqlite":
        assert subscription is None
        return
    assert subscription is not None
    try:
        assert subscription.wait(0.05) == []
        store.write_fleet(None, [placed("i-a", "h1", "10.0.0.2"), placed("i-b", None, "10.0.0.3")])
        store.put_instance(placed("i-a", "h2", "10.0.0.2", n=1), None)
        store.delete_instances(["i-b"])
        store.replace_token_keys([TokenKey(1, b"k" * 32, 1)])
        store.write_fleet({}, [])
        store.set_secret("s", b"v")
        notices: list[Change | None] = []
        while len(notices) < 6:
            got = subscription.wait(5)
            assert got, "no notice within 5 s"
            notices += got
        fleet_wide = {FLEET: frozenset()}
        assert notices == [
            Change(1, {"h1": frozenset({"i-a"}), "": frozenset({"i-b"})}),
            Change(2, {"h1": frozenset({"i-a"}), "h2": frozenset({"i-a"})}),  # moved
            Change(3, {"": frozenset({"i-b"})}), Change(4, fleet_wide), Change(5, fleet_wide),
            Change(6, fleet_wide)]
        with pytest.raises(Conflict):  # a refused write sends nothing
            store.put_instance({"instance-id": "i-a"}, 0)
        assert subscription.wait(0.1) == []
    finally:
        subscription.close()


def test_change_log_within_a_scope(store: Store) -> None:
    v1 = store.write_fleet(DEFAULTS, [placed("i-a", "h1", "10.0.0.2"),
                                      placed("i-b", "h2", "10.0.0.3"),
                                      placed("i-c", None, "10.0.0.4")])
    assert store.changes(0) == Changes(v1, frozenset({"i-a", "i-b", "i-c"}), fleet=True)
    assert store.changes(0, frozenset({"h1"})) == Changes(v1, frozenset({"i-a"}), fleet=True)
    assert store.changes(v1, frozenset({"h1"})) == Changes(v1)
    v2 = store.put_instance(placed("i-b", "h3", "10.0.0.3"), None)  # h2 → h3
    v3 = store.delete_instance("i-a", None)
    v4 = store.put_instance(placed("i-d", "h9", "10.0.0.5"), 0)
    assert store.changes(v1, frozenset({"h1"})) == Changes(v4, frozenset({"i-a"}))
    assert store.changes(v1, frozenset({"h2"})) == Changes(v4, frozenset({"i-b"}))  # gone
    assert store.changes(v1, frozenset({"h3"})) == Changes(v4, frozenset({"i-b"}))  # came
    assert store.changes(v3, frozenset({"h1", "h2", "h3"})) == Changes(v4)  # elsewhere
    assert store.changes(v2) == Changes(v4, frozenset({"i-a", "i-d"}))
    v5 = store.set_secret("s", b"v")
    assert store.changes(v4, frozenset({"h1"})) == Changes(v5, fleet=True)
    assert store.changes(v5 + 1).resync  # a version the store never had: read it all again
    assert store.revisions(frozenset({"h3", "h9"})) == {"i-b": v2, "i-d": v4}
    assert [s.instance_id for s in store.load_instances(None, frozenset({"h9", "h3"}))] == [
        "i-b", "i-d"]
    assert store.load_instances(["i-b", "i-c"], frozenset({"h9"})) == []
    assert [s.instance_id for s in store.load_instances(["i-b", "i-c"])] == ["i-b", "i-c"]


def test_change_log_retention(backend: Backend, tmp_path: Path) -> None:
    if backend.kind == "sqlite":
        store: Store = SQLiteStore(tmp_path / "short.db", retention=0)
    else:
        store = PostgresStore(backend.url, retention=0)
    backend.opened.append(store)
    first = store.put_instance(placed("i-a", "h1"), None)
    while store.version() < PRUNE_EVERY:  # the write at PRUNE_EVERY prunes what is older
        store.put_instance(placed("i-b", "h2", "10.0.0.3"), None)
    assert store.changes(first - 1, frozenset({"h1"})).resync
    assert store.changes(PRUNE_EVERY) == Changes(PRUNE_EVERY)
    store.restore(store.dump())  # a restore starts the log again: every reader reads it all
    assert store.changes(PRUNE_EVERY).resync
    assert store.changes(store.version()) == Changes(store.version())


def test_an_address_belongs_to_one_instance_per_vpc(store: Store) -> None:
    store.write_fleet(None, [placed("i-a", ip="10.0.0.2"), placed("i-z", ip="10.0.0.2",
                                                                  vpc=OTHER_VPC)])
    with pytest.raises(AddressTaken) as taken:
        store.put_instance(placed("i-b", ip="10.0.0.2"), None)
    assert (taken.value.vpc_id, taken.value.address, taken.value.owner,
            taken.value.claimant) == (VPC, "10.0.0.2", "i-a", "i-b")
    with pytest.raises(AddressTaken):
        store.write_fleet(None, [placed("i-b", ip="10.0.0.2")])
    with pytest.raises(AddressTaken):  # two of one batch
        store.write_fleet(None, [placed("i-b", ip="10.0.0.9"), placed("i-c", ip="10.0.0.9")])
    assert [s.instance_id for s in store.load_instances()] == ["i-a", "i-z"]
    # IPv6 addresses are compared in their canonical form
    v6 = {"vpc-id": VPC, "ipv6s": ["2408:4000:0:0:0:0:0:10"]}
    store.put_instance({"instance-id": "i-six", "network-interfaces": [v6]}, None)
    with pytest.raises(AddressTaken):
        store.put_instance({"instance-id": "i-six2", "network-interfaces": [
            v6 | {"ipv6s": ["2408:4000::10"]}]}, None)
    # an address an instance gives up is free; two instances may swap theirs in one import
    store.put_instance(placed("i-a", ip="10.0.0.5"), None)
    store.put_instance(placed("i-b", ip="10.0.0.2"), None)
    store.write_fleet(None, [placed("i-a", ip="10.0.0.2"), placed("i-b", ip="10.0.0.5")])
    store.delete_instance("i-a", None)
    store.put_instance(placed("i-c", ip="10.0.0.2"), None)


def test_two_servers_claiming_one_address_one_wins(backend: Backend) -> None:
    stores = [backend.open() for _ in range(6)]
    results = in_threads(6, lambda i: stores[i].put_instance(placed(f"i-n{i}", ip="10.0.0.7"),
                                                              None))
    assert sum(isinstance(r, int) for r in results) == 1, results
    assert all(isinstance(r, AddressTaken) for r in results if not isinstance(r, int))


def test_a_store_of_the_previous_schema_is_upgraded(backend: Backend, tmp_path: Path) -> None:
    """Placement and addresses of the instances already stored are indexed on first open."""
    docs = [placed("i-a", "h1", "10.0.0.2"), {"instance-id": "i-six", "network-interfaces": [
        {"vpc-id": VPC, "private-ipv4s": ["10.0.0.3"], "ipv6s": ["2408:4000:0:0:0:0:0:10"]}]}]
    rows = [(d["instance-id"], json.dumps(d), 7) for d in docs]
    if backend.kind == "sqlite":
        path = tmp_path / "old.db"
        with sqlite3.connect(path) as db:
            db.executescript(SQLITE_SCHEMA_1)
            db.executemany("INSERT INTO instances VALUES (?, ?, ?)", rows)
            db.execute("UPDATE state SET value = 7")
        url = f"sqlite://{path}"
    else:
        url = backend.url
        with psycopg.connect(url) as db:
            db.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, "
                       "applied_at timestamptz NOT NULL DEFAULT now())")
            db.execute(str(MIGRATIONS[0][1]))
            db.execute("INSERT INTO schema_migrations (version) VALUES (1)")
            db.cursor().executemany("INSERT INTO instances VALUES (%s, %s, %s)", rows)
            db.execute("UPDATE state SET value = 7")
    store = open_store(url, tmp_path)
    backend.opened.append(store)
    assert store.revisions() == {"i-a": 7, "i-six": 7}
    assert store.revisions(frozenset({"h1"})) == {"i-a": 7}
    assert store.changes(7) == Changes(7)  # the log begins at the upgrade
    assert store.changes(6).resync
    for ip, ipv6 in (("10.0.0.2", []), ("10.0.0.9", ["2408:4000::10"])):
        with pytest.raises(AddressTaken):
            store.put_instance({"instance-id": "i-new", "network-interfaces": [
                {"vpc-id": VPC, "private-ipv4s": [ip], "ipv6s": ipv6}]}, None)


SQLITE_SCHEMA_1 = """
CREATE TABLE state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO state VALUES ('version', 0);
CREATE TABLE defaults (id INTEGER PRIMARY KEY CHECK (id = 1), doc TEXT NOT NULL);
CREATE TABLE instances (
    instance_id TEXT PRIMARY KEY, doc TEXT NOT NULL, revision INTEGER NOT NULL);
CREATE TABLE token_keys (
    kid INTEGER PRIMARY KEY, secret BLOB NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


# --- change notices (pure) ----------------------------------------------------------------
def test_change_payload_round_trips() -> None:
    for change in (Change(1, {FLEET: frozenset()}), Change(7, {"h": frozenset({"i-a", "i-ü"})}),
                   Change(9, None), Change(3, {"h1": None, "": frozenset({"i-b"})})):
        assert Change.parse(change.payload()) == change


def test_long_notices_name_less_and_leave_the_rest_to_the_log() -> None:
    ids = frozenset(f"i-{n:020d}" for n in range(1000))
    payload = Change(3, {"h1": ids, "h2": frozenset({"i-a"})}).payload()
    assert len(payload.encode()) < 8000
    notice = Change.parse(payload)
    assert notice == Change(3, {"h1": None, "h2": None})
    assert notice.within(frozenset({"h3"})) == Changes(3)  # not here: nothing to read
    assert notice.within(frozenset({"h1"})) is None  # here: read the log
    hosts = {f"host-{n:050d}": frozenset({"i-a"}) for n in range(1000)}
    assert Change.parse(Change(4, hosts).payload()) == Change(4, None)
    assert Change(4, None).within(frozenset({"h3"})) is None


def test_notices_within_a_scope() -> None:
    notice = Change(5, {"h1": frozenset({"i-a"}), "h2": frozenset({"i-a", "i-b"})})
    assert notice.within(None) == Changes(5, frozenset({"i-a", "i-b"}))
    assert notice.within(frozenset({"h1", "h9"})) == Changes(5, frozenset({"i-a"}))
    assert Change(6, {FLEET: frozenset()}).within(frozenset({"h9"})) == Changes(6, fleet=True)


@pytest.mark.parametrize("payload", ["", "nope", "[]", '{"ids": []}', '{"v": "1"}',
                                     '{"v": true}', '{"v": 1, "c": "i-a"}',
                                     '{"v": 1, "c": {"h": [1]}}', '{"v": 1, "c": {"h": "i-a"}}',
                                     '{"v": 1.5}'])
def test_unreadable_notices(payload: str) -> None:
    assert Change.parse(payload) is None


# --- PostgreSQL only ----------------------------------------------------------------------
def test_migrations_applied_once_when_servers_start_together(postgres: PostgresCluster
                                                             ) -> None:
    url = postgres.create_database()
    try:
        stores = in_threads(8, lambda i: PostgresStore(url))
        assert all(isinstance(s, PostgresStore) for s in stores), stores
        with psycopg.connect(url) as db:
            applied = [r[0] for r in db.execute("SELECT version FROM schema_migrations")]
        assert applied == [v for v, _ in MIGRATIONS]
        assert stores[0].version() == 0
        for s in stores:
            s.close()
    finally:
        postgres.drop_database(url)


def test_a_newer_schema_is_refused(pg_url: str) -> None:
    PostgresStore(pg_url).close()
    with psycopg.connect(pg_url) as db:
        db.execute("INSERT INTO schema_migrations (version) VALUES (9999)")
    with pytest.raises(RuntimeError, match="newer"):
        PostgresStore(pg_url)


def test_unreachable_database_is_a_clear_error(postgres: PostgresCluster) -> None:
    with pytest.raises(StoreUnavailable, match="nosuchdb"):
        open_store(postgres.url("nosuchdb"), Path("/nonexistent"))
    assert issubclass(StoreUnavailable, OSError)  # the CLI reports OSErrors without a trace


def test_a_large_write_leaves_the_planner_statistics_of_what_it_wrote(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """After an import, API writes are planned for the tables as they are now, not as they
    were empty (autovacuum would analyse them only a minute or more later)."""
    from ecs_imds.store import postgres

    monkeypatch.setattr(postgres, "ANALYZE_AFTER", 3)
    store = PostgresStore(pg_url)
    try:
        def analysed() -> int:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                row = conn.execute("SELECT analyze_count FROM pg_stat_user_tables "
                                   "WHERE relname = 'instances'").fetchone()
            assert row is not None
            return int(row[0])

        before = analysed()
        store.write_fleet(DEFAULTS, [instance(n) for n in range(2)])  # small: left alone
        assert analysed() == before
        store.write_fleet(DEFAULTS, [instance(n) for n in range(2, 5)])
        assert analysed() == before + 1
    finally:
        store.close()
