"""The console's own reads, under `/v1/console/`: what the pages show that the REST API does
not answer in one request (or fast enough). Every change the console makes goes through the
REST API itself, with its ETags; nothing here writes.

Store reads run on the control plane's store threads (`ControlContext.run`), crawls of the
served tree too (they derive a credential, sign nothing). The one step that touches the data
plane's snapshot objects — rendering an instance deferred until its first request — runs on
the event loop, where the data plane does the same, so the two never race over one instance.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from ecs_imds.control import fleet
from ecs_imds.control.console import audit_log
from ecs_imds.control.console.fleetview import MAX_PAGE, MODES, Filter, FleetView, RowMaker
from ecs_imds.control.console.served import Answer, Credentials, crawl
from ecs_imds.control.context import ControlContext, Ctx, principal
from ecs_imds.control.http import responses
from ecs_imds.errors import ApiError
from ecs_imds.protocol.catalogue import Rendered
from ecs_imds.protocol.credentials import Issuer
from ecs_imds.protocol.model import FleetDefaults
from ecs_imds.protocol.snapshot import Snapshot

router = APIRouter(prefix="/v1/console", tags=["console"])
_NO_STORE = {"Cache-Control": "no-store"}


async def fleet_view(request: Request, ctx: Ctx) -> FleetView:
    """The app's one FleetView, made on first use (async: no thread, so made once)."""
    view: FleetView | None = getattr(request.app.state, "fleet_view", None)
    if view is None:
        view = request.app.state.fleet_view = FleetView(ctx.store)
    return view


View = Annotated[FleetView, Depends(fleet_view)]


def _json(body: Any) -> JSONResponse:
    return JSONResponse(body, headers=_NO_STORE)


@router.get("/session", responses=responses(), operation_id="ConsoleSession",
            summary="Who the bearer token is, and whether it may change things")
async def session(request: Request) -> JSONResponse:
    who = principal(request)
    return _json({"name": who.name, "scope": who.scope, "may-write": who.may_write})


@router.get("/version", responses=responses(), operation_id="ConsoleVersion",
            summary="The served snapshot's version and the store's (Live polls it)")
async def version(ctx: Ctx) -> JSONResponse:
    snap = ctx.snapshot()
    return _json({"snapshot": snap.version if snap else None,
                  "stale": bool(snap and snap.stale),
                  "store": await ctx.run(ctx.store.version)})


@router.get("/fleet", responses=responses(400), operation_id="ConsoleFleet",
            summary="A page of instances, filtered, as the fleet page lists them")
async def fleet_page(
    ctx: Ctx, view: View,
    vpc_id: str = Query("", alias="vpc-id", max_length=64),
    tag: str = Query("", max_length=256, description="KEY or KEY=VALUE"),
    mode: str = Query("", description=" | ".join(MODES)),
    q: str = Query("", max_length=256,
                   description="text in id, name, address, tag, role, host"),
    after: str | None = Query(None, max_length=64, description="last id of the page before"),
    before: str | None = Query(None, max_length=64, description="first id of the page after"),
    page_size: int = Query(50, alias="page-size", ge=1, le=MAX_PAGE),
) -> JSONResponse:
    if mode and mode not in MODES:
        raise ApiError(400, "InvalidParameter", f"mode: must be one of {', '.join(MODES)}")
    table = await ctx.run(view.table)
    page = await ctx.run(table.page, Filter(vpc_id, tag, mode, q), page_size, after, before)
    return _json({"version": table.version, "total": page.total, "start": page.start,
                  "fleet-size": len(table.ids), "next-after": page.next_after,
                  "prev-before": page.prev_before,
                  "instances": [row.to_json() for row in page.rows],
                  "vpcs": [{"vpc-id": v, "instances": n} for v, n in table.vpcs()]})


def _read(ctx: ControlContext, instance_id: str) -> dict[str, Any]:
    stored = fleet.read_instance(ctx.store, instance_id)
    row = RowMaker(FleetDefaults.from_doc(ctx.store.load_defaults())).row(stored.doc)
    return {"instance": row.to_json(), "revision": stored.revision,
            "etag": f'"{stored.revision}"', "events": stored.doc.get("events") or []}


def _both(caller: Rendered, snap: Snapshot, issuer: Issuer | None
          ) -> tuple[list[Answer], list[Answer], Credentials | None]:
    """The tree after a token PUT and with plain GETs, at one moment."""
    now = time.time()
    served, credentials = crawl(caller, snap, now, issuer, with_token=True)
    plain, _ = crawl(caller, snap, now, issuer, with_token=False)
    return served, plain, credentials


@router.get("/instances/{instance_id}", responses=responses(404),
            operation_id="ConsoleInstance",
            summary="One instance and its metadata tree exactly as it is served now")
async def instance(ctx: Ctx, instance_id: str) -> JSONResponse:
    body = await ctx.run(_read, ctx, instance_id)
    snap = ctx.snapshot()
    item = snap.by_id.get(instance_id) if snap else None
    caller = item if item is None or isinstance(item, Rendered) else item.get()
    body["snapshot"] = snap.version if snap else None
    body["served"] = caller is not None
    if snap is not None and caller is not None:
        served, plain, credentials = await ctx.run(_both, caller, snap, ctx.issuer())
        body["with-token"] = [a.to_json() for a in served]
        body["without-token"] = [a.to_json() for a in plain]
        body["credentials"] = None if credentials is None else {
            "role": credentials.role, "access-key-id": credentials.access_key_id,
            "expiration": credentials.expiration, "last-updated": credentials.last_updated}
    return _json(body)


@router.get("/audit", responses=responses(400), operation_id="ConsoleAudit",
            summary="The newest records of this server's audit log")
async def audit(ctx: Ctx, instance: str | None = Query(None, max_length=64),
                limit: int = Query(100, ge=1, le=1000)) -> JSONResponse:
    return _json({"records": await ctx.run(audit_log.recent, ctx.audit.path, instance, limit)})
