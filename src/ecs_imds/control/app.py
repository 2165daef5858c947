"""The operators' REST API, assembled: authentication, error handling and the routers of
`routes` (one per resource family), around one `ControlContext`.

`create_app` only puts the pieces together; what a route does is in its own module, and
another part of the server (the web console) adds its routers with `app.include_router`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from ecs_imds.control.context import ControlContext
from ecs_imds.control.http import error, install_error_handlers
from ecs_imds.control.routes import ROUTERS

DESCRIPTION = ("Operate the fleet an ECS instance metadata service serves. "
               "Every request needs `Authorization: Bearer <token>`.")


def create_app(ctx: ControlContext, routers: Iterable[APIRouter] = ROUTERS) -> FastAPI:
    app = FastAPI(title="ecs-imds control plane", version="1", description=DESCRIPTION)
    app.state.control = ctx

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Response:
        principal = ctx.authority.check(request.headers.get("authorization"))
        if principal is None:
            return error(401, "Unauthorized", "a valid bearer token is required",
                         {"WWW-Authenticate": "Bearer"})
        if request.method not in ("GET", "HEAD") and not principal.may_write:
            return error(403, "Forbidden", f"token {principal.name} is read-only")
        request.state.principal = principal
        response: Response = await call_next(request)
        return response

    install_error_handlers(app)
    for router in routers:
        app.include_router(router)
    return app
