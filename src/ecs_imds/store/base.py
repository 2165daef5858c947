"""The store interface every backend implements, and the change log both of them keep.

The store keeps documents (the canonical dicts of `model`), the token key ring and named
secrets, and a version counter that every write bumps. It indexes what makes a write O(1)
in the fleet size: each instance's placement (the host it runs on) and every address it
calls from, unique per VPC, so a write never reads the other instances.

Every write also appends to the **change log**: for each host it touched, the version and
the instances it changed there (`FLEET` for the defaults, the token keys and the secrets).
A server that serves some hosts (its scope) reads only their rows since the version it
has; only when the log no longer reaches back that far (retention) does it read its whole
scope again. A store that can tell its readers as it happens (PostgreSQL's LISTEN/NOTIFY)
hands out a `Subscription` whose notices carry the same rows when they fit; one that
cannot (SQLite, a hot standby) is polled with `changes`. The log's rows are one store's
history: versions order changes within one store only. The store knows nothing of the
protocol beyond the three fields it indexes.

A version number alone does not name a state of the store: a database restored from an
earlier backup, or a standby promoted before it received the last commits, has lost some
versions and will hand the same numbers out again for other writes. So every version gets
a **stamp** when it is committed (a random number the database makes itself, by a trigger,
whoever writes), kept as long as the change log. A reader remembers the stamp of the
version it has and asks for changes with it (`changes(since, scope, stamp)`): when the
store no longer holds that stamp at that version (its history is not the reader's, or it
is behind the reader), the answer is `resync`, and the reader reads its scope afresh
instead of trusting anything it built before.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from ecs_imds.errors import AddressTaken
from ecs_imds.protocol.model import canonical_ipv6
from ecs_imds.protocol.tokens import TokenKey

# The change log's host for what concerns every instance: defaults, token keys, secrets.
FLEET = "*"
# The host of an instance without a placement (only an unscoped server serves it).
UNPLACED = ""
# The hosts a server serves; None: the whole fleet.
Scope = frozenset[str] | None
# How long the change log is kept, in seconds: a server away for longer reads its scope
# again in full when it comes back.
DEFAULT_RETENTION = 24 * 3600.0
# The log is pruned by the write whose version is a multiple of this.
PRUNE_EVERY = 64


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """How a server deals with its store's database when it is slow, hung or full (README
    "Settings", store.*). Seconds, but `pool_size`."""

    connect_timeout: float = 3.0  # PostgreSQL: giving up on a connection attempt
    statement_timeout: float = 30.0  # one statement (SQLite: waiting for the write lock)
    pool_size: int = 10  # PostgreSQL connections of one store, the change feed's included
    stale_after: float = 3.0  # without a successful exchange: the snapshot is stale
    retry_max: float = 1.0  # the longest wait between attempts while the store fails


@dataclass(frozen=True, slots=True)
class StoredInstance:
    instance_id: str
    doc: dict[str, Any]
    revision: int


@dataclass(frozen=True, slots=True)
class Claims:
    """What the store indexes of one instance document."""

    host: str
    vpc_id: str
    addresses: tuple[str, ...]

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> Claims:
        """The placement, VPC and canonical addresses (SPEC §9) of a stored document. Lenient
        (the store does not validate): what is missing claims nothing."""
        nics = doc.get("network-interfaces") or ()
        addresses: list[str] = []
        vpc_id = ""
        for nic in nics:
            if not isinstance(nic, dict):
                continue
            vpc_id = vpc_id or str(nic.get("vpc-id") or "")
            addresses += nic.get("private-ipv4s") or ()
            addresses += (canonical_ipv6(ip) for ip in nic.get("ipv6s") or ())
        return cls(str(doc.get("dedicated-host-id") or UNPLACED), vpc_id,
                   tuple(dict.fromkeys(addresses)))


# The change log's rows of a write that concerns every instance.
FLEET_ROWS: Mapping[str, Set[str]] = MappingProxyType({FLEET: frozenset()})


# One encoder for every document written (json.dumps makes one per call: 100,000 of them
# in an import).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dump(doc: dict[str, Any]) -> str:
    """A document as the stores keep it: compact JSON, non-ASCII characters as they are."""
    return _ENCODER.encode(doc)


def touched(writes: Iterable[tuple[str, str]]) -> dict[str, Set[str]]:
    """(instance id, host) pairs → the change log's rows of one write: host → ids."""
    rows: dict[str, set[str]] = {}
    for instance_id, host in writes:
        rows.setdefault(host, set()).add(instance_id)
    return dict(rows)


