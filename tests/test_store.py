"""The SQLite store, fleet import/export, incremental snapshot building and the change feed.

Everything runs on real SQLite files in tmp_path; a store "goes down" by having its table
renamed under it by another connection, so the errors are SQLite's own.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings

from ecs_imds.control.fleet import (
    dump,
    export_fleet,
    import_fleet,
)
from ecs_imds.errors import ValidationError
from ecs_imds.protocol.catalogue import Leaf
from ecs_imds.protocol.model import Fleet
from ecs_imds.protocol.snapshot import Snapshot
from ecs_imds.store import open_store
from ecs_imds.store.feed import ChangeFeed, SnapshotBuilder
from ecs_imds.store.keys import ensure_token_keys, rotate_token_key
from ecs_imds.store.sqlite import SQLiteStore
from fleets import (
    DEMO_FLEET,
    HARDENED_ID,
    NOW,
    OTHER_VPC,
    OTHER_VPC_ID,
    PLAIN_ID,
    PLAIN_IP,
    RICH_ID,
    RICH_IP,
    RICH_IPV6,
    VPC,
    defaults_doc,
    fleet_doc,
    instance_docs,
    plain_doc,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "data" / "imds.db")
    yield s
    s.close()


def contents(store: SQLiteStore) -> tuple[int, dict[str, Any], list[tuple[str, Any, int]],
                                          dict[str, int]]:
    """Everything a fleet change could touch."""
    return (store.version(), store.load_defaults(),
            [(s.instance_id, s.doc, s.revision) for s in store.load_instances()],
            store.revisions())


def doc_of(instance_id: str, fleet: dict[str, Any] | None = None) -> dict[str, Any]:
    fleet = fleet or fleet_doc()
    return next(i for i in fleet["instances"] if i["instance-id"] == instance_id)


# --- the SQLite store ---------------------------------------------------------------------
def test_store_persists_and_serves_other_threads(tmp_path: Path) -> None:
    path = tmp_path / "imds.db"
    s = SQLiteStore(path)
    s.write_fleet({"region-id": "x"}, [{"instance-id": "i-a"}])
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(s.version()))
    t.start()
    t.join()
    assert seen == [1]
    s.close()
    again = SQLiteStore(path)
    assert again.version() == 1 and again.load_defaults() == {"region-id": "x"}


def test_every_connection_commits_to_disk_before_a_write_returns(tmp_path: Path) -> None:
    """synchronous=FULL on every thread's connection: an acknowledged write survives a
    power loss (NORMAL in WAL mode may lose the last commits)."""
    s = SQLiteStore(tmp_path / "imds.db")
    modes: list[tuple[str, int]] = []

    def look() -> None:  # the pragmas of the store's own connection on this thread
        modes.append((s._db().execute("PRAGMA journal_mode").fetchone()[0],
                      s._db().execute("PRAGMA synchronous").fetchone()[0]))

    look()
    t = threading.Thread(target=look)
    t.start()
    t.join()
    assert modes == [("wal", 2), ("wal", 2)]  # 2: FULL
    s.close()


def test_open_store(tmp_path: Path) -> None:
    default = open_store(None, tmp_path / "d")
    assert isinstance(default, SQLiteStore) and default.path == tmp_path / "d" / "ecs-imds.db"
    assert open_store("", tmp_path / "e").path == tmp_path / "e" / "ecs-imds.db"  # type: ignore
    url = open_store(f"sqlite://{tmp_path}/x/y.db", tmp_path / "unused")
    assert url.path == tmp_path / "x" / "y.db"  # type: ignore[attr-defined]
    assert (tmp_path / "x" / "y.db").exists()
    with pytest.raises(ValueError, match="mysql"):
        open_store("mysql://localhost/imds", tmp_path)


# --- fleet import and export -----------------------------------------------------------------
def test_demo_fleet_round_trips_byte_identically(store: SQLiteStore) -> None:
    text = DEMO_FLEET.read_text()
    assert import_fleet(store, yaml.safe_load(text)) == 1
    assert dump(export_fleet(store)) == text


def test_rich_fleet_round_trips(store: SQLiteStore, tmp_path: Path) -> None:
    doc = fleet_doc()
    import_fleet(store, doc)
    exported = export_fleet(store)
    assert exported == Fleet.from_doc(doc).to_doc()
    text = dump(exported)
    assert "user-data: |" in text  # multi-line strings as literal blocks
    # the text imports again to the same fleet, and exports to the same text
    other = SQLiteStore(tmp_path / "other.db")
    import_fleet(other, yaml.safe_load(text))
    assert dump(export_fleet(other)) == text
    assert Fleet.from_doc(yaml.safe_load(text)) == Fleet.from_doc(doc)
    # and as JSON
    as_json = dump(exported, as_json=True)
    third = SQLiteStore(tmp_path / "third.db")
    import_fleet(third, json.loads(as_json))
    assert dump(export_fleet(third), as_json=True) == as_json


def test_values_with_line_separators_survive_export(store: SQLiteStore,
                                                   tmp_path: Path) -> None:
    """U+0085 (NEL) is a line break to YAML: written raw, it came back as a space."""
    doc = fleet_doc()
    doc["instances"][1]["extra"] = {"custom/odd": "a\x85b\u2028c"}
    doc["instances"][1]["tags"] = {"nel": "\x85", "tab": "x\ty"}
    doc["instances"][1]["user-data"] = "#!/bin/sh\necho \x85\n"
    import_fleet(store, doc)
    text = dump(export_fleet(store))
    other = SQLiteStore(tmp_path / "other.db")
    import_fleet(other, yaml.safe_load(text))
    assert export_fleet(other) == export_fleet(store)
    assert dump(export_fleet(other)) == text


@settings(max_examples=40, deadline=None)
@given(instance_docs())
def test_any_accepted_instance_round_trips_through_export(doc: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        first, second = SQLiteStore(Path(tmp) / "a.db"), SQLiteStore(Path(tmp) / "b.db")
        import_fleet(first, {"defaults": defaults_doc(), "instances": [doc]})
        text = dump(export_fleet(first))
        import_fleet(second, yaml.safe_load(text))
        assert export_fleet(second) == export_fleet(first)
        assert dump(export_fleet(second)) == text
        first.close()
        second.close()


def test_import_keeps_or_replaces_other_instances(store: SQLiteStore) -> None:
    import_fleet(store, fleet_doc())
    assert len(store.revisions()) == 5
    v = import_fleet(store, {"defaults": defaults_doc(), "instances": [plain_doc()]})
    assert len(store.revisions()) == 5
    assert store.revisions()[PLAIN_ID] == v
    assert store.revisions()[RICH_ID] < v
    # a document without defaults keeps the stored ones, and is validated under them
    renamed = plain_doc() | {"instance-name": "no-defaults-here"}
    import_fleet(store, {"instances": [renamed]})
    assert store.load_defaults() == Fleet.from_doc(fleet_doc()).defaults.to_doc()
    import_fleet(store, {"defaults": defaults_doc(), "instances": [plain_doc()]}, replace=True)
    assert list(store.revisions()) == [PLAIN_ID]


BREAKAGES = {
    "bad field": (lambda doc: doc["instances"][3]["network-interfaces"][0].update(
        {"gateway": "10.0.0.999"}), "instances[3] (i-off0001).network-interfaces[0].gateway"),
    "unknown field": (lambda doc: doc["instances"][4].update({"colour": "red"}),
                      "instances[4] (i-other0001).colour"),
    "same address in one VPC": (
        lambda doc: doc["instances"][2]["network-interfaces"][0].update(
            {"private-ipv4s": [PLAIN_IP]}),
        "instances[2] (i-hard0001).network-interfaces"),
    "required value missing": (  # null removes a default (merged, or replaced whole)
        lambda doc: doc["defaults"].update({"zone-id": None}),
        "instances[0] (i-bp13znx0m0me8cquu001).zone-id"),
    "extra item collides": (
        lambda doc: doc["instances"][1].update({"extra": {"hostname/x": "y"}}),
        "instances[1] (i-plain0001).extra.hostname/x"),
    "bad defaults": (lambda doc: doc["defaults"].update({"metadata-options": {
        "http-tokens": "sometimes"}}), "defaults.metadata-options.http-tokens"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
@pytest.mark.parametrize("replace", [False, True])
def test_broken_fleet_is_refused_whole(store: SQLiteStore, breakage: str,
                                       replace: bool) -> None:
    import_fleet(store, fleet_doc())
    rotate_token_key(store, NOW)
    before = contents(store)
    exported = dump(export_fleet(store))
    doc = fleet_doc()
    doc["instances"][0]["instance-name"] = "renamed"  # a valid change in the same file
    doc["instances"].append(plain_doc() | {"instance-id": "i-new0001", "network-interfaces": [
        plain_doc()["network-interfaces"][0] | {"private-ipv4s": ["10.0.0.77"]}]})
    breaks, field = BREAKAGES[breakage]
    breaks(doc)
    with pytest.raises(ValidationError) as info:
        import_fleet(store, doc, replace=replace)
    assert info.value.field == field, str(info.value)
    assert contents(store) == before
    assert dump(export_fleet(store)) == exported


def test_duplicate_address_with_an_instance_already_stored_is_refused(
        store: SQLiteStore) -> None:
    import_fleet(store, fleet_doc())
    before = contents(store)
    newcomer = plain_doc() | {"instance-id": "i-new0001"}  # PLAIN_IP is taken by i-plain0001
    newcomer["network-interfaces"][0]["mac"] = "00:16:3e:0a:00:77"
    with pytest.raises(ValidationError) as info:
        import_fleet(store, {"defaults": defaults_doc(), "instances": [newcomer]})
    # the field of the newcomer's address, and the instance that holds it
    assert info.value.field == "instances[0] (i-new0001).network-interfaces[0].private-ipv4s[0]"
    assert info.value.message == f"{PLAIN_IP} in {VPC} already belongs to {PLAIN_ID}"
    assert contents(store) == before
    # ... unless the old owner goes in the same import
    import_fleet(store, {"defaults": defaults_doc(), "instances": [newcomer]}, replace=True)
    assert list(store.revisions()) == ["i-new0001"]


def test_same_address_in_two_vpcs_is_accepted(store: SQLiteStore) -> None:
    import_fleet(store, fleet_doc())
    ensure_token_keys(store, NOW)
    snap = SnapshotBuilder(store).build()
    assert snap.identify(VPC, RICH_IP).instance_id == RICH_ID  # type: ignore[union-attr]
    assert snap.identify(OTHER_VPC, RICH_IP).instance_id == OTHER_VPC_ID  # type: ignore


def test_ensure_token_keys(store: SQLiteStore) -> None:
    keys = ensure_token_keys(store, NOW)
    assert [k.kid for k in keys] == [1] and len(keys[0].secret) == 32
    assert ensure_token_keys(store, NOW + 10) == keys


# --- snapshot building ------------------------------------------------------------------------
def rendered_ids(snap: Snapshot) -> dict[str, int]:
    return {iid: id(r) for iid, r in snap.by_id.items()}


def test_build_serves_the_fleet(store: SQLiteStore) -> None:
    import_fleet(store, fleet_doc())
    ensure_token_keys(store, NOW)
    snap = SnapshotBuilder(store).build()
    assert snap.version == store.version()
    assert set(snap.by_id) == {i["instance-id"] for i in fleet_doc()["instances"]}
    assert snap.key_ring.kids == [1]
    assert not snap.stale
    for ip in (RICH_IP, "10.0.0.11", "10.0.1.20", *RICH_IPV6):
        assert snap.identify(VPC, ip) is snap.by_id[RICH_ID]
    entry = snap.by_id[RICH_ID].entries["meta-data/instance-id"]
    assert isinstance(entry, Leaf) and entry.body == RICH_ID.encode()


def test_rebuild_renders_only_what_changed(store: SQLiteStore) -> None:
    import_fleet(store, fleet_doc())
    ensure_token_keys(store, NOW)
    builder = SnapshotBuilder(store)
    first = builder.build()
    same = builder.build()
    assert rendered_ids(same) == rendered_ids(first)
    rendered = dict(first.by_id)  # the indexes are patched in place (snapshot.Index)

    changed = doc_of(PLAIN_ID) | {"instance-name": "renamed"}
    import_fleet(store, {"defaults": defaults_doc(), "instances": [changed]})
    second = builder.build()
    assert second.version > first.version
    assert second.by_id[PLAIN_ID] is not rendered[PLAIN_ID]
    name = second.by_id[PLAIN_ID].entries["meta-data/instance/instance-name"]
    assert isinstance(name, Leaf) and name.body == b"renamed"
    for iid in set(rendered) - {PLAIN_ID}:
        assert second.by_id[iid] is rendered[iid], iid

    # a change of the defaults renders everything again
    import_fleet(store, {"defaults": defaults_doc() | {"region-id": "cn-beijing"},
                         "instances": []})
    rendered = dict(second.by_id)
    third = builder.build()
    for iid in rendered:
        assert third.by_id[iid] is not rendered[iid], iid
        region = third.by_id[iid].entries["meta-data/region-id"]
        assert isinstance(region, Leaf) and region.body == b"cn-beijing"


def test_rebuild_drops_deleted_instances_and_their_addresses(store: SQLiteStore) -> None:
    import_fleet(store, fleet_doc())
    ensure_token_keys(store, NOW)
    builder = SnapshotBuilder(store)
    assert builder.build().identify(VPC, PLAIN_IP) is not None
    store.delete_instances([PLAIN_ID])
    snap = builder.build()
    assert PLAIN_ID not in snap.by_id
    assert snap.identify(VPC, PLAIN_IP) is None
    # an address that moves to another instance follows it
    moved = doc_of(HARDENED_ID)
    moved["network-interfaces"][0]["private-ipv4s"] = [PLAIN_IP]
    import_fleet(store, {"defaults": defaults_doc(), "instances": [moved]})
    snap = builder.build()
    assert snap.identify(VPC, PLAIN_IP) is snap.by_id[HARDENED_ID]
    assert snap.identify(VPC, "10.0.0.30") is None


def test_rebuild_picks_up_key_rotation(store: SQLiteStore) -> None:
    import_fleet(store, fleet_doc())
    ensure_token_keys(store, NOW)
    builder = SnapshotBuilder(store)
    assert builder.build().key_ring.kids == [1]
    rotate_token_key(store, NOW + 60)
    snap = builder.build()
    assert snap.key_ring.kids == [1, 2] and snap.key_ring.current.kid == 2


def test_hand_edited_instance_that_cannot_be_served_is_skipped(
        store: SQLiteStore, caplog: pytest.LogCaptureFixture) -> None:
    import_fleet(store, fleet_doc())
    ensure_token_keys(store, NOW)
    builder = SnapshotBuilder(store)
    builder.build()
    broken = doc_of(PLAIN_ID) | {"launch-index": "many"}
    store.write_fleet(None, [broken])  # the store itself does not validate
    with caplog.at_level(logging.ERROR, logger="ecs_imds.feed"):
        snap = builder.build()
    assert PLAIN_ID not in snap.by_id and snap.identify(VPC, PLAIN_IP) is None
    assert RICH_ID in snap.by_id
    assert any(PLAIN_ID in r.getMessage() and "launch-index" in r.getMessage()
               for r in caplog.records)
    store.write_fleet(None, [doc_of(PLAIN_ID)])
    assert PLAIN_ID in builder.build().by_id


# --- the change feed ----------------------------------------------------------------------------
@contextmanager
def store_down(store: SQLiteStore) -> Iterator[None]:
    """Take the store's tables away under it, from another connection, and give them back."""
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("ALTER TABLE state RENAME TO state_away")
    try:
        yield
    finally:
        other.execute("ALTER TABLE state_away RENAME TO state")
        other.close()


