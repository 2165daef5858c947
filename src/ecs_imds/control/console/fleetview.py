"""The fleet as the console lists it: one small row per instance, filtered and paged in
memory, kept current from the store's change log.

The REST API's instance list parses and validates every stored document on each request:
right for a script paging through the fleet, far too slow for a page that filters again on
every keystroke at 100k instances (about 120 µs an instance). The console keeps rows
instead: built on first use from the stored documents (read in batches, only the columns
kept, nothing validated again — every write was), then, whenever the store's version has
moved, only the instances its change log names are read again. The ids matching a filter
are kept with the table they were computed from, so paging through them is a bisect.
"""

from __future__ import annotations

import bisect
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from ecs_imds.errors import ValidationError
from ecs_imds.protocol.model import FleetDefaults, MetadataOptions
from ecs_imds.store import Store

# SPEC §1's access modes, as the console names them (filter values and labels).
NORMAL, HARDENED, DISABLED = "normal", "security-hardening", "endpoint-disabled"
MODES = (NORMAL, HARDENED, DISABLED)
INVALID = "invalid"  # a stored document the data plane cannot serve (edited by hand)

READ_AT_ONCE = 1000  # documents read from the store at a time
FILTERS_KEPT = 16  # filters whose matches a table remembers
MAX_PAGE = 500
SEP = "\x00"  # between tags in a row's tag line (no tag key holds it)


def mode_of(options: MetadataOptions) -> str:
    if not options.endpoint_enabled:
        return DISABLED
    return HARDENED if options.tokens_required else NORMAL


class Row(NamedTuple):
    """What the fleet page shows of one instance, its effective options applied (a tuple:
    a fleet holds 100k of them, made in one go)."""

    instance_id: str
    name: str
    vpc_id: str
    private: tuple[str, ...]  # every address it calls from
    public: tuple[str, ...]  # public IPv4 and EIP
    placement: str | None  # the dedicated host it runs on
    mode: str
    hop_limit: int
    tags: tuple[tuple[str, str], ...]
    tags_exposed: bool
    role: str | None
    spot: str | None
    events: tuple[str, ...]  # event types of its active system events
    haystack: str  # lower-case text the text filter searches
    tagline: str  # every KEY=VALUE between separators, where a tag filter looks first

    def to_json(self) -> dict[str, Any]:
        return {"instance-id": self.instance_id, "name": self.name, "vpc-id": self.vpc_id,
                "private": list(self.private), "public": list(self.public),
                "placement": self.placement, "mode": self.mode, "hop-limit": self.hop_limit,
                "tags": dict(self.tags), "tags-exposed": self.tags_exposed,
                "role": self.role, "spot": self.spot, "events": list(self.events)}


class RowMaker:
    """Rows from stored documents under one set of fleet defaults."""

    def __init__(self, defaults: FleetDefaults) -> None:
        self.defaults = defaults
        self._options: dict[tuple[tuple[str, Any], ...], MetadataOptions | None] = {}

    def options(self, doc: dict[str, Any]) -> MetadataOptions | None:
        """The effective options (shared between instances that set the same ones)."""
        own = doc.get("metadata-options")
        if not own:
            return self.defaults.metadata_options
        key = tuple(sorted(own.items()))
        if key not in self._options:
            try:
                self._options[key] = MetadataOptions.from_doc(
                    own, "metadata-options", base=self.defaults.metadata_options)
            except ValidationError:
                self._options[key] = None
        return self._options[key]

    def row(self, doc: dict[str, Any]) -> Row:
        """The row of a stored document; one the data plane cannot serve either (a store
        edited by hand) is listed as such rather than failing the page."""
        try:
            return self._row(doc)
        except (AttributeError, TypeError, ValueError, IndexError):
            instance_id = str(doc.get("instance-id"))
            return Row(instance_id, "", "", (), (), None, INVALID, 0, (), False, None, None,
                       (), instance_id.lower(), SEP)

    def _row(self, doc: dict[str, Any]) -> Row:
        nics = doc.get("network-interfaces") or [{}]
        private: list[str] = []
        for nic in nics:
            private += nic.get("private-ipv4s") or ()
            private += nic.get("ipv6s") or ()
        public = [doc[k] for k in ("public-ipv4", "eipv4") if doc.get(k)]
        instance_id = str(doc.get("instance-id"))
        name = doc.get("instance-name") or doc.get("hostname") or ""
        tags = tuple(sorted((doc.get("tags") or {}).items()))
        role = doc.get("ram-role") or self.defaults.values.ram_role
        role = role and sys.intern(role)
        placement = doc.get("dedicated-host-id")
        options = self.options(doc)
        text = [instance_id, name, *private, *public, role or "", placement or ""]
        text += [f"{k}={v}" for k, v in tags]
        return Row(instance_id, name, sys.intern(str(nics[0].get("vpc-id"))), tuple(private),
                   tuple(public), placement and sys.intern(placement),
                   INVALID if options is None else mode_of(options),
                   options.hop_limit if options else 0, tags,
                   bool(options and options.tags_exposed), role,
                   doc.get("spot-termination-time"),
                   tuple(e.get("EventType", "") for e in doc.get("events") or ()),
                   " ".join(text).lower(),
                   SEP + SEP.join(f"{k}={v}" for k, v in tags) + SEP)


