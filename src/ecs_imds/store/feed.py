"""Snapshot building and the change feed: store → immutable snapshot, kept current.

Rebuilds are incremental: an instance is rendered again only when its revision changed
(or the fleet defaults did). If the store cannot be read, the last snapshot keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..catalogue import Pool, Rendered, render
from ..errors import ValidationError
from ..model import FleetDefaults, Instance, effective
from ..snapshot import DynamicSource, Snapshot, index
from ..tokens import KeyRing
from .base import Store

log = logging.getLogger("ecs_imds.feed")


class SnapshotBuilder:
    def __init__(self, store: Store, dynamic: DynamicSource) -> None:
        self.store = store
        self.dynamic = dynamic
        self._defaults_doc: dict[str, Any] | None = None
        self._defaults = FleetDefaults()
        self._cache: dict[str, tuple[int, Rendered, tuple[str, ...]]] = {}
        self._pool = Pool()

    def build(self) -> Snapshot:
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
        changed = [i for i, rev in revisions.items()
                   if i not in self._cache or self._cache[i][0] != rev]
        for stored in self.store.load_instances(changed) if changed else ():
            try:
                inst = Instance.from_doc(stored.doc)
                rendered = render(effective(inst, self._defaults), self._pool)
            except ValidationError as exc:
                # Writes are validated; this only happens if the store was edited by hand.
                log.error("instance %s cannot be served: %s", stored.instance_id, exc)
                self._cache.pop(stored.instance_id, None)
                continue
            self._cache[stored.instance_id] = (stored.revision, rendered,
                                               tuple(inst.addresses()))
        by_address, by_id = index((r, addrs) for _, r, addrs in self._cache.values())
        return Snapshot(version=version, by_address=by_address, by_id=by_id,
                        key_ring=KeyRing(self.store.token_keys()), dynamic=self.dynamic,
                        built_at=time.time())


class ChangeFeed:
    """Polls the store's version and hands every new snapshot to `publish`.

    Runs in its own thread so that a slow store or a large rebuild never blocks requests.
    """

    def __init__(self, builder: SnapshotBuilder, current: Snapshot,
                 publish: Callable[[Snapshot], None], interval: float = 0.2) -> None:
        self.builder = builder
        self.current = current
        self.publish = publish
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="change-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def poll(self) -> None:
        try:
            if self.builder.store.version() == self.current.version:
                if self.current.stale:
                    self._set(replace(self.current, stale=False))
                return
            self._set(self.builder.build())
        except Exception as exc:  # the store is down: keep serving what we have
            if not self.current.stale:
                log.warning("store unreachable, serving snapshot %d: %s",
                            self.current.version, exc)
                self._set(replace(self.current, stale=True))

    def _set(self, snap: Snapshot) -> None:
        self.current = snap
        self.publish(snap)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()