def claims_of_batch(given: Iterable[tuple[str, Claims, Any]]) -> list[tuple[str, str, str]]:
    """Every (vpc, address, instance) a batch of writes claims; AddressTaken if two
    instances of the batch claim one."""
    owners: dict[tuple[str, str], str] = {}
    for instance_id, claims, _ in given:
        for address in claims.addresses:
            owner = owners.setdefault((claims.vpc_id, address), instance_id)
            if owner != instance_id:
                raise AddressTaken(claims.vpc_id, address, owner, instance_id)
    return [(vpc_id, address, instance_id) for (vpc_id, address), instance_id in owners.items()]


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed within a scope between a reader's version and `version`."""

    version: int
    ids: frozenset[str] = frozenset()  # written, deleted, or moved into or out of the scope
    fleet: bool = False  # the defaults, token keys or secrets changed
    # The reader's version is not in the store's history as the reader knows it (another
    # history, or the log does not reach back that far): read the scope afresh.
    resync: bool = False
    stamp: int | None = field(default=None, compare=False)  # of `version`; None: unknown

    def then(self, later: Changes) -> Changes:
        """This change followed by `later`, as one."""
        if self.resync or later.resync:
            return Changes(later.version, resync=True, stamp=later.stamp)
        return Changes(later.version, self.ids | later.ids, self.fleet or later.fleet,
                       stamp=later.stamp)


def within(rows: Iterable[tuple[str, Iterable[str] | None]], scope: Scope, version: int,
           stamp: int | None = None) -> Changes:
    """Log rows (host, ids) → what they change in `scope`."""
    ids: set[str] = set()
    fleet = False
    for host, named in rows:
        if host == FLEET:
            fleet = True
        elif scope is None or host in scope:
            ids.update(named or ())
    return Changes(version, frozenset(ids), fleet, stamp=stamp)


def diverged(since: int, stamp: int | None, floor: int, version: int,
             stamp_at_since: int | None) -> bool:
    """Whether a reader at version `since` (whose stamp is `stamp`; None: not checked) must
    read its scope afresh: the store is behind it, its log no longer reaches back there, or
    it holds another stamp at that version (another history)."""
    if not floor <= since <= version:
        return True
    return stamp is not None and stamp != stamp_at_since


# PostgreSQL's NOTIFY payload is limited to 8000 bytes: a longer notice names fewer things.
MAX_PAYLOAD = 7900


@dataclass(frozen=True, slots=True)
class Change:
    """A change notice: one write took the store to `version`, stamped `stamp`. `hosts`
    holds its change log rows (host → the instance ids changed there) when they fit in a
    notice; a host whose ids did not fit maps to None, and `hosts` is None when not even the
    hosts did. Whatever a notice leaves out, the log has."""

    version: int
    hosts: Mapping[str, frozenset[str] | None] | None = field(default_factory=dict)
    stamp: int | None = field(default=None, compare=False)

    def within(self, scope: Scope) -> Changes | None:
        """What this notice changes in `scope`; None when only the log can tell."""
        if self.hosts is None:
            return None
        if any(ids is None and (scope is None or host in scope)
               for host, ids in self.hosts.items()):
            return None
        return within(self.hosts.items(), scope, self.version, self.stamp)

    def payload(self) -> str:
        compact = (",", ":")
        head: dict[str, Any] = {"v": self.version}
        if self.stamp is not None:
            head["s"] = self.stamp
        hosts = self.hosts
        if hosts is not None:
            text = json.dumps(head | {"c": {
                h: None if ids is None else sorted(ids) for h, ids in hosts.items()}},
                separators=compact)
            if len(text.encode()) <= MAX_PAYLOAD:
                return text
            text = json.dumps(head | {"c": {h: None for h in hosts}}, separators=compact)
            if len(text.encode()) <= MAX_PAYLOAD:
                return text
        return json.dumps(head, separators=compact)

    @classmethod
    def parse(cls, payload: str) -> Change | None:
        """The notice in `payload`; None when it is not one (then nothing can be assumed)."""
        try:
            doc = json.loads(payload)
            version, stamp = doc["v"], doc.get("s")
            if not _whole(version) or not (stamp is None or _whole(stamp)):
                return None
            if "c" not in doc:
                return cls(version, None, stamp)
            hosts: dict[str, frozenset[str] | None] = {}
            for host, ids in doc["c"].items():
                if ids is not None and (not isinstance(ids, list)
                                        or not all(isinstance(i, str) for i in ids)):
                    return None
                hosts[host] = None if ids is None else frozenset(ids)
            return cls(version, hosts, stamp)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Subscription(Protocol):
    """A live channel of change notices from the store to one reader."""

    def wait(self, timeout: float) -> list[Change | None]:
        """The notices that arrive within `timeout` seconds (returning as soon as there are
        some); [] when none did. None stands for a notice that could not be read. Raises
        when the connection to the store is lost: notices may have been missed."""

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StoreDump:
    """Everything a store holds, for copying a fleet from one store to another."""

    defaults: dict[str, Any]
    instances: list[dict[str, Any]]
    token_keys: list[TokenKey]
    secrets: dict[str, bytes] = field(repr=False)


