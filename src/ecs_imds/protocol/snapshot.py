"""The in-memory view of the fleet that the data plane serves from.

A snapshot is built beside the one in use and swapped in by one assignment, so the hot path
reads it without locks and never touches the store. What an instance is served (its rendered
tree) never changes once built. The two indexes, by address and by id, are shared by
successive snapshots and patched in place when a few instances change (`Index`): copying
them costs milliseconds of held interpreter at 100,000 instances, on every change. Each
patch is a few single-entry dict assignments, each atomic, new entries before old ones go,
so a reader sees an instance's old entry or its new one, never neither.
"""

from __future__ import annotations

import ipaddress
import logging
import marshal
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from ecs_imds.errors import ValidationError
from ecs_imds.protocol.catalogue import Pool, Rendered, render
from ecs_imds.protocol.model import FleetDefaults, Instance, effective
from ecs_imds.protocol.tokens import KeyRing

log = logging.getLogger("ecs_imds.protocol.snapshot")


class Deferred:
    """An instance that is rendered on its first request instead of when the snapshot is built.

    Reading and rendering an instance costs a few hundred microseconds; for a fleet of
    100,000 that is most of a minute before a starting server could answer anyone. A large
    build therefore only indexes instances by address (which needs none of that work) and
    leaves each one's rendering to its first request; later snapshots keep the same object,
    so an instance is rendered once per revision. An instance that cannot be rendered (a
    store edited by hand) is logged once and served as no instance (403), as an eager build
    would have skipped it.

    Until then it keeps its document marshalled (under 1 KB, where the parsed dict takes
    about 5 KB): the documents of a whole fleet never need to be in memory at once.
    """

    __slots__ = ("_defaults", "_doc", "_pool", "_rendered", "instance_id", "vpc_id")

    def __init__(self, instance_id: str, vpc_id: str, doc: dict[str, Any],
                 defaults: FleetDefaults, pool: Pool) -> None:
        self.instance_id = instance_id
        self.vpc_id = vpc_id
        self._doc: bytes | None = marshal.dumps(doc)
        self._defaults = defaults
        self._pool = pool
        self._rendered: Rendered | None = None

    @classmethod
    def of(cls, doc: dict[str, Any], defaults: FleetDefaults, pool: Pool
           ) -> tuple[Deferred, tuple[str, ...]]:
        """A stored document, deferred, and the addresses it calls from (normalised).
        Raises ValidationError when not even those can be read."""
        try:
            instance_id = doc["instance-id"]
            nics = doc["network-interfaces"]
            vpc_id = nics[0]["vpc-id"]
            addresses = tuple(normalise_ip(ip) for nic in nics
                              for key in ("private-ipv4s", "ipv6s") for ip in nic.get(key, ()))
            if not isinstance(instance_id, str) or not isinstance(vpc_id, str):
                raise TypeError("not a string")
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise ValidationError("network-interfaces", f"cannot be read: {exc}") from None
        return cls(instance_id, vpc_id, doc, defaults, pool), addresses

    def get(self) -> Rendered | None:
        """The rendered instance (rendering it now if need be); None if it cannot be."""
        rendered = self._rendered
        if rendered is None and self._doc is not None:
            doc, self._doc = marshal.loads(self._doc), None  # dropped either way
            try:
                inst = Instance.from_doc(doc)
                rendered = self._rendered = render(effective(inst, self._defaults), self._pool)
            except ValidationError as exc:
                log.error("instance %s cannot be served: %s", self.instance_id, exc)
        return rendered


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    by_address: dict[tuple[str, str], Rendered | Deferred]
    by_id: dict[str, Rendered | Deferred]
    key_ring: KeyRing
    built_at: float = 0.0
    stale: bool = field(default=False, compare=False)

    def identify(self, vpc_id: str, ip: str, aliases: dict[str, str] | None = None
                 ) -> Rendered | None:
        """The instance a request comes from: by the listener's VPC and the peer address.

        `aliases` is a listener's own map from peer address to instance id (the demo's
        127.0.0.1); it is configuration, never something a request can say.
        """
        found = None
        if aliases:
            alias = aliases.get(ip)
            if alias is not None:
                found = self.by_id.get(alias)
                if found is None:
                    return None
        if found is None:
            found = self.by_address.get((vpc_id, ip))
        if found is None or isinstance(found, Rendered):
            return found
        return found.get()


def index(rendered: Iterable[tuple[Rendered | Deferred, Iterable[str]]]
          ) -> tuple[dict[tuple[str, str], Rendered | Deferred], dict[str, Rendered | Deferred]]:
    """Index instances by (vpc, address) and by id; addresses are normalised. When two
    instances claim one address, the later one has it."""
    by_address, by_id, _ = _index(rendered)
    return by_address, by_id


