"""The pytest plugin (entry point `pytest11`): a real ecs-imds for your tests.

Fixtures:
- `ecs_imds`: the session's server (see `ImdsServer`), with `ECS_IMDS_ENDPOINT` set for
  the test; whatever a test changed through `ecs_imds.admin` is undone after it.
- `ecs_imds_fleet`: the fleet it serves (session-scoped; default the demo fleet). Override
  it in your conftest.py with a dict or the path of a fleet file.
- `ecs_imds_settings`: extra config settings for it (session-scoped; default none).
- `ecs_imds_server_factory`: `factory(fleet, **settings)` starts another server for one
  test (stopped after it).
- `ecs_imds_sandbox`: a network namespace in which 100.100.100.200:80 serves the fleet's
  first instance (see `Sandbox`): `.run(argv)` runs a command there, `.call(fn)` a Python
  callable. `ecs_imds_sandbox_factory(instance=…, mode="hardened")` makes others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ecs_imds.testing.sandbox import Sandbox
from ecs_imds.testing.server import Fleet, ImdsServer


@pytest.fixture(scope="session")
def ecs_imds_fleet() -> Fleet:
    return None


@pytest.fixture(scope="session")
def ecs_imds_settings() -> dict[str, Any]:
    return {}


@pytest.fixture(scope="session")
def ecs_imds_session_server(ecs_imds_fleet: Fleet, ecs_imds_settings: dict[str, Any]
                            ) -> Iterator[ImdsServer]:
    with ImdsServer(ecs_imds_fleet, **ecs_imds_settings) as server:
        yield server


@pytest.fixture
def ecs_imds(ecs_imds_session_server: ImdsServer, monkeypatch: pytest.MonkeyPatch
             ) -> Iterator[ImdsServer]:
    server = ecs_imds_session_server
    monkeypatch.setenv("ECS_IMDS_ENDPOINT", server.endpoint)
    yield server
    if server.admin.changed:
        server.reset()
        server.admin.changed = False


@pytest.fixture
def ecs_imds_server_factory() -> Iterator[Callable[..., ImdsServer]]:
    started: list[ImdsServer] = []

    def start(fleet: Fleet = None, **settings: Any) -> ImdsServer:
        server = ImdsServer(fleet, **settings).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def ecs_imds_sandbox_factory(ecs_imds_fleet: Fleet) -> Iterator[Callable[..., Sandbox]]:
    started: list[Sandbox] = []

    def start(instance: str | None = None, mode: str | None = None,
              fleet: Fleet = ecs_imds_fleet) -> Sandbox:
        box = Sandbox(fleet, instance, mode).start()
        started.append(box)
        return box

    yield start
    for box in started:
        box.close()


@pytest.fixture
def ecs_imds_sandbox(ecs_imds_sandbox_factory: Callable[..., Sandbox]) -> Sandbox:
    return ecs_imds_sandbox_factory()
