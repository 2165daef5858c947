"""Per-instance items with Alibaba's names: the RAM role, user data, tags, the spot reclaim
and active system events. Each change is a read-modify-write of the instance (see
`instances.change`), validated like any other write."""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ecs_imds.control import fleet
from ecs_imds.control import schemas as s
from ecs_imds.control.context import Ctx
from ecs_imds.control.http import responses
from ecs_imds.control.routes.instances import INSTANCE_PATH, change
from ecs_imds.errors import ApiError
from ecs_imds.protocol.credentials import format_time
from ecs_imds.protocol.model import USER_DATA_LIMIT, Instance
from ecs_imds.store import Store

router = APIRouter()


def instance_of(store: Store, instance_id: str) -> Instance:
    return Instance.from_doc(fleet.read_instance(store, instance_id).doc)


# -- RAM role ---------------------------------------------------------------------------------
@router.put(INSTANCE_PATH + "/ram-role", tags=["RAM role"], response_model=s.RamRoleOut,
            responses=responses(400, 404, 412), operation_id="AttachInstanceRamRole",
            summary="AttachInstanceRamRole")
async def attach_role(instance_id: str, body: s.RamRole, request: Request,
                      ctx: Ctx) -> s.RamRoleOut:
    await change(ctx, request, instance_id, "attach-ram-role",
                 lambda doc: doc.__setitem__("ram-role", body.RamRoleName),
                 role=body.RamRoleName)
    return s.RamRoleOut(InstanceId=instance_id, RamRoleName=body.RamRoleName)


@router.delete(INSTANCE_PATH + "/ram-role", tags=["RAM role"], response_model=s.RamRoleOut,
               responses=responses(404, 412), operation_id="DetachInstanceRamRole",
               summary="DetachInstanceRamRole")
async def detach_role(instance_id: str, request: Request, ctx: Ctx) -> s.RamRoleOut:
    await change(ctx, request, instance_id, "detach-ram-role",
                 lambda doc: doc.pop("ram-role", None))
    return s.RamRoleOut(InstanceId=instance_id, RamRoleName=None)


# -- user data --------------------------------------------------------------------------------
USER_DATA_PATH = INSTANCE_PATH + "/user-data"


@router.get(USER_DATA_PATH, tags=["user data"], response_model=s.UserDataOut,
            responses=responses(404), operation_id="DescribeUserData")
async def get_user_data(instance_id: str, ctx: Ctx) -> s.UserDataOut:
    inst = await ctx.run(instance_of, ctx.store, instance_id)
    data = None if inst.user_data is None else base64.b64encode(inst.user_data).decode()
    return s.UserDataOut(InstanceId=instance_id, UserData=data)


@router.put(USER_DATA_PATH, tags=["user data"], response_model=s.UserDataOut,
            responses=responses(400, 404, 412), operation_id="ModifyUserData")
async def set_user_data(instance_id: str, body: s.UserData, request: Request,
                        ctx: Ctx) -> s.UserDataOut:
    try:
        raw = base64.b64decode(body.UserData, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "InvalidUserData.Base64FormatInvalid",
                       "UserData: not valid base64") from None
    if len(raw) > USER_DATA_LIMIT:
        raise ApiError(400, "InvalidUserData.SizeExceeded",
                       f"UserData: {len(raw)} bytes, more than {USER_DATA_LIMIT}")

    def mutate(doc: dict[str, Any]) -> None:
        doc.pop("user-data", None)
        doc["user-data-base64"] = body.UserData

    await change(ctx, request, instance_id, "set-user-data", mutate, bytes=len(raw))
    return s.UserDataOut(InstanceId=instance_id, UserData=body.UserData)


@router.delete(USER_DATA_PATH, tags=["user data"], response_model=s.UserDataOut,
               responses=responses(404, 412), operation_id="DeleteUserData")
async def delete_user_data(instance_id: str, request: Request, ctx: Ctx) -> s.UserDataOut:
    def mutate(doc: dict[str, Any]) -> None:
        doc.pop("user-data", None)
        doc.pop("user-data-base64", None)

    await change(ctx, request, instance_id, "delete-user-data", mutate)
    return s.UserDataOut(InstanceId=instance_id, UserData=None)


# -- tags ------------------------------------------------------------------------------------
@router.get(INSTANCE_PATH + "/tags", tags=["tags"], response_model=s.TagsOut,
            responses=responses(404), operation_id="ListTagResources")
async def get_tags(instance_id: str, ctx: Ctx) -> s.TagsOut:
    inst = await ctx.run(instance_of, ctx.store, instance_id)
    return s.TagsOut(InstanceId=instance_id, Tags=inst.tags)


