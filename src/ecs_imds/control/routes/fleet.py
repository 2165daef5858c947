"""The fleet as a whole: its defaults, and the fleet file (export, and import validated
whole: all of it or nothing)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from ecs_imds.control import fleet
from ecs_imds.control import schemas as s
from ecs_imds.control.context import Ctx
from ecs_imds.control.http import read_json, responses
from ecs_imds.protocol.model import FleetDefaults
from ecs_imds.store import Store

router = APIRouter(tags=["fleet"])


def defaults_of(store: Store) -> FleetDefaults:
    return FleetDefaults.from_doc(store.load_defaults())


@router.get("/v1/defaults", operation_id="DescribeDefaults", responses={
    200: s.json_response(s.DEFAULTS, "the fleet defaults"), **responses()})
async def get_defaults(ctx: Ctx) -> JSONResponse:
    return JSONResponse((await ctx.run(defaults_of, ctx.store)).to_doc())


@router.put("/v1/defaults", operation_id="ModifyDefaults",
            openapi_extra=s.json_body(s.DEFAULTS, "what every instance inherits"),
            responses={200: s.json_response(s.DEFAULTS, "replaced"), **responses(400)})
async def set_defaults(request: Request, ctx: Ctx) -> JSONResponse:
    doc = await read_json(request)
    defaults, _ = await ctx.run(fleet.set_defaults, ctx.store, doc)
    ctx.record(request, "set-defaults", "fleet")
    return JSONResponse(defaults.to_doc())


@router.get("/v1/fleet", operation_id="ExportFleet", responses={
    200: s.json_response(s.FLEET, "the whole fleet, as a fleet file"), **responses()})
async def export_fleet(ctx: Ctx) -> JSONResponse:
    return JSONResponse(await ctx.run(fleet.export_fleet, ctx.store))


@router.post("/v1/fleet", response_model=s.ImportResult, operation_id="ImportFleet",
             openapi_extra=s.json_body(s.FLEET, "a fleet file (JSON)"),
             responses=responses(400), summary="Import a fleet file, all of it or nothing")
async def import_fleet(request: Request, ctx: Ctx,
                       replace: bool = Query(False, description="delete the others")
                       ) -> s.ImportResult:
    doc = await read_json(request)
    version = await ctx.run(fleet.import_fleet, ctx.store, doc, replace)
    count = len(doc.get("instances") or []) if isinstance(doc, dict) else 0
    ctx.record(request, "import", "fleet", instances=count, replace=replace)
    return s.ImportResult(Version=version, Instances=count)
