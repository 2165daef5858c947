"""Where the fleet lives: the `Store` protocol and its SQLite (default) implementation."""

from ecs_imds.store.base import Store, StoredInstance, open_store

__all__ = ["Store", "StoredInstance", "open_store"]
