"""Liveness, readiness and metrics.

These routes read memory only: never the store, never a thread. A hung database must not
make a health check slow, or a supervisor would restart a data plane that is still serving.
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from ecs_imds.control import schemas as s
from ecs_imds.control.context import Ctx
from ecs_imds.control.http import responses

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=s.Health, responses=responses(),
            operation_id="CheckLiveness")
async def healthz() -> s.Health:
    return s.Health(status="ok")


@router.get("/readyz", response_model=s.Ready, operation_id="CheckReadiness",
            responses={**responses(), 503: {"model": s.Ready, "description": "not ready"}})
async def readyz(ctx: Ctx) -> JSONResponse:
    snap = ctx.snapshot()
    ready = snap is not None and not snap.stale
    body = s.Ready(ready=ready, stale=bool(snap and snap.stale),
                   version=snap.version if snap else None,
                   age_seconds=round(time.time() - snap.built_at, 3) if snap else None,
                   instances=len(snap.by_id) if snap else 0)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse, operation_id="GetMetrics",
            responses={**responses(), 200: {"content": {"text/plain": {}}}})
async def metrics(ctx: Ctx) -> PlainTextResponse:
    body, content_type = ctx.metrics.render()
    return PlainTextResponse(body, media_type=content_type)
