"""Bearer tokens for the API itself: issue, list, revoke one, and rotate the secret that
signs them all (the answer to a leaked store or token file)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from ecs_imds.control import auth
from ecs_imds.control import schemas as s
from ecs_imds.control.context import Ctx, principal
from ecs_imds.control.http import responses
from ecs_imds.errors import ApiError
from ecs_imds.protocol.credentials import format_time

router = APIRouter(tags=["API tokens"])


@router.post("/v1/api-tokens", status_code=201, response_model=s.ApiTokenOut,
             responses=responses(400), operation_id="CreateApiToken")
async def issue_api_token(body: s.ApiTokenIn, request: Request, ctx: Ctx) -> s.ApiTokenOut:
    limit = ctx.settings.token_max_lifetime
    lifetime = body.Lifetime or ctx.settings.token_lifetime
    if lifetime > limit:
        raise ApiError(400, "InvalidParameter",
                       f"Lifetime: at most {limit} seconds (api.token-max-lifetime)")
    token, record = await ctx.run(auth.issue, ctx.store, ctx.authority, body.Scope,
                                  body.Name, lifetime, int(time.time()))
    await ctx.record(request, "issue-api-token", body.Name, scope=body.Scope, id=record.id,
               expires=format_time(record.expires))
    return s.ApiTokenOut(Id=record.id, Name=record.name,
                         Scope=record.scope, Expiration=format_time(record.expires),
                         Token=token)


def _info(record: auth.TokenRecord, secret_id: str, now: float) -> s.ApiTokenInfo:
    state = ("revoked" if record.revoked is not None else
             "rotated" if record.secret_id != secret_id else
             "expired" if now >= record.expires else "valid")
    return s.ApiTokenInfo(Id=record.id, Name=record.name, Scope=record.scope,
                          Issued=format_time(record.issued),
                          Expiration=format_time(record.expires),
                          Revoked=None if record.revoked is None else format_time(record.revoked),
                          State=state)


@router.get("/v1/api-tokens", response_model=s.ApiTokens, responses=responses(),
            operation_id="ListApiTokens")
async def list_api_tokens(ctx: Ctx) -> s.ApiTokens:
    found = await ctx.run(auth.records, ctx.store)
    now = time.time()
    return s.ApiTokens(Tokens=[_info(r, ctx.authority.secret_id, now) for r in found])


@router.delete("/v1/api-tokens/{token_id}", response_model=s.ApiTokenInfo,
               responses=responses(404), operation_id="RevokeApiToken")
async def revoke_api_token(token_id: str, request: Request, ctx: Ctx) -> s.ApiTokenInfo:
    """Refused by this server at once, by the others when their change feed hears of it."""
    record = await ctx.run(auth.revoke, ctx.store, token_id, int(time.time()))
    if record is None:
        raise ApiError(404, "InvalidApiTokenId.NotFound", f"no API token {token_id}")
    await ctx.run(ctx.reload)
    await ctx.record(request, "revoke-api-token", record.name, id=record.id)
    return _info(record, ctx.authority.secret_id, time.time())


@router.post("/v1/keys/api-secret/rotate", response_model=s.SecretRotated,
             responses=responses(), operation_id="RotateApiSecret", tags=["keys"])
async def rotate_api_secret(request: Request, ctx: Ctx) -> s.SecretRotated:
    """A new API secret: every token issued before is refused, by this server at once and
    by the others when their change feed hears of it. The caller gets a new admin token,
    and every server rewrites its host's admin token file."""
    version = await ctx.run(auth.rotate_secret, ctx.store)
    await ctx.run(ctx.reload)
    token, _ = await ctx.run(auth.issue, ctx.store, ctx.authority, "admin",
                             principal(request).name, ctx.settings.token_lifetime,
                             int(time.time()))
    written = await ctx.run(ctx.admin_token)
    await ctx.record(request, "rotate-api-secret", "api-tokens")
    return s.SecretRotated(Version=version, Token=token,
                           AdminTokenFile=None if written is None else str(written))