@pytest.fixture
def feed(store: SQLiteStore) -> tuple[ChangeFeed, list[Snapshot]]:
    import_fleet(store, fleet_doc())
    ensure_token_keys(store, NOW)
    builder = SnapshotBuilder(store)
    published: list[Snapshot] = []
    return ChangeFeed(builder, builder.build(), published.append), published


def test_poll_without_change_publishes_nothing(feed: tuple[ChangeFeed, list[Snapshot]]) -> None:
    f, published = feed
    f.poll()
    f.poll()
    assert published == []


def test_poll_publishes_each_change(store: SQLiteStore,
                                    feed: tuple[ChangeFeed, list[Snapshot]]) -> None:
    f, published = feed
    store.delete_instances([PLAIN_ID])
    f.poll()
    assert len(published) == 1
    assert published[0].version == store.version() and f.current is published[0]
    assert PLAIN_ID not in published[0].by_id
    f.poll()
    assert len(published) == 1


def test_poll_marks_stale_when_the_store_fails_and_recovers(
        store: SQLiteStore, feed: tuple[ChangeFeed, list[Snapshot]],
        caplog: pytest.LogCaptureFixture) -> None:
    f, published = feed
    serving = f.current
    with store_down(store):
        with pytest.raises(sqlite3.OperationalError):
            store.version()  # really down
        with caplog.at_level(logging.WARNING, logger="ecs_imds.feed"):
            f.poll()
            f.poll()
            f.poll()
        assert len(published) == 1  # stale once, not on every failed poll
        stale = published[0]
        assert stale.stale and stale.version == serving.version
        assert stale.by_id is serving.by_id  # keeps serving what it had
        assert stale.identify(VPC, RICH_IP) is serving.by_id[RICH_ID]
        assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1
    f.poll()  # back, nothing changed meanwhile
    assert len(published) == 2
    assert not published[1].stale and published[1].version == serving.version
    assert published[1].by_id is serving.by_id
    f.poll()
    assert len(published) == 2


