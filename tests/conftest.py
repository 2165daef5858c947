"""Fixtures shared by the end-to-end test modules."""

from e2e import server, topo

__all__ = ["server", "topo"]
