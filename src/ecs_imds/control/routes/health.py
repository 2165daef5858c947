"""Liveness, readiness and metrics: for supervisors, load balancers and scrapers.

These routes read memory only: never the store, never a thread. A hung database must not
make a health check slow, or a supervisor would restart a data plane that is still serving.
Liveness and readiness need no token and say nothing secret; /metrics needs one unless the
operator opened it (`api: {open-metrics: true}`).
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from ecs_imds.control import schemas as s
from ecs_imds.control.context import Ctx
from ecs_imds.control.http import responses

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=s.Health, operation_id="CheckLiveness")
async def healthz() -> s.Health:
    """The process answers: its event loop runs."""
    return s.Health(status="ok")


@router.get("/readyz", response_model=s.Ready, operation_id="CheckReadiness",
            responses={503: {"model": s.Ready, "description": "starting, or stale"}})
async def readyz(ctx: Ctx) -> JSONResponse:
    """Ready when a snapshot serves and the store could be read at the last look:
    `starting` until the first snapshot is built, `stale` while the store cannot be read
    (the last snapshot keeps serving)."""
    snap = ctx.snapshot()
    status = "starting" if snap is None else "stale" if snap.stale else "ready"
    body = s.Ready(status=status, ready=status == "ready", stale=status == "stale",
                   version=snap.version if snap else None,
                   age_seconds=round(time.time() - snap.built_at, 3) if snap else None,
                   instances=len(snap.by_id) if snap else 0)
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get("/metrics", response_class=PlainTextResponse, operation_id="GetMetrics",
            responses={**responses(text=True), 200: {"content": {"text/plain": {}}}})
async def metrics(ctx: Ctx) -> PlainTextResponse:
    """Prometheus text: with several workers, the totals of all of them."""
    body, content_type = ctx.metrics.render()
    return PlainTextResponse(body, media_type=content_type)