def test_store_recovering_with_changes_publishes_a_fresh_snapshot(
        store: SQLiteStore, feed: tuple[ChangeFeed, list[Snapshot]]) -> None:
    f, published = feed
    with store_down(store):
        f.poll()
    assert published[-1].stale
    store.delete_instances([PLAIN_ID])
    f.poll()
    assert not published[-1].stale
    assert published[-1].version == store.version()
    assert PLAIN_ID not in published[-1].by_id


def test_poll_marks_stale_when_the_build_fails_midway(
        store: SQLiteStore, feed: tuple[ChangeFeed, list[Snapshot]]) -> None:
    """The version moved, but the instances cannot be read: keep the old snapshot."""
    f, published = feed
    store.delete_instances([PLAIN_ID])
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("ALTER TABLE instances RENAME TO instances_away")
    try:
        f.poll()
    finally:
        other.execute("ALTER TABLE instances_away RENAME TO instances")
        other.close()
    assert published[-1].stale and PLAIN_ID in published[-1].by_id
    f.poll()
    assert not published[-1].stale and PLAIN_ID not in published[-1].by_id


def test_feed_thread_publishes_and_stops(store: SQLiteStore,
                                         feed: tuple[ChangeFeed, list[Snapshot]]) -> None:
    f, published = feed
    f.interval = 0.01
    f.start()
    try:
        store.delete_instances([PLAIN_ID])
        deadline = time.monotonic() + 5
        while not published and time.monotonic() < deadline:
            time.sleep(0.005)
        assert published and PLAIN_ID not in published[-1].by_id
    finally:
        f.stop()
    assert not f._thread.is_alive()
