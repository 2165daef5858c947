"""Snapshot building and the change feed: store → immutable snapshot, kept current.

A server may be scoped to some hosts: it reads, renders and holds only the instances placed
on them, and of the change log only their rows. Rebuilds are incremental: an instance is
read and rendered again only when the change log names it (or the fleet defaults changed);
a change elsewhere in the fleet costs a scoped server nothing but a new version number. If
the store cannot be read, the last snapshot keeps serving, marked stale; when the store is
back, the feed catches up from the change log by itself. A snapshot is of one history of
the store (base.py: stamps): when the store's history is no longer the one the snapshot
was built from (a restore, a failover that lost commits), the scope is read afresh.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any

from ecs_imds.collector import paused
from ecs_imds.errors import ValidationError
from ecs_imds.protocol.catalogue import Pool, Rendered, render
from ecs_imds.protocol.model import FleetDefaults, Instance, effective
from ecs_imds.protocol.snapshot import Deferred, Index, Snapshot
from ecs_imds.protocol.tokens import KeyRing
from ecs_imds.store.base import (
    Change,
    Changes,
    Scope,
    Store,
    StoredInstance,
    StoreSettings,
    Subscription,
)
from ecs_imds.store.retry import Backoff

log = logging.getLogger("ecs_imds.feed")

# Instances read in one build beyond which rendering waits for each one's first request
# (snapshot.Deferred): a server starting on a large fleet serves in seconds, not minutes.
RENDER_AT_ONCE = 2000
# Documents read from the store at a time (a parsed document takes a few KB).
READ_AT_ONCE = 1000
# Leaves the pool may gain beyond twice what a full build left in it before it starts over:
# a value that changed (user data, a tag) stays in the pool after no instance has it.
POOL_SLACK = 10_000


class SnapshotBuilder:
    """Builds the snapshot of one scope (`None`: the whole fleet) from the store."""

    def __init__(self, store: Store, before_build: Callable[[bool], None] | None = None,
                 scope: Scope = None) -> None:
        self.store = store
        self.before_build = before_build
        self.scope = scope
        self._defaults_doc: dict[str, Any] | None = None
        self._defaults = FleetDefaults()
        self._cache: dict[str, tuple[int, Rendered | Deferred, tuple[str, ...]]] = {}
        self._pool = Pool()
        self._pool_built = 0  # leaves in the pool after the last full build
        self._key_ring: KeyRing | None = None
        self._index = Index()
        self.stamp: int | None = None  # the stamp of the version last built

    def build(self, afresh: bool = False) -> Snapshot:
        """The scope as the store holds it now: every instance's revision is compared with
        what was rendered, and only the ones that differ are read again; `afresh`, every
        one is (revisions name versions, and versions are only unique within one history).
        `before_build(afresh)` runs first (the server's secrets)."""
        if self.before_build is not None:
            self.before_build(afresh)
        version, stamp = self.store.head()
        if afresh:
            self._cache.clear()
        self._read_defaults()
        revisions = self.store.revisions(self.scope)
        for gone in [i for i in self._cache if i not in revisions]:
            del self._cache[gone]
        stale = [i for i, rev in revisions.items()
                 if i not in self._cache or self._cache[i][0] != rev]
        later = len(stale) > RENDER_AT_ONCE
        # Millions of new objects at 100,000 instances, kept: frozen (ecs_imds.collector).
        with paused(freeze=len(stale) > RENDER_AT_ONCE):
            for start in range(0, len(stale), READ_AT_ONCE):
                self._render(self.store.load_instances(stale[start:start + READ_AT_ONCE],
                                                       self.scope), later)
            self._pool_built = len(self._pool.leaves)
            return self._snapshot(version, stamp)

    def update(self, changes: Changes) -> Snapshot:
        """The snapshot after `changes`: only the instances they name are read again, and
        the defaults and keys only when they say the fleet changed; everything when they
        say to resynchronise."""
        if changes.resync or self._defaults_doc is None:
            return self.build(afresh=changes.resync)
        if changes.fleet:
            if self.before_build is not None:
                self.before_build(False)
            if self._read_defaults():
                return self.build()
        if len(self._pool.leaves) > 2 * self._pool_built + POOL_SLACK:
            self._pool = Pool()  # the instances rendered with the old one keep its leaves
        ids = list(changes.ids)
        found = self.store.load_instances(ids, self.scope) if ids else []
        for gone in set(ids) - {s.instance_id for s in found}:  # deleted, or moved away
            self._cache.pop(gone, None)
        self._render(found, len(found) > RENDER_AT_ONCE)
        return self._snapshot(changes.version, changes.stamp, keys=changes.fleet, touched=ids)

    def _read_defaults(self) -> bool:
        """Read the fleet defaults; True when they changed (everything renders again)."""
        doc = self.store.load_defaults()
        if doc == self._defaults_doc:
            return False
        self._defaults = FleetDefaults.from_doc(doc)
        self._defaults_doc = doc
        self._cache.clear()
        self._pool = Pool()
        return True

    def _snapshot(self, version: int, stamp: int | None, keys: bool = True,
                  touched: list[str] | None = None) -> Snapshot:
        """The snapshot of the cache; `touched`: the only ids whose entries may have changed
        since the last one (None: any may have)."""
        by_address, by_id = self._index.update(self._cache, touched)
        key_ring = self._keys() if keys or self._key_ring is None else self._key_ring
        self.stamp = stamp
        return Snapshot(version=version, by_address=by_address, by_id=by_id,
                        key_ring=key_ring, built_at=time.time())

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
                    # A few hundred microseconds each: between two, a thread waiting for
                    # the interpreter (an API write back from its store call) has it now,
                    # not after the 1 ms switch interval; a write makes a dozen such calls.
                    time.sleep(0)
            except ValidationError as exc:
                # Writes are validated; this only happens if the store was edited by hand.
                log.error("instance %s cannot be served: %s", stored.instance_id, exc)
                self._cache.pop(stored.instance_id, None)
                continue
            self._cache[stored.instance_id] = (stored.revision, item, addresses)


class ChangeFeed:
    """Keeps the served snapshot current: hands every new one to `publish`.

    With a store that sends change notices (PostgreSQL), the feed listens and applies each
    batch as it arrives: an unbroken run of notices that carry their change log rows is
    applied as it is; anything else (a gap, a notice too large to name its instances, one
    that cannot be read) is read from the change log. Every `heartbeat` seconds it reads
    the log too, which catches a notice that never came; and whenever the subscription is
    lost, it subscribes again and catches up from the log. With a store that has no
    notices (SQLite, a hot standby), it polls the log every `interval` seconds, and so it
    does while it cannot subscribe (the store is away), trying again every `resubscribe`
    seconds. Only when the log no longer reaches back to the served version (retention),
    or the store's history is not the snapshot's, is the scope read again in full.

    While the store fails, attempts back off (`retry.Backoff`, at most `settings.retry_max`
    seconds apart), so that a fleet of servers does not come back at the same instant. A
    watchdog thread marks the snapshot stale once the feed has had no successful exchange
    with the store for `settings.stale_after` seconds, whatever its own call is still
    waiting for: a hung database is said to be so within a bound, and the data plane keeps
    serving meanwhile.

    Runs in its own thread so that a slow store or a large rebuild never blocks requests.
    """

    def __init__(self, builder: SnapshotBuilder, current: Snapshot,
                 publish: Callable[[Snapshot], None], interval: float = 0.2,
                 heartbeat: float = 1.0, settings: StoreSettings | None = None) -> None:
        settings = settings or StoreSettings()
        self.builder = builder
        self.current = current
        self.stamp = builder.stamp  # of the version `current` was built from
        self.publish = publish
        self.interval = interval
        self.heartbeat = max(heartbeat, interval)
        self.stale_after = settings.stale_after
        self.backoff = Backoff(interval, settings.retry_max)
        self.resubscribe = 5.0  # seconds between attempts to subscribe while polling
        self._polling = False
        self._verified = time.monotonic()  # the end of the last successful exchange
        self._lock = threading.Lock()  # the feed and the watchdog both publish
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="change-feed", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name="change-feed-watchdog",
                                          daemon=True)

    def start(self) -> None:
        self._verified = time.monotonic()
        self._thread.start()
        self._watchdog.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._watchdog):
            if thread.is_alive():
                thread.join(timeout=5)

    def poll(self) -> bool:
        """Read the change log since the served version and apply it; on a failure keep
        serving, stale. True when it worked."""
        try:
            self._catch_up()
        except Exception as exc:  # the store is down: keep serving what we have
            self._down(exc)
            return False
        return True

    def apply(self, notices: list[Change | None]) -> None:
        """Apply a batch of change notices; raises when the store cannot be read."""
        known = self.current.version
        fresh = [n for n in notices if n is None or n.version > known]
        if not fresh:
            self._verified = time.monotonic()
            return
        changes: Changes | None = Changes(known, stamp=self.stamp)
        for n in fresh:
            told = None if n is None or n.stamp is None else n.within(self.builder.scope)
            if changes is None or told is None or told.version != changes.version + 1:
                changes = None  # a gap, or a notice that does not say: the log does
                break
            changes = changes.then(told)
        if changes is None:
            self._catch_up()
        else:
            self._apply(changes)
            self._verified = time.monotonic()

    def _catch_up(self) -> None:
        self._apply(self.builder.store.changes(self.current.version, self.builder.scope,
                                               self.stamp))
        self._verified = time.monotonic()

    def _apply(self, changes: Changes) -> None:
        if changes.version == self.current.version and not changes.resync:
            if self.current.stale:
                self._set(replace(self.current, stale=False))
            return
        if changes.resync:
            log.warning("the store's history no longer holds version %d as served (its log "
                        "does not reach back there, or it was restored or failed over): "
                        "reading %s again", self.current.version,
                        "the whole fleet" if self.builder.scope is None else "the scope")
            self._down()  # what it serves is not the store's state until rebuilt
        if changes.ids or changes.fleet or changes.resync:
            snap = self.builder.update(changes)
            self.stamp = self.builder.stamp
            self._set(snap)
        else:  # nothing in the scope changed: the same snapshot, at the new version
            self.stamp = changes.stamp
            self._set(replace(self.current, version=changes.version, built_at=time.time(),
                              stale=False))

    def _down(self, reason: object = None) -> None:
        """Mark the served snapshot stale (once), saying why the store is unreachable."""
        with self._lock:
            if not self.current.stale:
                if reason is not None:
                    log.warning("store unreachable, serving snapshot %d: %s",
                                self.current.version, reason)
                self._publish(replace(self.current, stale=True))

    def _set(self, snap: Snapshot) -> None:
        with self._lock:
            if self.current.stale and not snap.stale:
                log.warning("store reachable again, serving snapshot %d", snap.version)
            self._publish(snap)

    def _publish(self, snap: Snapshot) -> None:
        self.current = snap
        self.publish(snap)

    def _watch(self) -> None:
        """Mark the snapshot stale when the feed has not heard from the store for
        `stale_after` seconds (its call may be hung: this thread is not)."""
        tick = min(0.25, self.stale_after / 4)
        while not self._stop.wait(tick):
            silent = time.monotonic() - self._verified
            if silent > self.stale_after and not self.current.stale:
                self._down(f"no answer for {silent:.1f} s")

    def _pause(self, ok: bool) -> float:
        """Seconds until the next poll: the interval, or a backoff after a failure."""
        if ok:
            self.backoff.reset()
            return self.interval
        return self.backoff.next()

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
                ok = True
                while not self._stop.wait(self._pause(ok)):
                    ok = self.poll()
                return
            try:
                self._listen(subscription)
            except Exception as exc:  # lost the store: resubscribe, then catch up
                self._down(exc)
            finally:
                with contextlib.suppress(Exception):
                    subscription.close()
            self._stop.wait(self.backoff.next())

    def _poll_for_a_while(self, exc: Exception) -> None:
        if not self._polling:
            log.warning("no change notices from the store, polling it: %s", exc)
            self._polling = True
        until = time.monotonic() + self.resubscribe
        ok = self.poll()
        while time.monotonic() < until and not self._stop.wait(self._pause(ok)):
            ok = self.poll()

    def _listen(self, subscription: Subscription) -> None:
        self._catch_up()  # whatever changed before the subscription began
        self.backoff.reset()
        last = time.monotonic()
        while not self._stop.is_set():
            notices = subscription.wait(min(0.25, self.heartbeat))
            if notices:
                self.apply(notices)
            if time.monotonic() - last >= self.heartbeat:
                self._catch_up()
                last = time.monotonic()
