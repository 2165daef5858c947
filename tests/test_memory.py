"""Memory stays flat while the fleet changes: the data plane freezes the garbage collector's
view only after large builds (what is frozen can never be collected, and a small change
every second would otherwise freeze whatever reference cycles were alive at that moment),
and the snapshot builder's pool of shared leaves starts over once values no instance has
any more have piled up in it. bench/soak.py measures the whole server."""

from __future__ import annotations

import gc
import time
import weakref
from pathlib import Path

import pytest

from ecs_imds.control.fleet import import_fleet
from ecs_imds.dataplane import plane
from ecs_imds.store import feed
from ecs_imds.store.base import Changes
from ecs_imds.store.feed import SnapshotBuilder
from ecs_imds.store.keys import ensure_token_keys
from ecs_imds.store.sqlite import SQLiteStore
from test_store_backends import DEFAULTS, instance


class Node:
    """Something in a reference cycle, as a control-plane request leaves behind."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def unfrozen() -> object:
    """What the process held before the test frozen, as a server's first large build
    leaves it (pytest's own objects would otherwise count as a large build), and thawed
    after."""
    gc.collect()
    gc.freeze()
    yield None
    gc.unfreeze()


def test_after_a_small_change_a_cycle_alive_then_is_still_collected() -> None:
    cycle = Node()
    gone = weakref.ref(cycle)
    plane._settle()  # a snapshot with one instance changed was just installed
    del cycle
    gc.collect()
    assert gone() is None


def test_what_is_frozen_is_never_collected() -> None:
    """Why freezing after every change leaked: the same cycle, frozen."""
    cycle = Node()
    gone = weakref.ref(cycle)
    plane._settle(always=True)
    del cycle
    gc.collect()
    assert gone() is not None


def test_a_large_build_is_frozen() -> None:
    before = gc.get_freeze_count()
    built = [Node() for _ in range(plane.SETTLE_ABOVE + 1000)]  # as a build leaves them
    gc.collect()  # long-lived by now
    plane._settle()
    assert gc.get_freeze_count() >= before + len(built)


def test_the_pool_of_shared_leaves_starts_over(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed, "POOL_SLACK", 20)
    store = SQLiteStore(tmp_path / "imds.db")
    import_fleet(store, {"defaults": DEFAULTS, "instances": [instance(n) for n in range(3)]})
    ensure_token_keys(store)
    builder = SnapshotBuilder(store)
    snap = builder.build()
    most = 0
    for n in range(200):  # user data no instance has a moment later
        version = store.put_instance(instance(1, **{"user-data": f"#!/bin/sh\necho {n}\n"}),
                                     None)
        snap = builder.update(Changes(version, frozenset({instance(1)["instance-id"]})))
        most = max(most, len(builder._pool.leaves))
    assert most <= 2 * builder._pool_built + 20 + 1
    served = snap.by_id[instance(1)["instance-id"]].entries["user-data"]
    assert served.body == b"#!/bin/sh\necho 199\n"  # type: ignore[union-attr]
    store.close()


def test_snapshots_installed_often_are_looked_at_now_and_then(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting what the collector watches walks every such object, on the event loop: a
    fleet changing many times a second has it looked at once every SETTLE_EVERY seconds,
    not once per snapshot."""
    from test_fastpath import SNAP, plane_of

    looks: list[bool] = []
    monkeypatch.setattr(plane, "_settle", lambda always=False: looks.append(always))
    monkeypatch.setattr(plane, "SETTLE_EVERY", 0.0)  # each snapshot looked at
    every = plane_of()
    every.install(SNAP)
    every.install(SNAP)
    assert looks == [False, False]
    monkeypatch.setattr(plane, "SETTLE_EVERY", 5.0)
    looks.clear()
    data_plane = plane_of()
    for _ in range(50):
        data_plane.install(SNAP)
    assert looks == [False]
    # The last of them is looked at later, by the sweeper, though no snapshot follows.
    later = time.monotonic() + plane.SETTLE_EVERY
    data_plane.settle(later)
    assert looks == [False, False]
    data_plane.settle(later + plane.SETTLE_EVERY)  # nothing came since
    assert looks == [False, False]
