"""Fixtures shared by the end-to-end test modules."""

from e2e import server, topo
from pg import pg_url, postgres

__all__ = ["pg_url", "postgres", "server", "topo"]
