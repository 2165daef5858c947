"""Where the fleet lives: the `Store` protocol and its SQLite (default) implementation."""

from ecs_imds.store.base import Conflict, Store, StoredInstance, open_store

__all__ = ["Conflict", "Store", "StoredInstance", "open_store"]
