"""The store interface every backend implements.

The store keeps documents (the canonical dicts of `model`), the token key ring and named
secrets, and a version counter that every write bumps: the change feed the data plane
watches. It knows nothing of the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..tokens import TokenKey


@dataclass(frozen=True, slots=True)
class StoredInstance:
    instance_id: str
    doc: dict[str, Any]
    revision: int


class Conflict(Exception):
    """A conditional write found the instance at another revision than the caller expected."""

    def __init__(self, instance_id: str, current: int) -> None:
        super().__init__(f"{instance_id} is at revision {current}")
        self.instance_id = instance_id
        self.current = current


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

    def replace_token_keys(self, keys: list[TokenKey]) -> int: ...

    def secret(self, name: str, make: Any) -> bytes:
        """The named secret; created with `make()` on first use, once, even when several
        servers start at the same time."""

    def set_secret(self, name: str, value: bytes) -> int:
        """Replace a named secret (a key rotation); bumps the version."""

    def close(self) -> None: ...


def open_store(url: str | None, data_dir: Path) -> Store:
    """`sqlite:///path` or nothing (the data directory's `ecs-imds.db`)."""
    from .sqlite import SQLiteStore

    if url is None or url == "":
        return SQLiteStore(data_dir / "ecs-imds.db")
    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url.removeprefix("sqlite://")))
    raise ValueError(f"unsupported store URL scheme: {url.split(':', 1)[0]}")
