"""Snapshot building and the change feed: store → immutable snapshot, kept current.

Rebuilds are incremental: an instance is rendered again only when its revision changed
(or the fleet defaults did). A store with change notices (PostgreSQL) says which instances
changed, so only those are read again; a store without them (SQLite) is polled, and the
revisions of all instances are compared. If the store cannot be read, the last snapshot
keeps serving, marked stale; when the store is back, the feed catches up by itself.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any

from ecs_imds.errors import ValidationError
from ecs_imds.protocol.catalogue import Pool, Rendered, render
from ecs_imds.protocol.model import FleetDefaults, Instance, effective
from ecs_imds.protocol.snapshot import Deferred, DynamicSource, Index, Snapshot
from ecs_imds.protocol.tokens import KeyRing
from ecs_imds.store.base import Change, Store, StoredInstance, Subscription

log = logging.getLogger("ecs_imds.feed")

# Instances read in one build beyond which rendering waits for each one's first request
# (snapshot.Deferred): a server starting on a large fleet serves in seconds, not minutes.
RENDER_AT_ONCE = 2000
# Documents read from the store at a time (a parsed document takes a few KB).
READ_AT_ONCE = 1000


class SnapshotBuilder:
    def __init__(self, store: Store, dynamic: DynamicSource,
                 before_build: Callable[[], None] | None = None) -> None:
        self.store = store
        self.dynamic = dynamic
        self.before_build = before_build
        self._defaults_doc: dict[str, Any] | None = None
        self._defaults = FleetDefaults()
        self._cache: dict[str, tuple[int, Rendered | Deferred, tuple[str, ...]]] = {}
        self._pool = Pool()
        self._key_ring: KeyRing | None = None
        self._index = Index()

    def build(self, changed: Collection[str] | None = None, version: int | None = None
              ) -> Snapshot:
        """The store's current fleet as a snapshot.

        With `changed` (the ids of change notices up to `version`), only those instances
        are read again and the defaults are taken as they were; without, every instance's
        revision is compared with what was rendered."""
        if self.before_build is not None:
            self.before_build()
        if changed is None or version is None or self._defaults_doc is None:
            version = self.store.version()
            defaults_doc = self.store.load_defaults()
            if defaults_doc != self._defaults_doc:
                self._defaults = FleetDefaults.from_doc(defaults_doc)
                self._defaults_doc = defaults_doc
                self._cache.clear()
                self._pool = Pool()
            revisions = self.store.revisions()
            for gone in [i for i in self._cache if i not in revisions]:
                del self._cache[gone]
            stale = [i for i, rev in revisions.items()
                     if i not in self._cache or self._cache[i][0] != rev]
            later = len(stale) > RENDER_AT_ONCE
            for start in range(0, len(stale), READ_AT_ONCE):
                self._render(self.store.load_instances(stale[start:start + READ_AT_ONCE]),
                             later)
        else:
            ids = list(changed)
            found = self.store.load_instances(ids) if ids else []
            for gone in set(ids) - {s.instance_id for s in found}:
                self._cache.pop(gone, None)
            self._render(found, len(found) > RENDER_AT_ONCE)
        by_address, by_id = self._index.update(self._cache)
        return Snapshot(version=version, by_address=by_address, by_id=by_id,
                        key_ring=self._keys(), dynamic=self.dynamic, built_at=time.time())

    def _keys(self) -> KeyRing:
        """The key ring; the same object while the keys are the same, so that the tokens it
        has verified stay remembered across snapshots."""
        keys = self.store.token_keys()
        if self._key_ring is None or self._key_ring.keys != keys:
            self._key_ring = KeyRing(keys)
        return self._key_ring

    def _render(self, instances: Collection[StoredInstance], later: bool) -> None:
        for stored in instances:
            item: Rendered | Deferred
            try:
                if later:
                    item, addresses = Deferred.of(stored.doc, self._defaults, self._pool)
                else:
                    inst = Instance.from_doc(stored.doc)
                    item = render(effective(inst, self._defaults), self._pool)
                    addresses = tuple(inst.addresses())
            except ValidationError as exc:
                # Writes are validated; this only happens if the store was edited by hand.
                log.error("instance %s cannot be served: %s", stored.instance_id, exc)
                self._cache.pop(stored.instance_id, None)
                continue
            self._cache[stored.instance_id] = (stored.revision, item, addresses)


class ChangeFeed:
    """Keeps the served snapshot current: hands every new one to `publish`.

    With a store that sends change notices (PostgreSQL), the feed listens and applies each
    batch as it arrives, rebuilding only the instances named; it also compares the version
    every `heartbeat` seconds, which catches a write that sent no notice. Whenever the
    subscription is lost, notices may have been missed: the feed subscribes again and then
    resynchronises in full. With a store that has no notices (SQLite), it polls the version
    every `interval` seconds, and so it does while it cannot subscribe (the store is away,
    or a hot standby refuses LISTEN), trying again every `resubscribe` seconds.

    Runs in its own thread so that a slow store or a large rebuild never blocks requests.
    """

    def __init__(self, builder: SnapshotBuilder, current: Snapshot,
                 publish: Callable[[Snapshot], None], interval: float = 0.2,
                 heartbeat: float = 1.0) -> None:
        self.builder = builder
        self.current = current
        self.publish = publish
        self.interval = interval
        self.heartbeat = max(heartbeat, interval)
        self.resubscribe = 5.0  # seconds between attempts to subscribe while polling
        self._polling = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="change-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def poll(self) -> None:
        """Compare the version, rebuild if it moved; on a failure keep serving, stale."""
        try:
            self._check()
        except Exception as exc:  # the store is down: keep serving what we have
            self._down(exc)

    def apply(self, notices: list[Change | None]) -> None:
        """Apply a batch of change notices; raises when the store cannot be read.

        Only an unbroken run of versions after the current one, each naming its instances,
        is applied incrementally; anything else (a gap, `everything`, an unreadable notice)
        is a full rebuild."""
        known = self.current.version
        fresh = [n for n in notices if n is None or n.version > known]
        if not fresh:
            return
        versions = sorted(n.version for n in fresh if n is not None)
        if (len(versions) != len(fresh) or any(n.everything for n in fresh if n)
                or versions != list(range(known + 1, known + 1 + len(versions)))):
            self._set(self.builder.build())
            return
        changed: set[str] = set()
        for n in fresh:
            if n is not None:
                changed |= n.ids
        self._set(self.builder.build(changed, versions[-1]))

    def _check(self) -> None:
        if self.builder.store.version() == self.current.version:
            if self.current.stale:
                self._set(replace(self.current, stale=False))
            return
        self._set(self.builder.build())

    def _down(self, exc: Exception) -> None:
        if not self.current.stale:
            log.warning("store unreachable, serving snapshot %d: %s",
                        self.current.version, exc)
            self._set(replace(self.current, stale=True))

    def _set(self, snap: Snapshot) -> None:
        if self.current.stale and not snap.stale:
            log.warning("store reachable again, serving snapshot %d", snap.version)
        self.current = snap
        self.publish(snap)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                subscription = self.builder.store.subscribe()
            except Exception as exc:  # no notices (the store is away, or refuses LISTEN):
                self._poll_for_a_while(exc)  # poll, and try to subscribe again later
                continue
            if self._polling:
                log.warning("change notices from the store again")
                self._polling = False
            if subscription is None:
                while not self._stop.wait(self.interval):
                    self.poll()
                return
            try:
                self._listen(subscription)
            except Exception as exc:  # lost the store: resubscribe, then resync in full
                self._down(exc)
            finally:
                with contextlib.suppress(Exception):
                    subscription.close()
            self._stop.wait(self.interval)

    def _poll_for_a_while(self, exc: Exception) -> None:
        if not self._polling:
            log.warning("no change notices from the store, polling it: %s", exc)
            self._polling = True
        until = time.monotonic() + self.resubscribe
        while time.monotonic() < until and not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

    def _listen(self, subscription: Subscription) -> None:
        self._check()  # whatever changed before the subscription began
        last = time.monotonic()
        while not self._stop.is_set():
            notices = subscription.wait(min(0.25, self.heartbeat))
            if notices:
                self.apply(notices)
            if time.monotonic() - last >= self.heartbeat:
                self._check()
                last = time.monotonic()
