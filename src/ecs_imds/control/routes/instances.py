"""Instances as whole documents (the fleet file's form): list, create, read, replace, merge
patch, delete. Every instance carries an ETag (its revision); a write with If-Match happens
only at that revision, so two operators never silently overwrite each other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from ecs_imds.control import fleet
from ecs_imds.control import schemas as s
from ecs_imds.control.context import ControlContext, Ctx
from ecs_imds.control.http import if_match, instance_response, read_json, responses
from ecs_imds.errors import ApiError, Conflict
from ecs_imds.protocol.model import FleetDefaults, Instance, effective
from ecs_imds.store import Store

router = APIRouter(tags=["instances"])
INSTANCE_PATH = "/v1/instances/{instance_id}"


@dataclass(frozen=True, slots=True)
class Filters:
    vpc_id: str | None
    region_id: str | None
    tag: str | None
    page_size: int
    page_token: str | None


SCAN_LIMIT = 1000  # instances examined for one page: a page costs the same at any fleet size


def page_of(store: Store, f: Filters, scan_limit: int = SCAN_LIMIT) -> dict[str, Any]:
    """One page of instances in id order, after `page_token`, matching every filter. Where
    filters match few, a page holds fewer than `page_size` (at worst none) once `scan_limit`
    instances were examined; `next-page-token` is null only at the end of the fleet."""
    defaults = FleetDefaults.from_doc(store.load_defaults()) if f.region_id else None
    key, has_value, value = (f.tag or "").partition("=")

    def matches(doc: dict[str, Any]) -> bool:
        inst = Instance.from_doc(doc)
        return ((f.vpc_id is None or inst.vpc_id == f.vpc_id)
                and (defaults is None
                     or effective(inst, defaults).values.region_id == f.region_id)
                and (f.tag is None or (key in inst.tags
                                       and (not has_value or inst.tags[key] == value))))

    filtered = f.vpc_id is not None or defaults is not None or f.tag is not None
    page: list[dict[str, Any]] = []
    after, scanned = f.page_token, 0
    while scanned < scan_limit:
        batch = store.instances_after(after, min(scan_limit - scanned, f.page_size + 1))
        for stored in batch:
            if not filtered or matches(stored.doc):
                if len(page) == f.page_size:  # one more exists: the page ends before it
                    return {"instances": page, "next-page-token": after}
                page.append(stored.doc)
            after, scanned = stored.instance_id, scanned + 1
        if len(batch) < f.page_size + 1 and scanned < scan_limit:
            return {"instances": page, "next-page-token": None}
    return {"instances": page, "next-page-token": after}


@router.get("/v1/instances", operation_id="DescribeInstances", responses={
    200: s.json_response(s.INSTANCE_LIST, "a page of instances"), **responses(400)})
async def list_instances(
    ctx: Ctx,
    vpc_id: str | None = Query(None, alias="vpc-id"),
    region_id: str | None = Query(None, alias="region-id"),
    tag: str | None = Query(None, description="KEY or KEY=VALUE"),
    page_size: int = Query(100, alias="page-size", ge=1, le=1000),
    page_token: str | None = Query(None, alias="page-token"),
) -> JSONResponse:
    filters = Filters(vpc_id, region_id, tag, page_size, page_token)
    return JSONResponse(await ctx.run(page_of, ctx.store, filters))


@router.post("/v1/instances", status_code=201, operation_id="CreateInstance",
             openapi_extra=s.json_body(s.INSTANCE, "the instance (fleet file form)"),
             responses={201: s.json_response(s.INSTANCE, "created; ETag is its revision"),
                        **responses(400, 409)})
async def create_instance(request: Request, ctx: Ctx) -> JSONResponse:
    doc = await read_json(request)
    try:
        inst, rev = await ctx.run(fleet.write_instance, ctx.store, doc, 0)
    except Conflict as exc:
        raise ApiError(409, "InstanceAlreadyExists", f"{exc.instance_id} exists") from None
    await ctx.record(request, "create", inst.instance_id)
    return instance_response(inst.to_doc(), rev, 201)


@router.get(INSTANCE_PATH, operation_id="DescribeInstance", responses={
    200: s.json_response(s.INSTANCE, "the instance; ETag is its revision"), **responses(404)})
async def get_instance(instance_id: str, ctx: Ctx) -> JSONResponse:
    stored = await ctx.run(fleet.read_instance, ctx.store, instance_id)
    return instance_response(stored.doc, stored.revision)


def replace_or_create(store: Store, doc: dict[str, Any], expect: int | None
                      ) -> tuple[Instance, int, bool]:
    """Write the whole instance; without `expect`, at whatever revision it has now.
    Returns it, its revision, and whether it was created."""
    if expect is None:
        existing = store.load_instances([doc["instance-id"]])
        expect = existing[0].revision if existing else 0
    inst, rev = fleet.write_instance(store, doc, expect)
    return inst, rev, expect == 0


@router.put(INSTANCE_PATH, operation_id="ReplaceInstance",
            openapi_extra=s.json_body(s.INSTANCE, "the whole instance"),
            responses={200: s.json_response(s.INSTANCE, "replaced"),
                       201: s.json_response(s.INSTANCE, "created"),
                       **responses(400, 412)})
async def replace_instance(instance_id: str, request: Request, ctx: Ctx) -> JSONResponse:
    doc = await read_json(request)
    if not isinstance(doc, dict) or doc.get("instance-id", instance_id) != instance_id:
        raise ApiError(400, "InvalidParameter", "instance-id: must match the path")
    doc = {"instance-id": instance_id, **doc}
    inst, rev, created = await ctx.run(replace_or_create, ctx.store, doc, if_match(request))
    await ctx.record(request, "replace", instance_id)
    return instance_response(inst.to_doc(), rev, 201 if created else 200)


@router.patch(INSTANCE_PATH, operation_id="ModifyInstance",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/merge-patch+json": {"schema": {"type": "object"}},
                  "application/json": {"schema": {"type": "object"}}}}},
              responses={200: s.json_response(s.INSTANCE, "changed"),
                         **responses(400, 404, 412)})
async def patch_instance(instance_id: str, request: Request, ctx: Ctx) -> JSONResponse:
    patch = await read_json(request)
    if not isinstance(patch, dict):
        raise ApiError(400, "InvalidParameter", "a merge patch must be a JSON object")
    expect = if_match(request)
    inst, rev = await ctx.audited(request, "patch", instance_id, lambda: fleet.modify_instance(
        ctx.store, instance_id, lambda doc: fleet.merge_patch(doc, patch), expect),
        fields=sorted(patch))
    return instance_response(inst.to_doc(), rev)


@router.delete(INSTANCE_PATH, status_code=204, operation_id="DeleteInstance",
               responses=responses(404, 412))
async def delete_instance(instance_id: str, request: Request, ctx: Ctx) -> Response:
    await ctx.run(fleet.delete_instance, ctx.store, instance_id, if_match(request))
    await ctx.record(request, "delete", instance_id)
    return Response(status_code=204)


async def change(ctx: ControlContext, request: Request, instance_id: str, action: str,
                 mutate: Callable[[dict[str, Any]], None], **details: Any) -> Instance:
    """Change one instance with `mutate` (at the If-Match revision, when given) and audit it:
    what every per-item route (options, role, user data, tags, spot, events) does."""
    expect = if_match(request)
    inst, _ = await ctx.audited(request, action, instance_id, lambda: fleet.modify_instance(
        ctx.store, instance_id, mutate, expect), **details)
    return inst
