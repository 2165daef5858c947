"""Each router of the control plane, mounted alone on an app with a real SQLite store.

A route module must work without the others: `create_app(ctx, [module.router])` is all a
test (or another part of the server) needs. Requests go through the real ASGI app."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter

from ecs_imds.control.app import create_app
from ecs_imds.control.audit import Audit, json_logger
from ecs_imds.control.auth import Authority, new_secret
from ecs_imds.control.context import ControlContext
from ecs_imds.control.fleet import import_fleet
from ecs_imds.control.routes import fleet, health, instances, items, keys, options, tokens
from ecs_imds.demo import demo_fleet
from ecs_imds.metrics import Metrics
from ecs_imds.store import keys as store_keys
from ecs_imds.store.sqlite import SQLiteStore

WEB = "i-bp1demo0000000000001"


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ControlContext]:
    store = SQLiteStore(tmp_path / "store.db")
    import_fleet(store, demo_fleet())
    store_keys.ensure_token_keys(store)
    audit = Audit(json_logger("ecs_imds.test-audit", tmp_path / "audit.log"))
    context = ControlContext(store=store, authority=Authority(new_secret()),
                             snapshot=lambda: None, metrics=Metrics(lambda: None, list),
                             audit=audit)
    yield context
    context.executor.shutdown()
    store.close()
    logging.getLogger("ecs_imds.test-audit").handlers.clear()


def call(ctx: ControlContext, router: APIRouter, method: str, path: str,
         **kwargs: Any) -> httpx.Response:
    """One request to an app holding only `router`, as the admin."""
    app = create_app(ctx, [router])
    token, _ = ctx.authority.issue("admin", "admin", 60, int(time.time()))

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://control") as client:
            return await client.request(method, path, **kwargs,
                                        headers={"Authorization": f"Bearer {token}"})

    return asyncio.run(go())


@pytest.mark.parametrize(("router", "method", "path", "body", "status", "check"), [
    (instances.router, "GET", f"/v1/instances/{WEB}", None, 200,
     lambda j: j["instance-name"] == "demo-web-1"),
    (options.router, "PATCH", f"/v1/instances/{WEB}/metadata-options",
     {"HttpTokens": "required"}, 200, lambda j: j["HttpTokens"] == "required"),
    (items.router, "PUT", f"/v1/instances/{WEB}/tags", {"Tags": {"k": "v"}}, 200,
     lambda j: j["Tags"] == {"k": "v"}),
    (fleet.router, "GET", "/v1/defaults", None, 200, lambda j: "region-id" in j),
    (keys.router, "POST", "/v1/keys/token/rotate", None, 200, lambda j: j["KeyId"] == 2),
    (tokens.router, "POST", "/v1/api-tokens", {"Name": "ci"}, 201,
     lambda j: j["Token"].startswith(f"read.ci.{j['Id']}.")),
    (health.router, "GET", "/healthz", None, 200, lambda j: j == {"status": "ok"}),
])
def test_each_router_works_alone(ctx: ControlContext, router: APIRouter, method: str,
                                 path: str, body: Any, status: int, check: Any) -> None:
    resp = call(ctx, router, method, path, json=body)
    assert resp.status_code == status, resp.text
    assert check(resp.json())


def test_a_router_serves_only_its_own_routes(ctx: ControlContext) -> None:
    resp = call(ctx, health.router, "GET", f"/v1/instances/{WEB}")
    assert resp.status_code == 404 and resp.json()["Code"] == "NotFound"


def test_store_calls_run_on_the_control_planes_own_threads(ctx: ControlContext) -> None:
    """Routes hand store work to the context's threads, never to the event loop."""
    import threading

    seen: list[str] = []
    load = ctx.store.load_instances

    def watched(ids: list[str] | None = None) -> Any:
        seen.append(threading.current_thread().name)
        return load(ids)

    ctx.store.load_instances = watched  # type: ignore[method-assign]
    assert call(ctx, instances.router, "GET", f"/v1/instances/{WEB}").status_code == 200
    assert seen and all(name.startswith("control-store") for name in seen)


@pytest.mark.parametrize(("router", "method", "path", "body", "action"), [
    (options.router, "PATCH", f"/v1/instances/{WEB}/metadata-options",
     {"HttpTokens": "required"}, "modify-metadata-options"),
    (instances.router, "PATCH", f"/v1/instances/{WEB}", {"instance-name": "x"}, "patch"),
    (items.router, "PUT", f"/v1/instances/{WEB}/tags", {"Tags": {"k": "v"}}, "set-tags"),
    (instances.router, "DELETE", f"/v1/instances/{WEB}", None, "delete"),
    (tokens.router, "POST", "/v1/api-tokens", {"Name": "ci"}, "issue-api-token"),
    (keys.router, "POST", "/v1/keys/token/rotate", None, "rotate-token-key"),
    (fleet.router, "POST", "/v1/fleet", demo_fleet(), "import"),
])
def test_audit_lines_are_written_on_the_control_planes_threads(
        ctx: ControlContext, router: APIRouter, method: str, path: str, body: Any,
        action: str) -> None:
    """The audit log is a file: its lines are written beside the store work, never on the
    event loop the data plane serves from; one line a change, written before the answer."""
    import threading

    written: list[tuple[str, str]] = []

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            assert isinstance(record.msg, dict)
            written.append((record.msg["action"], threading.current_thread().name))

    ctx.audit.logger.addHandler(Watch())
    assert call(ctx, router, method, path, json=body).status_code in (200, 201, 204)
    assert [a for a, _ in written] == [action]
    assert all(name.startswith("control-store") for _, name in written)


def test_a_filtered_page_examines_a_bounded_number_of_instances(tmp_path: Path) -> None:
    """A filter that matches few gives short (even empty) pages with a token, never a scan of
    the fleet; following the tokens finds every match, in order, and ends with null."""
    store = SQLiteStore(tmp_path / "paged.db")
    doc = {"defaults": demo_fleet()["defaults"], "instances": [{
        "instance-id": f"i-paged{n:04d}", "tags": {"pick": "yes"} if n % 9 == 0 else {},
        "network-interfaces": [{
            "mac": f"00:16:3e:00:01:{n:02x}", "network-interface-id": f"eni-paged{n:04d}",
            "vpc-id": "vpc-paged", "vswitch-id": "vsw-paged",
            "private-ipv4s": [f"172.16.9.{n + 10}"], "vswitch-cidr-block": "172.16.9.0/24",
            "vpc-cidr-block": "172.16.0.0/12"}]} for n in range(40)]}
    import_fleet(store, doc)
    found, sizes, token = [], [], None
    while True:
        page = instances.page_of(store, instances.Filters(None, None, "pick=yes", 2, token),
                                 scan_limit=7)
        found += [d["instance-id"] for d in page["instances"]]
        sizes.append(len(page["instances"]))
        token = page["next-page-token"]
        if token is None:
            break
    assert found == [f"i-paged{n:04d}" for n in range(0, 40, 9)]
    assert 0 in sizes and max(sizes) <= 2 and len(sizes) >= 40 // 7
    whole = instances.page_of(store, instances.Filters(None, None, None, 40, None))
    assert [d["instance-id"] for d in whole["instances"]] == [f"i-paged{n:04d}"
                                                               for n in range(40)]
    assert whole["next-page-token"] is None
    full = instances.page_of(store, instances.Filters(None, None, None, 39, None))
    assert full["next-page-token"] == "i-paged0038"
    store.close()
