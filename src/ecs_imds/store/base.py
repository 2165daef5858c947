"""The store interface every backend implements.

The store keeps documents (the canonical dicts of `model`), the token key ring and named
secrets, and a version counter that every write bumps: the change feed the data plane
watches. A store that can tell its readers what changed (PostgreSQL's LISTEN/NOTIFY) hands
out a `Subscription`; one that cannot (SQLite) is polled. It knows nothing of the protocol.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ecs_imds.protocol.tokens import TokenKey


@dataclass(frozen=True, slots=True)
class StoredInstance:
    instance_id: str
    doc: dict[str, Any]
    revision: int


# PostgreSQL's NOTIFY payload is limited to 8000 bytes; longer lists become `everything`.
MAX_PAYLOAD = 7900


@dataclass(frozen=True, slots=True)
class Change:
    """A change notice: the store reached `version`, and only the instances `ids` (written
    or deleted) changed with it, unless `everything` may have (defaults, a replace, a
    notice too long to list them)."""

    version: int
    ids: frozenset[str] = frozenset()
    everything: bool = False

    def payload(self) -> str:
        if not self.everything:
            text = json.dumps({"v": self.version, "ids": sorted(self.ids)},
                              separators=(",", ":"))
            if len(text.encode()) <= MAX_PAYLOAD:
                return text
        return json.dumps({"v": self.version, "all": True}, separators=(",", ":"))

    @classmethod
    def parse(cls, payload: str) -> Change | None:
        """The notice in `payload`; None when it is not one (then nothing can be assumed)."""
        try:
            doc = json.loads(payload)
            version = doc["v"]
            if not isinstance(version, int) or isinstance(version, bool):
                return None
            if doc.get("all"):
                return cls(version, everything=True)
            ids = doc.get("ids", [])
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                return None
            return cls(version, frozenset(ids))
        except (ValueError, TypeError, KeyError):
            return None


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

    def load_defaults(self) -> dict[str, Any]: ...

    def revisions(self) -> dict[str, int]:
        """instance id → revision (the version of its last change)."""

    def load_instances(self, ids: list[str] | None = None) -> list[StoredInstance]: ...

    def write_fleet(self, defaults: dict[str, Any] | None, instances: list[dict[str, Any]],
                    replace: bool = False) -> int:
        """Set the defaults (when given) and upsert instances, in one transaction; with
        `replace`, instances not given are deleted. Returns the new version."""

    def delete_instances(self, ids: list[str]) -> int: ...

    def put_instance(self, doc: dict[str, Any], expect: int | None) -> int:
        """Write one instance only if its revision is `expect` (0: it must not exist yet;
        None: whatever it is), checked and written in one transaction. Returns the new
        revision; raises Conflict otherwise."""

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

    def subscribe(self) -> Subscription | None:
        """Change notices from now on, or None when this store has none (it is polled)."""

    def dump(self) -> StoreDump:
        """Everything, read consistently (one transaction)."""

    def restore(self, dump: StoreDump) -> int:
        """Replace everything with `dump` in one transaction. Returns the new version."""

    def close(self) -> None: ...


def open_store(url: str | None, data_dir: Path) -> Store:
    """`sqlite:///path`, `postgresql://…` (any libpq URL), or nothing (the data directory's
    `ecs-imds.db`)."""
    from ecs_imds.store.sqlite import SQLiteStore

    if url is None or url == "":
        return SQLiteStore(data_dir / "ecs-imds.db")
    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url.removeprefix("sqlite://")))
    if url.startswith(("postgresql://", "postgres://")):
        from ecs_imds.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unsupported store URL scheme: {url.split(':', 1)[0]}")
