"""The fleet's keys: the token key ring, the identity signing key and its certificate, and
checking whose a builtin RAM credential is."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from ecs_imds.control import schemas as s
from ecs_imds.control.context import Ctx
from ecs_imds.control.http import responses
from ecs_imds.errors import ApiError
from ecs_imds.protocol.credentials import BuiltinIssuer, format_time
from ecs_imds.store import Store, keys

router = APIRouter(tags=["keys"])


def rotate_token_key(store: Store) -> s.TokenKeyOut:
    key = keys.rotate_token_key(store)
    return s.TokenKeyOut(KeyId=key.kid, KeyIds=sorted(k.kid for k in store.token_keys()))


@router.post("/v1/keys/token/rotate", response_model=s.TokenKeyOut, responses=responses(),
             operation_id="RotateTokenKey")
async def rotate_token(request: Request, ctx: Ctx) -> s.TokenKeyOut:
    out = await ctx.run(rotate_token_key, ctx.store)
    await ctx.record(request, "rotate-token-key", "key-ring", kid=out.KeyId)
    return out


@router.post("/v1/keys/identity/rotate", response_model=s.Rotated, responses=responses(),
             operation_id="RotateIdentityKey")
async def rotate_identity(request: Request, ctx: Ctx) -> s.Rotated:
    version = await ctx.run(keys.rotate_identity, ctx.store)
    await ctx.record(request, "rotate-identity-key", "identity")
    return s.Rotated(Version=version)


def certificate_of(store: Store) -> bytes:
    return keys.identity_signer(store).cert_pem


@router.get("/v1/identity/certificate", response_class=PlainTextResponse,
            operation_id="DescribeIdentityCertificate",
            responses={**responses(text=True), 200: {"content": {"application/x-pem-file": {}}}})
async def identity_certificate(ctx: Ctx) -> Response:
    return Response(await ctx.run(certificate_of, ctx.store),
                    media_type="application/x-pem-file")


@router.post("/v1/credentials/verify", response_model=s.CredentialVerdict,
             responses=responses(400, 404), operation_id="VerifyCredential")
async def verify_credential(body: s.CredentialIn, ctx: Ctx) -> s.CredentialVerdict:
    issuer = ctx.issuer()
    if not isinstance(issuer, BuiltinIssuer):
        raise ApiError(400, "InvalidParameter",
                       "only credentials of the builtin issuer can be verified")
    verdict = issuer.verify(body.AccessKeyId, body.SecurityToken, time.time())
    if verdict is None:
        raise ApiError(404, "InvalidCredential.NotFound", "not a credential of this fleet")
    return s.CredentialVerdict(InstanceId=verdict.instance_id, RoleName=verdict.role,
                               LastUpdated=format_time(verdict.issued),
                               Expiration=format_time(verdict.expires), Valid=verdict.valid)


@router.post("/v1/keys/credentials/rotate", response_model=s.Rotated, responses=responses(),
             operation_id="RotateCredentialSecret")
async def rotate_credentials(request: Request, ctx: Ctx) -> s.Rotated:
    """A new secret for the builtin issuer: every instance is served new RAM credentials at
    once, and the old ones no longer verify (they are no credentials of this fleet)."""
    version = await ctx.run(keys.rotate_credentials, ctx.store)
    await ctx.run(ctx.reload)
    await ctx.record(request, "rotate-credential-secret", "credentials")
    return s.Rotated(Version=version)