def _index(rendered: Iterable[tuple[Rendered | Deferred, Iterable[str]]]
           ) -> tuple[dict[tuple[str, str], Rendered | Deferred], dict[str, Rendered | Deferred],
                      bool]:
    """`index`, and whether no address was claimed by two instances."""
    by_address: dict[tuple[str, str], Rendered | Deferred] = {}
    by_id: dict[str, Rendered | Deferred] = {}
    clean = True
    for r, addresses in rendered:
        by_id[r.instance_id] = r
        vpc_id = r.vpc_id
        for ip in addresses:
            key = (vpc_id, normalise_ip(ip))
            if by_address.setdefault(key, r) is not r:
                clean = False
                by_address[key] = r
    return by_address, by_id, clean


Item = Rendered | Deferred
# What a builder keeps of each instance, by id: (revision, rendered or deferred, addresses).
Cached = tuple[int, Item, tuple[str, ...]]


class Index:
    """`index` kept up to date from one build to the next: only what changed is indexed again.

    Indexing a fleet of 100,000 instances costs about 0.3 s of Python, on the event loop's
    core, on every change; a change to a few instances costs microseconds this way. `update`
    finds what changed by identity (a builder keeps the entry of an unchanged instance) and
    patches the previous dicts in place, so the snapshot being served sees the change as
    soon as it is made (see the module's docstring); the dicts equal what `index` would give
    (`by_id` in the same order). While two instances claim one address (a store edited by
    hand), or when most of the fleet changed, it indexes everything again into new dicts,
    as `index` does, and the snapshot being served keeps the old ones.
    """

    __slots__ = ("_by_address", "_by_id", "_clean", "_items")

    def __init__(self) -> None:
        self._items: dict[str, Cached] = {}
        self._by_address: dict[tuple[str, str], Item] = {}
        self._by_id: dict[str, Item] = {}
        self._clean = False  # no address claimed twice: patching gives what `index` gives

    def update(self, cache: dict[str, Cached], touched: Collection[str] | None = None
               ) -> tuple[dict[tuple[str, str], Item], dict[str, Item]]:
        """The indexes of `cache`, in its order. `touched`, when given, holds every id whose
        entry may have changed or gone since the last update: only those are looked at (a
        change to one instance of 100,000 then costs a few dict entries, not a walk over
        the fleet in Python)."""
        old = self._items
        get = old.get  # a builder keeps the entry of an unchanged instance as it was
        if touched is None or not old:
            changed = [i for i, entry in cache.items() if get(i) is not entry]
            added = sum(1 for i in changed if i not in old)
            gone = [i for i in old if i not in cache] if len(old) + added > len(cache) else []
        else:
            changed = [i for i in touched if i in cache and get(i) is not cache[i]]
            gone = [i for i in touched if i not in cache and i in old]
        if changed or gone or not old:
            if (self._clean and len(changed) + len(gone) <= len(cache) // 2
                    and self._patch(cache, changed, gone)):
                for iid in gone:
                    del old[iid]
                for iid in changed:
                    old[iid] = cache[iid]
            else:
                self._by_address, self._by_id, self._clean = _index(
                    (e[1], e[2]) for e in cache.values())
                self._items = dict(cache)
        return self._by_address, self._by_id

    def _patch(self, cache: dict[str, Cached], changed: list[str], gone: list[str]) -> bool:
        """Patch the indexes in place for `changed` and `gone`; False, changing nothing,
        when that would give an address to two instances (`index` decides, by its order)."""
        by_address, by_id = self._by_address, self._by_id
        freed: set[tuple[str, str]] = set()  # held by what a touched instance was
        for iid in (*changed, *gone):
            previous = self._items.get(iid)
            if previous is not None:
                _, item, addresses = previous
                freed.update(key for key in _keys(item, addresses) if by_address.get(key) is item)
        claimed: dict[tuple[str, str], Item] = {}
        for iid in changed:
            _, item, addresses = cache[iid]
            for key in _keys(item, addresses):
                holder = claimed.get(key)
                if holder is None and key not in freed:
                    holder = by_address.get(key)
                if holder is not None and holder is not item:
                    return False
                claimed[key] = item
        # New entries first, then the ones no longer claimed: a reader never finds none.
        by_address.update(claimed)
        for key in freed.difference(claimed):
            del by_address[key]
        for iid in changed:
            by_id[iid] = cache[iid][1]
        for iid in gone:
            del by_id[iid]
        return True


def _keys(item: Item, addresses: Iterable[str]) -> list[tuple[str, str]]:
    return [(item.vpc_id, normalise_ip(ip)) for ip in addresses]


# Dotted-quad IPv4 as ipaddress writes it (no leading zeros): already canonical.
_CANONICAL_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                             r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)")


def normalise_ip(ip: str) -> str:
    """The canonical text of an address; IPv4-mapped IPv6 becomes plain IPv4."""
    if _CANONICAL_IPV4.fullmatch(ip):
        return ip
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)