@dataclass(frozen=True, slots=True)
class Filter:
    """Every part that is set must hold: same VPC, the tag (KEY or KEY=VALUE), the access
    mode, and the text (case-insensitive) somewhere in id, name, addresses, tags, role or
    placement."""

    vpc_id: str = ""
    tag: str = ""
    mode: str = ""
    text: str = ""

    def __bool__(self) -> bool:
        return bool(self.vpc_id or self.tag or self.mode or self.text)

    def apply(self, rows: list[Row]) -> list[Row]:
        """The rows this filter admits, in their order: one tight pass per part that is
        set (a tag is looked for in each row's tag line, then checked exactly)."""
        if self.vpc_id:
            rows = [r for r in rows if r.vpc_id == self.vpc_id]
        if self.mode:
            rows = [r for r in rows if r.mode == self.mode]
        text = self.text.lower().strip()
        if text:
            rows = [r for r in rows if text in r.haystack]
        if self.tag:
            key, has_value, value = self.tag.partition("=")
            needle = f"{SEP}{key}=" + (f"{value}{SEP}" if has_value else "")
            rows = [r for r in rows if needle in r.tagline]
            pair = (key, value)  # exactly, as a key may hold "=" itself
            rows = [r for r in rows if (pair in r.tags if has_value
                                        else any(k == key for k, _ in r.tags))]
        return rows


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[Row]
    total: int  # instances matching the filter
    start: int  # position of the first row among them
    next_after: str | None  # cursor of the next page, None on the last
    prev_before: str | None  # cursor of the previous page, None on the first


@dataclass(slots=True)
class Table:
    """The fleet at one store version; never changed once published (but for the cache of
    filter matches, which only grows and is computed from what is fixed)."""

    version: int
    defaults_doc: dict[str, Any]
    rows: dict[str, Row]
    ids: list[str]  # sorted
    stamp: int | None = None  # of `version`: which history of the store (store/base.py)
    _matches: dict[Filter, list[str]] = field(default_factory=dict)
    _ordered: list[Row] | None = None
    _vpcs: list[tuple[str, int]] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def matching(self, flt: Filter) -> list[str]:
        """The sorted ids of the instances `flt` admits."""
        if not flt:
            return self.ids
        with self._lock:
            found = self._matches.get(flt)
            if self._ordered is None:
                self._ordered = [self.rows[i] for i in self.ids]
            ordered = self._ordered
        if found is None:
            found = [r.instance_id for r in flt.apply(ordered)]
            with self._lock:
                if len(self._matches) >= FILTERS_KEPT:
                    self._matches.pop(next(iter(self._matches)))
                self._matches[flt] = found
        return found

    def page(self, flt: Filter, size: int, after: str | None = None,
             before: str | None = None) -> Page:
        """`size` rows after the id `after`, or before the id `before`, or the first ones."""
        ids = self.matching(flt)
        size = max(1, min(size, MAX_PAGE))
        if before is not None:
            end = bisect.bisect_left(ids, before)
            start = max(0, end - size)
        else:
            start = 0 if after is None else bisect.bisect_right(ids, after)
            end = min(len(ids), start + size)
        chosen = ids[start:end]
        return Page(rows=[self.rows[i] for i in chosen], total=len(ids), start=start,
                    next_after=chosen[-1] if chosen and end < len(ids) else None,
                    prev_before=chosen[0] if chosen and start > 0 else None)

    def vpcs(self) -> list[tuple[str, int]]:
        """Every VPC and how many instances it holds."""
        if self._vpcs is None:
            self._vpcs = sorted(Counter(row.vpc_id for row in self.rows.values()).items())
        return self._vpcs


class FleetView:
    """The current `Table`, brought up to the store's version on each look: from the
    store's change log, only the instances written or deleted since are read again; the
    whole fleet only at first, when the log no longer reaches back, or when the fleet
    defaults changed (every row may inherit from them)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._table: Table | None = None

    def table(self) -> Table:
        with self._lock:
            table = self._table
            if table is None:
                table = self._table = self._read_all()
            elif self._store.head() != (table.version, table.stamp):
                table = self._table = self._catch_up(table)
            return table

    def _read_all(self) -> Table:
        store = self._store
        version, stamp = store.head()
        defaults_doc = store.load_defaults()
        maker = RowMaker(FleetDefaults.from_doc(defaults_doc))
        ids = list(store.revisions())
        rows: dict[str, Row] = {}
        for start in range(0, len(ids), READ_AT_ONCE):
            for stored in store.load_instances(ids[start:start + READ_AT_ONCE]):
                rows[stored.instance_id] = maker.row(stored.doc)
        return Table(version=version, defaults_doc=defaults_doc, rows=rows, ids=sorted(rows),
                     stamp=stamp)

    def _catch_up(self, old: Table) -> Table:
        store = self._store
        changes = store.changes(old.version, stamp=old.stamp)
        if changes.resync:
            return self._read_all()
        if changes.fleet and store.load_defaults() != old.defaults_doc:
            return self._read_all()
        if not changes.ids:
            return replace(old, version=changes.version, stamp=changes.stamp)
        maker = RowMaker(FleetDefaults.from_doc(old.defaults_doc))
        rows = dict(old.rows)
        found = {s.instance_id: s for s in store.load_instances(sorted(changes.ids))}
        for instance_id in changes.ids:
            stored = found.get(instance_id)
            if stored is None:
                rows.pop(instance_id, None)
            else:
                rows[instance_id] = maker.row(stored.doc)
        same = all((i in rows) == (i in old.rows) for i in changes.ids)
        return Table(version=changes.version, defaults_doc=old.defaults_doc, rows=rows,
                     ids=old.ids if same else sorted(rows), stamp=changes.stamp)
