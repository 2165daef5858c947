"""The operators' REST API, assembled: authentication, error handling and the routers of
`routes` (one per resource family), around one `ControlContext`.

`create_app` only puts the pieces together; what a route does is in its own module, and
another part of the server (the web console) adds its routers with `app.include_router`.

Every path needs a bearer token except those the app lists as public (`public_paths`,
`public_prefixes` in `app.state`): liveness, readiness, the API's documentation, and
/metrics when the operator opened it to scrapers. None of those reveals a secret. A path
nobody declared public is protected, whoever adds it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.datastructures import Headers, State
from starlette.types import ASGIApp, Receive, Scope, Send

from ecs_imds.control.context import ControlContext
from ecs_imds.control.http import error, install_error_handlers
from ecs_imds.control.limits import BodyLimits
from ecs_imds.control.routes import ROUTERS, docs

DESCRIPTION = ("Operate the fleet an ECS instance metadata service serves. Every request "
               "needs `Authorization: Bearer <token>` (Authorize, above), except liveness, "
               "readiness and this documentation.")
PUBLIC_PATHS = ("/healthz", "/readyz", "/openapi.json", docs.DOCS)
PUBLIC_PREFIXES = (docs.ASSETS,)
SCHEME = "bearer"


def create_app(ctx: ControlContext, routers: Iterable[APIRouter] = ROUTERS) -> FastAPI:
    app = FastAPI(title="ecs-imds control plane", version="1", description=DESCRIPTION,
                  docs_url=None, redoc_url=None)
    app.state.control = ctx
    app.state.public_paths = {*PUBLIC_PATHS,
                              *(["/metrics"] if ctx.settings.open_metrics else [])}
    app.state.public_prefixes = list(PUBLIC_PREFIXES)
    app.add_middleware(BodyLimits, limit=ctx.settings.body_limit)
    app.add_middleware(Authenticate, ctx=ctx, state=app.state)  # last added, first to run
    install_error_handlers(app)
    for router in (*routers, docs.router):
        app.include_router(router)
    app.openapi = lambda: openapi(app)  # type: ignore[method-assign]
    return app


class Authenticate:
    """ASGI middleware, outermost: a request for a path that is not public needs a valid
    bearer token, and a read-only token may only GET; the principal is put in the
    request's state. No body is read for a stranger. (A plain ASGI class: Starlette's
    `BaseHTTPMiddleware` costs every request a task group and a pair of streams.)"""

    def __init__(self, app: ASGIApp, ctx: ControlContext, state: State) -> None:
        self.app, self.ctx, self.state = app, ctx, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._public(scope["path"]):
            await self.app(scope, receive, send)
            return
        principal = self.ctx.authority.check(Headers(scope=scope).get("authorization"),
                                             time.time())
        if principal is None:
            await error(401, "Unauthorized", "a valid bearer token is required",
                        {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        elif scope["method"] not in ("GET", "HEAD") and not principal.may_write:
            await error(403, "Forbidden", f"token {principal.name} is read-only")(
                scope, receive, send)
        else:
            scope.setdefault("state", {})["principal"] = principal
            await self.app(scope, receive, send)

    def _public(self, path: str) -> bool:
        return path in self.state.public_paths or path.startswith(
            tuple(self.state.public_prefixes))


def openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, declaring the bearer scheme (the docs' Authorize button) for
    every operation but the public ones."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, description=app.description,
                          routes=app.routes)
        doc.setdefault("components", {})["securitySchemes"] = {SCHEME: {
            "type": "http", "scheme": "bearer",
            "description": "An API token: `<data-dir>/admin.token` on the server's host, "
                           "or one from `ecs-imds admin token create`"}}
        doc["security"] = [{SCHEME: []}]
        for path, operations in doc.get("paths", {}).items():
            if path in app.state.public_paths:
                for operation in operations.values():
                    operation["security"] = []
        app.openapi_schema = doc
    return app.openapi_schema
