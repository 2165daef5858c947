"""Bearer tokens for the API itself."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ecs_imds.control import schemas as s
from ecs_imds.control.context import Ctx
from ecs_imds.control.http import responses

router = APIRouter(tags=["API tokens"])


@router.post("/v1/api-tokens", status_code=201, response_model=s.ApiTokenOut,
             responses=responses(400), operation_id="CreateApiToken")
async def issue_api_token(body: s.ApiTokenIn, request: Request, ctx: Ctx) -> s.ApiTokenOut:
    token = ctx.authority.issue(body.Scope, body.Name)
    ctx.record(request, "issue-api-token", body.Name, scope=body.Scope)
    return s.ApiTokenOut(Name=body.Name, Scope=body.Scope, Token=token)