class Store(Protocol):
    def version(self) -> int:
        """A counter that grows with every committed change."""

    def head(self) -> tuple[int, int]:
        """The version and its stamp, read together."""

    def load_defaults(self) -> dict[str, Any]: ...

    def revisions(self, scope: Scope = None) -> dict[str, int]:
        """instance id → revision (the version of its last change), of the instances placed
        on the hosts of `scope` (all of them when None)."""

    def load_instances(self, ids: list[str] | None = None, scope: Scope = None
                       ) -> list[StoredInstance]:
        """The instances `ids` (all when None) placed within `scope`, in insertion order."""

    def instances_after(self, after: str | None, limit: int) -> list[StoredInstance]:
        """At most `limit` instances in the order of their ids (the store's collation),
        those after `after`: one read through the primary key, however large the fleet."""

    def changes(self, since: int, scope: Scope = None, stamp: int | None = None) -> Changes:
        """What changed in `scope` after version `since`, read from the change log at one
        point in time, with the stamp of the version it reaches; `resync` when the log no
        longer reaches back to `since`, or (`stamp` given) the store's stamp of `since` is
        not `stamp`."""

    def write_fleet(self, defaults: dict[str, Any] | None, instances: list[dict[str, Any]],
                    replace: bool = False, note: tuple[str, bytes] | None = None) -> int:
        """Set the defaults (when given) and upsert instances, in one transaction; with
        `replace`, instances not given are deleted; `note` (name, value) is set as a named
        secret in the same transaction (an import's idempotency record). Returns the new
        version. Raises
        AddressTaken when an address is held by an instance not given."""

    def delete_instances(self, ids: list[str]) -> int: ...

    def put_instance(self, doc: dict[str, Any], expect: int | None) -> int:
        """Write one instance only if its revision is `expect` (0: it must not exist yet;
        None: whatever it is), checked and written in one transaction. Returns the new
        revision; raises Conflict otherwise, or AddressTaken when another instance holds
        one of its addresses."""

    def delete_instance(self, instance_id: str, expect: int | None) -> int:
        """Delete one instance under the same precondition as `put_instance`; Conflict
        (current 0) when it does not exist."""

    def token_keys(self) -> list[TokenKey]: ...

    def first_token_key(self, key: TokenKey) -> list[TokenKey]:
        """The key ring; when it is empty, `key` becomes its first key, once, even when
        several servers start at the same time (every one of them gets the same ring)."""

    def replace_token_keys(self, keys: list[TokenKey]) -> int: ...

    def secret(self, name: str, make: Any) -> bytes:
        """The named secret; created with `make()` on first use, once, even when several
        servers start at the same time."""

    def set_secret(self, name: str, value: bytes) -> int:
        """Replace a named secret (a key rotation); bumps the version."""

    def secrets_named(self, prefix: str) -> dict[str, bytes]:
        """Every named secret whose name starts with `prefix` (e.g. the API token records)."""

    def secret_versions(self) -> dict[str, int]:
        """Every named secret's name → the version that last replaced it (0: as made): a
        reader reads again only the secrets whose version moved."""

    def subscribe(self) -> Subscription | None:
        """Change notices from now on, or None when this store has none (it is polled)."""

    def dump(self) -> StoreDump:
        """Everything, read consistently (one transaction)."""

    def restore(self, dump: StoreDump) -> int:
        """Replace everything with `dump` in one transaction. Returns the new version; the
        change log starts again there (every reader reads its scope in full)."""

    def close(self) -> None: ...


def open_store(url: str | None, data_dir: Path, retention: float = DEFAULT_RETENTION,
               replica: bool = False, settings: StoreSettings | None = None) -> Store:
    """`sqlite:///path`, `postgresql://…` (any libpq URL), or nothing (the data directory's
    `ecs-imds.db`). `retention`: seconds the change log is kept. `replica`: the store is
    only read (a PostgreSQL hot standby): no migrations, no writes."""
    settings = settings or StoreSettings()
    if url is None or url == "" or url.startswith("sqlite:///"):
        from ecs_imds.store.sqlite import SQLiteStore

        path = Path(url.removeprefix("sqlite://")) if url else data_dir / "ecs-imds.db"
        return SQLiteStore(path, retention, settings)
    if url.startswith(("postgresql://", "postgres://")):
        from ecs_imds.store.postgres import PostgresStore

        return PostgresStore(url, settings, retention=retention, replica=replica)
    raise ValueError(f"unsupported store URL scheme: {url.split(':', 1)[0]}")
