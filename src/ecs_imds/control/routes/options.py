"""An instance's metadata options (SPEC §6), with Alibaba's names and error codes:
DescribeInstanceMetadataOptions and ModifyInstanceMetadataOptions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ecs_imds.control import fleet
from ecs_imds.control import schemas as s
from ecs_imds.control.context import Ctx
from ecs_imds.control.http import if_match, responses
from ecs_imds.control.routes.instances import INSTANCE_PATH
from ecs_imds.errors import ApiError
from ecs_imds.protocol.model import FleetDefaults, Instance, effective
from ecs_imds.store import Store

router = APIRouter(tags=["metadata options"])
OPTIONS_PATH = INSTANCE_PATH + "/metadata-options"

_OPTION_FIELDS = (
    ("HttpEndpoint", "http-endpoint", ("enabled", "disabled"), "InvalidHttpEndpoint"),
    ("HttpTokens", "http-tokens", ("optional", "required"), "InvalidHttpTokens"),
    ("InstanceMetadataTags", "instance-metadata-tags", ("enabled", "disabled"),
     "InvalidInstanceMetadataTags"),
)


def option_changes(body: s.MetadataOptions) -> dict[str, Any]:
    """ModifyInstanceMetadataOptions' parameters → our document, with Alibaba's error codes."""
    changes: dict[str, Any] = {}
    for name, key, allowed, code in _OPTION_FIELDS:
        value = getattr(body, name)
        if value is not None:
            if value not in allowed:
                raise ApiError(400, f"{code}.NotSupported",
                               f"{name}: must be {' or '.join(allowed)}")
            changes[key] = value
    hops = body.HttpPutResponseHopLimit
    if hops is not None:
        if not 1 <= hops <= 64:
            raise ApiError(400, "InvalidHttpPutResponseHopLimit.NotSupported",
                           "HttpPutResponseHopLimit: must be from 1 to 64")
        changes["http-put-response-hop-limit"] = hops
    return changes


def options_of(store: Store, instance_id: str) -> s.MetadataOptionsOut:
    """The options the instance is served with: its own over the fleet defaults."""
    return served_options(store, Instance.from_doc(fleet.read_instance(store, instance_id).doc))


def served_options(store: Store, inst: Instance) -> s.MetadataOptionsOut:
    """The options `inst` is served with under the stored fleet defaults."""
    opts = effective(inst, FleetDefaults.from_doc(store.load_defaults())).options
    return s.MetadataOptionsOut(InstanceId=inst.instance_id, HttpEndpoint=opts.http_endpoint,
                                HttpTokens=opts.http_tokens,
                                HttpPutResponseHopLimit=opts.hop_limit,
                                InstanceMetadataTags=opts.instance_metadata_tags)


@router.get(OPTIONS_PATH, response_model=s.MetadataOptionsOut, responses=responses(404),
            operation_id="DescribeInstanceMetadataOptions")
async def get_options(instance_id: str, ctx: Ctx) -> s.MetadataOptionsOut:
    return await ctx.run(options_of, ctx.store, instance_id)


@router.patch(OPTIONS_PATH, response_model=s.MetadataOptionsOut,
              responses=responses(400, 404, 412), operation_id="ModifyInstanceMetadataOptions",
              summary="ModifyInstanceMetadataOptions")
async def modify_options(instance_id: str, body: s.MetadataOptions, request: Request,
                         ctx: Ctx) -> s.MetadataOptionsOut:
    changes = option_changes(body)

    def mutate(doc: dict[str, Any]) -> None:
        doc["metadata-options"] = {**(doc.get("metadata-options") or {}), **changes}

    expect = if_match(request)

    def work() -> s.MetadataOptionsOut:  # the change and its answer, in one hand-off
        inst, _ = fleet.modify_instance(ctx.store, instance_id, mutate, expect)
        return served_options(ctx.store, inst)

    return await ctx.audited(request, "modify-metadata-options", instance_id, work,
                             options=changes)
