"""Fixtures shared by the end-to-end test modules, and the markers that select tests:

- `core`: the protocol core's own tests, pure and fast (`make test-core`);
- `netns`: tests that build network namespaces (root);
- `postgres`: tests that run a PostgreSQL of their own.

`pytest -m "not netns and not postgres"` runs what needs neither root nor PostgreSQL.
"""

from __future__ import annotations

import pytest
from hypothesis import settings

from e2e import server, topo
from installed import installed
from pg import pg_url, postgres

# Tests never assert on wall-clock time: no per-example deadline (the default of 200 ms
# fails property tests on a busy machine, not because anything is wrong).
settings.register_profile("ecs-imds", deadline=None)
settings.load_profile("ecs-imds")

pytest_plugins = ["pytester"]  # tests of the ecs_imds.testing plugin run pytest in pytest

__all__ = ["installed", "pg_url", "postgres", "server", "topo"]

CORE = {"test_model", "test_catalogue", "test_decide", "test_tokens", "test_ratelimit",
        "test_index", "test_proxy"}
_NETNS_NAMES = ("Topology", "topo")
_POSTGRES_NAMES = ("PostgresCluster", "cluster", "pg_url", "postgres", "own_pg")


def pytest_configure(config: pytest.Config) -> None:
    for name, what in (("core", "the protocol core's own tests (fast, no I/O)"),
                       ("netns", "builds network namespaces (needs root)"),
                       ("postgres", "runs a PostgreSQL of its own")):
        config.addinivalue_line("markers", f"{name}: {what}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        names = set(getattr(item, "fixturenames", ())) | set(vars(module) if module else ())
        if module is not None and module.__name__ in CORE:
            item.add_marker(pytest.mark.core)
        if any(n in names for n in _NETNS_NAMES):
            item.add_marker(pytest.mark.netns)
        if any(n in names for n in _POSTGRES_NAMES):
            item.add_marker(pytest.mark.postgres)