@router.put(INSTANCE_PATH + "/tags", tags=["tags"], response_model=s.TagsOut,
            responses=responses(400, 404, 412), summary="Replace all tags",
            operation_id="ReplaceTags")
async def set_tags(instance_id: str, body: s.Tags, request: Request, ctx: Ctx) -> s.TagsOut:
    inst = await change(ctx, request, instance_id, "set-tags",
                        lambda doc: doc.__setitem__("tags", body.Tags), keys=sorted(body.Tags))
    return s.TagsOut(InstanceId=instance_id, Tags=inst.tags)


@router.delete(INSTANCE_PATH + "/tags/{key}", tags=["tags"], response_model=s.TagsOut,
               responses=responses(404, 412), summary="UntagResources (one key)",
               operation_id="UntagResources")
async def delete_tag(instance_id: str, key: str, request: Request, ctx: Ctx) -> s.TagsOut:
    def mutate(doc: dict[str, Any]) -> None:
        if key not in (doc.get("tags") or {}):
            raise ApiError(404, "InvalidTagKey.NotFound", f"no tag {key!r}")
        del doc["tags"][key]

    inst = await change(ctx, request, instance_id, "delete-tag", mutate, key=key)
    return s.TagsOut(InstanceId=instance_id, Tags=inst.tags)


# -- spot reclaim ----------------------------------------------------------------------------
@router.put(INSTANCE_PATH + "/spot", tags=["spot reclaim"], response_model=s.SpotOut,
            responses=responses(400, 404, 412), summary="Schedule the spot reclaim",
            operation_id="ScheduleSpotReclaim")
async def schedule_spot(instance_id: str, body: s.SpotReclaim, request: Request,
                        ctx: Ctx) -> s.SpotOut:
    await change(ctx, request, instance_id, "schedule-spot-reclaim",
                 lambda doc: doc.__setitem__("spot-termination-time", body.TerminationTime),
                 at=body.TerminationTime)
    return s.SpotOut(InstanceId=instance_id, TerminationTime=body.TerminationTime)


@router.delete(INSTANCE_PATH + "/spot", tags=["spot reclaim"], response_model=s.SpotOut,
               responses=responses(404, 412), summary="Cancel the spot reclaim",
               operation_id="CancelSpotReclaim")
async def cancel_spot(instance_id: str, request: Request, ctx: Ctx) -> s.SpotOut:
    await change(ctx, request, instance_id, "cancel-spot-reclaim",
                 lambda doc: doc.pop("spot-termination-time", None))
    return s.SpotOut(InstanceId=instance_id, TerminationTime=None)


# -- system events ---------------------------------------------------------------------------
EVENTS_PATH = INSTANCE_PATH + "/events"


@router.get(EVENTS_PATH, tags=["system events"], response_model=s.SystemEvents,
            responses=responses(404), operation_id="DescribeSystemEvents")
async def list_events(instance_id: str, ctx: Ctx) -> s.SystemEvents:
    inst = await ctx.run(instance_of, ctx.store, instance_id)
    return s.SystemEvents(InstanceId=instance_id,
                          Events=[s.SystemEventOut(**e.to_doc()) for e in inst.events])


@router.post(EVENTS_PATH, tags=["system events"], status_code=201,
             response_model=s.SystemEventOut, responses=responses(400, 404, 412),
             operation_id="CreateSystemEvent")
async def create_event(instance_id: str, body: s.SystemEventIn, request: Request,
                       ctx: Ctx) -> s.SystemEventOut:
    event = {"EventId": body.EventId or f"e-{uuid.uuid4().hex[:20]}",
             "EventType": body.EventType, "EventCycleStatus": body.EventCycleStatus,
             "NotBefore": body.NotBefore or format_time(int(time.time())),
             "Reason": body.Reason}

    def mutate(doc: dict[str, Any]) -> None:
        events = [e for e in doc.get("events") or [] if e["EventId"] != event["EventId"]]
        doc["events"] = [*events, event]

    await change(ctx, request, instance_id, "create-event", mutate, event=event["EventId"])
    return s.SystemEventOut(**event)


@router.delete(EVENTS_PATH + "/{event_id}", tags=["system events"], status_code=204,
               responses=responses(404, 412), summary="Cancel a system event",
               operation_id="CancelSystemEvent")
async def cancel_event(instance_id: str, event_id: str, request: Request,
                       ctx: Ctx) -> Response:
    def mutate(doc: dict[str, Any]) -> None:
        events = doc.get("events") or []
        if not any(e["EventId"] == event_id for e in events):
            raise ApiError(404, "InvalidEventId.NotFound", f"no active event {event_id}")
        doc["events"] = [e for e in events if e["EventId"] != event_id]

    await change(ctx, request, instance_id, "cancel-event", mutate, event=event_id)
    return Response(status_code=204)
