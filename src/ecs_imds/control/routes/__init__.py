"""The control plane's routes, one module per resource family; `ROUTERS` is all of them, in
the order the API's documentation lists them (`docs` serves that documentation)."""

from __future__ import annotations

from fastapi import APIRouter

from ecs_imds.control.routes import (
    fleet,
    health,
    instances,
    items,
    keys,
    options,
    placement,
    tokens,
)

ROUTERS: tuple[APIRouter, ...] = (
    instances.router, options.router, items.router, placement.router, fleet.router,
    keys.router,
    tokens.router, health.router,
)
