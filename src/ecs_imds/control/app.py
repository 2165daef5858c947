"""The operators' REST API: instances, their metadata options, roles, user data, tags, spot
reclaims and system events, fleet defaults, keys, health and metrics.

Every route is a thin shell over `fleet` (validation, conditional writes) and the store.
Routes are plain functions: FastAPI runs them in its thread pool, so store access never
blocks the data plane's event loop.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ecs_imds.control import fleet
from ecs_imds.control import schemas as s
from ecs_imds.control.audit import Audit
from ecs_imds.control.auth import Authority, Principal
from ecs_imds.errors import ApiError, Conflict, InstanceNotFound, ValidationError
from ecs_imds.metrics import Metrics
from ecs_imds.protocol.credentials import BuiltinIssuer, Issuer, format_time
from ecs_imds.protocol.model import USER_DATA_LIMIT, FleetDefaults, Instance, effective
from ecs_imds.protocol.snapshot import Snapshot
from ecs_imds.store import Store, keys


@dataclass
class ControlContext:
    store: Store
    authority: Authority
    snapshot: Callable[[], Snapshot | None]
    metrics: Metrics
    audit: Audit
    issuer: Issuer | None = None


def _error(status: int, code: str, message: str,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"Code": code, "Message": message}, status_code=status,
                        headers=headers)


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {400: "invalid input (the field is named)", 401: "no valid token",
                 403: "a read-only token may not change anything",
                 404: "no such instance or item", 409: "the instance exists already",
                 412: "the instance changed since the ETag given in If-Match"}
    return {c: {"model": s.Error, "description": described[c]} for c in (401, 403, *codes)}


def _etag(revision: int) -> str:
    return f'"{revision}"'


def _if_match(request: Request) -> int | None:
    """The revision an If-Match names; None without the header or with `*`."""
    value = request.headers.get("if-match")
    if value is None or value.strip() == "*":
        return None
    tag = value.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise ApiError(412, "PreconditionFailed", "If-Match must be an ETag from this API")
    return int(tag)


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "InvalidParameter", "the body must be a JSON document") from None


def _instance_response(doc: dict[str, Any], revision: int, status: int = 200) -> JSONResponse:
    return JSONResponse(doc, status_code=status, headers={"ETag": _etag(revision)})


def create_app(ctx: ControlContext) -> FastAPI:
    app = FastAPI(title="ecs-imds control plane", version="1",
                  description="Operate the fleet an ECS instance metadata service serves. "
                              "Every request needs `Authorization: Bearer <token>`.")
    store = ctx.store

    # -- auth, errors ----------------------------------------------------------------------
    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Response:
        principal = ctx.authority.check(request.headers.get("authorization"))
        if principal is None:
            return _error(401, "Unauthorized", "a valid bearer token is required",
                          {"WWW-Authenticate": "Bearer"})
        if request.method not in ("GET", "HEAD") and not principal.may_write:
            return _error(403, "Forbidden", f"token {principal.name} is read-only")
        request.state.principal = principal
        response: Response = await call_next(request)
        return response

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(ValidationError)
    async def invalid(_: Request, exc: ValidationError) -> JSONResponse:
        return _error(400, "InvalidParameter", str(exc))

    @app.exception_handler(InstanceNotFound)
    async def not_found(_: Request, exc: InstanceNotFound) -> JSONResponse:
        return _error(404, "InvalidInstanceId.NotFound", f"no instance {exc}")

    @app.exception_handler(Conflict)
    async def conflict(_: Request, exc: Conflict) -> JSONResponse:
        if exc.current == 0:
            return _error(404, "InvalidInstanceId.NotFound", f"no instance {exc.instance_id}")
        return _error(412, "PreconditionFailed",
                      f"{exc.instance_id} changed; read it again (ETag {_etag(exc.current)})")

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
        where = ".".join(str(p) for p in first["loc"] if p not in ("body", "query", "path"))
        return _error(400, "InvalidParameter", f"{where}: {first['msg']}" if where
                      else str(first["msg"]))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "Error")
        return _error(exc.status_code, code, str(exc.detail))

    def who(request: Request) -> Principal:
        return request.state.principal  # type: ignore[no-any-return]

    def audit(request: Request, action: str, target: str, **details: Any) -> None:
        ctx.audit.record(who(request).name, action, target, **details)

    # -- health, metrics ---------------------------------------------------------------------
    @app.get("/healthz", response_model=s.Health, responses=_responses(), tags=["health"])
    def healthz() -> s.Health:
        return s.Health(status="ok")

    @app.get("/readyz", response_model=s.Ready, tags=["health"],
             responses={**_responses(), 503: {"model": s.Ready, "description": "not ready"}})
    def readyz() -> JSONResponse:
        snap = ctx.snapshot()
        ready = snap is not None and not snap.stale
        body = s.Ready(ready=ready, stale=bool(snap and snap.stale),
                       version=snap.version if snap else None,
                       age_seconds=round(time.time() - snap.built_at, 3) if snap else None,
                       instances=len(snap.by_id) if snap else 0)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["health"],
             responses={**_responses(), 200: {"content": {"text/plain": {}}}})
    def metrics() -> PlainTextResponse:
        body, content_type = ctx.metrics.render()
        return PlainTextResponse(body, media_type=content_type)

    # -- instances -----------------------------------------------------------------------------
    @app.get("/v1/instances", tags=["instances"], responses={
        200: s.json_response(s.INSTANCE_LIST, "a page of instances"), **_responses(400)})
    def list_instances(
        vpc_id: str | None = Query(None, alias="vpc-id"),
        region_id: str | None = Query(None, alias="region-id"),
        tag: str | None = Query(None, description="KEY or KEY=VALUE"),
        page_size: int = Query(100, alias="page-size", ge=1, le=1000),
        page_token: str | None = Query(None, alias="page-token"),
    ) -> JSONResponse:
        defaults = FleetDefaults.from_doc(store.load_defaults())
        key, has_value, value = (tag or "").partition("=")
        page: list[dict[str, Any]] = []
        more = None
        for stored in sorted(store.load_instances(), key=lambda x: x.instance_id):
            if page_token is not None and stored.instance_id <= page_token:
                continue
            inst = Instance.from_doc(stored.doc)
            if vpc_id is not None and inst.vpc_id != vpc_id:
                continue
            if region_id is not None and effective(inst, defaults).values.region_id != region_id:
                continue
            if tag is not None and (key not in inst.tags or
                                    (has_value and inst.tags[key] != value)):
                continue
            if len(page) == page_size:
                more = page[-1]["instance-id"]
                break
            page.append(stored.doc)
        return JSONResponse({"instances": page, "next-page-token": more})

    @app.post("/v1/instances", tags=["instances"], status_code=201,
              openapi_extra=s.json_body(s.INSTANCE, "the instance (fleet file form)"),
              responses={201: s.json_response(s.INSTANCE, "created; ETag is its revision"),
                         **_responses(400, 409)})
    async def create_instance(request: Request) -> JSONResponse:
        doc = await _json(request)
        try:
            inst, rev = await _run(fleet.write_instance, store, doc, 0)
        except Conflict as exc:
            raise ApiError(409, "InstanceAlreadyExists", f"{exc.instance_id} exists") from None
        audit(request, "create", inst.instance_id)
        return _instance_response(inst.to_doc(), rev, 201)

    instance_path = "/v1/instances/{instance_id}"

    @app.get(instance_path, tags=["instances"], responses={
        200: s.json_response(s.INSTANCE, "the instance; ETag is its revision"),
        **_responses(404)})
    def get_instance(instance_id: str) -> JSONResponse:
        stored = fleet.read_instance(store, instance_id)
        return _instance_response(stored.doc, stored.revision)

    @app.put(instance_path, tags=["instances"],
             openapi_extra=s.json_body(s.INSTANCE, "the whole instance"),
             responses={200: s.json_response(s.INSTANCE, "replaced"),
                        201: s.json_response(s.INSTANCE, "created"),
                        **_responses(400, 412)})
    async def replace_instance(instance_id: str, request: Request) -> JSONResponse:
        doc = await _json(request)
        if not isinstance(doc, dict) or doc.get("instance-id", instance_id) != instance_id:
            raise ApiError(400, "InvalidParameter", "instance-id: must match the path")
        doc = {"instance-id": instance_id, **doc}
        expect = _if_match(request)
        if expect is None:
            existing = store.load_instances([instance_id])
            expect = existing[0].revision if existing else 0
        inst, rev = await _run(fleet.write_instance, store, doc, expect)
        audit(request, "replace", instance_id)
        return _instance_response(inst.to_doc(), rev, 201 if expect == 0 else 200)

    @app.patch(instance_path, tags=["instances"],
               openapi_extra={"requestBody": {"required": True, "content": {
                   "application/merge-patch+json": {"schema": {"type": "object"}},
                   "application/json": {"schema": {"type": "object"}}}}},
               responses={200: s.json_response(s.INSTANCE, "changed"),
                          **_responses(400, 404, 412)})
    async def patch_instance(instance_id: str, request: Request) -> JSONResponse:
        patch = await _json(request)
        if not isinstance(patch, dict):
            raise ApiError(400, "InvalidParameter", "a merge patch must be a JSON object")
        inst, rev = await _run(fleet.modify_instance, store, instance_id,
                               lambda doc: merge_patch(doc, patch), _if_match(request))
        audit(request, "patch", instance_id, fields=sorted(patch))
        return _instance_response(inst.to_doc(), rev)

    @app.delete(instance_path, tags=["instances"], status_code=204,
                responses=_responses(404, 412))
    def delete_instance(instance_id: str, request: Request) -> Response:
        fleet.delete_instance(store, instance_id, _if_match(request))
        audit(request, "delete", instance_id)
        return Response(status_code=204)

    # -- per-instance items, with Alibaba's names ----------------------------------------------
    def change(request: Request, instance_id: str, action: str,
               mutate: Callable[[dict[str, Any]], None], **details: Any) -> Instance:
        inst, _ = fleet.modify_instance(store, instance_id, mutate, _if_match(request))
        audit(request, action, instance_id, **details)
        return inst

    @app.get(instance_path + "/metadata-options", tags=["metadata options"],
             response_model=s.MetadataOptionsOut, responses=_responses(404))
    def get_options(instance_id: str) -> s.MetadataOptionsOut:
        return _options_out(store, instance_id)

    @app.patch(instance_path + "/metadata-options", tags=["metadata options"],
               response_model=s.MetadataOptionsOut, responses=_responses(400, 404, 412),
               summary="ModifyInstanceMetadataOptions")
    def modify_options(instance_id: str, body: s.MetadataOptions,
                       request: Request) -> s.MetadataOptionsOut:
        changes = _option_changes(body)

        def mutate(doc: dict[str, Any]) -> None:
            doc["metadata-options"] = {**(doc.get("metadata-options") or {}), **changes}

        change(request, instance_id, "modify-metadata-options", mutate, options=changes)
        return _options_out(store, instance_id)

    @app.put(instance_path + "/ram-role", tags=["RAM role"], response_model=s.RamRoleOut,
             responses=_responses(400, 404, 412), summary="AttachInstanceRamRole")
    def attach_role(instance_id: str, body: s.RamRole, request: Request) -> s.RamRoleOut:
        change(request, instance_id, "attach-ram-role",
               lambda doc: doc.__setitem__("ram-role", body.RamRoleName), role=body.RamRoleName)
        return s.RamRoleOut(InstanceId=instance_id, RamRoleName=body.RamRoleName)

    @app.delete(instance_path + "/ram-role", tags=["RAM role"], response_model=s.RamRoleOut,
                responses=_responses(404, 412), summary="DetachInstanceRamRole")
    def detach_role(instance_id: str, request: Request) -> s.RamRoleOut:
        change(request, instance_id, "detach-ram-role", lambda doc: doc.pop("ram-role", None))
        return s.RamRoleOut(InstanceId=instance_id, RamRoleName=None)

    @app.get(instance_path + "/user-data", tags=["user data"], response_model=s.UserDataOut,
             responses=_responses(404))
    def get_user_data(instance_id: str) -> s.UserDataOut:
        inst = Instance.from_doc(fleet.read_instance(store, instance_id).doc)
        data = None if inst.user_data is None else base64.b64encode(inst.user_data).decode()
        return s.UserDataOut(InstanceId=instance_id, UserData=data)

    @app.put(instance_path + "/user-data", tags=["user data"], response_model=s.UserDataOut,
             responses=_responses(400, 404, 412))
    def set_user_data(instance_id: str, body: s.UserData, request: Request) -> s.UserDataOut:
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

        change(request, instance_id, "set-user-data", mutate, bytes=len(raw))
        return s.UserDataOut(InstanceId=instance_id, UserData=body.UserData)

    @app.delete(instance_path + "/user-data", tags=["user data"], response_model=s.UserDataOut,
                responses=_responses(404, 412))
    def delete_user_data(instance_id: str, request: Request) -> s.UserDataOut:
        def mutate(doc: dict[str, Any]) -> None:
            doc.pop("user-data", None)
            doc.pop("user-data-base64", None)

        change(request, instance_id, "delete-user-data", mutate)
        return s.UserDataOut(InstanceId=instance_id, UserData=None)

    @app.get(instance_path + "/tags", tags=["tags"], response_model=s.TagsOut,
             responses=_responses(404))
    def get_tags(instance_id: str) -> s.TagsOut:
        inst = Instance.from_doc(fleet.read_instance(store, instance_id).doc)
        return s.TagsOut(InstanceId=instance_id, Tags=inst.tags)

    @app.put(instance_path + "/tags", tags=["tags"], response_model=s.TagsOut,
             responses=_responses(400, 404, 412), summary="Replace all tags")
    def set_tags(instance_id: str, body: s.Tags, request: Request) -> s.TagsOut:
        inst = change(request, instance_id, "set-tags",
                      lambda doc: doc.__setitem__("tags", body.Tags), keys=sorted(body.Tags))
        return s.TagsOut(InstanceId=instance_id, Tags=inst.tags)

    @app.delete(instance_path + "/tags/{key}", tags=["tags"], response_model=s.TagsOut,
                responses=_responses(404, 412), summary="UntagResources (one key)")
    def delete_tag(instance_id: str, key: str, request: Request) -> s.TagsOut:
        def mutate(doc: dict[str, Any]) -> None:
            if key not in (doc.get("tags") or {}):
                raise ApiError(404, "InvalidTagKey.NotFound", f"no tag {key!r}")
            del doc["tags"][key]

        inst = change(request, instance_id, "delete-tag", mutate, key=key)
        return s.TagsOut(InstanceId=instance_id, Tags=inst.tags)

    @app.put(instance_path + "/spot", tags=["spot reclaim"], response_model=s.SpotOut,
             responses=_responses(400, 404, 412), summary="Schedule the spot reclaim")
    def schedule_spot(instance_id: str, body: s.SpotReclaim, request: Request) -> s.SpotOut:
        change(request, instance_id, "schedule-spot-reclaim",
               lambda doc: doc.__setitem__("spot-termination-time", body.TerminationTime),
               at=body.TerminationTime)
        return s.SpotOut(InstanceId=instance_id, TerminationTime=body.TerminationTime)

    @app.delete(instance_path + "/spot", tags=["spot reclaim"], response_model=s.SpotOut,
                responses=_responses(404, 412), summary="Cancel the spot reclaim")
    def cancel_spot(instance_id: str, request: Request) -> s.SpotOut:
        change(request, instance_id, "cancel-spot-reclaim",
               lambda doc: doc.pop("spot-termination-time", None))
        return s.SpotOut(InstanceId=instance_id, TerminationTime=None)

    @app.get(instance_path + "/events", tags=["system events"], response_model=s.SystemEvents,
             responses=_responses(404))
    def list_events(instance_id: str) -> s.SystemEvents:
        inst = Instance.from_doc(fleet.read_instance(store, instance_id).doc)
        return s.SystemEvents(InstanceId=instance_id,
                              Events=[s.SystemEventOut(**e.to_doc()) for e in inst.events])

    @app.post(instance_path + "/events", tags=["system events"], status_code=201,
              response_model=s.SystemEventOut, responses=_responses(400, 404, 412))
    def create_event(instance_id: str, body: s.SystemEventIn,
                     request: Request) -> s.SystemEventOut:
        event = {"EventId": body.EventId or f"e-{uuid.uuid4().hex[:20]}",
                 "EventType": body.EventType, "EventCycleStatus": body.EventCycleStatus,
                 "NotBefore": body.NotBefore or format_time(int(time.time())),
                 "Reason": body.Reason}

        def mutate(doc: dict[str, Any]) -> None:
            events = [e for e in doc.get("events") or [] if e["EventId"] != event["EventId"]]
            doc["events"] = [*events, event]

        change(request, instance_id, "create-event", mutate, event=event["EventId"])
        return s.SystemEventOut(**event)

    @app.delete(instance_path + "/events/{event_id}", tags=["system events"], status_code=204,
                responses=_responses(404, 412), summary="Cancel a system event")
    def cancel_event(instance_id: str, event_id: str, request: Request) -> Response:
        def mutate(doc: dict[str, Any]) -> None:
            events = doc.get("events") or []
            if not any(e["EventId"] == event_id for e in events):
                raise ApiError(404, "InvalidEventId.NotFound", f"no active event {event_id}")
            doc["events"] = [e for e in events if e["EventId"] != event_id]

        change(request, instance_id, "cancel-event", mutate, event=event_id)
        return Response(status_code=204)

    # -- the fleet as a whole --------------------------------------------------------------
    @app.get("/v1/defaults", tags=["fleet"], responses={
        200: s.json_response(s.DEFAULTS, "the fleet defaults"), **_responses()})
    def get_defaults() -> JSONResponse:
        return JSONResponse(FleetDefaults.from_doc(store.load_defaults()).to_doc())

    @app.put("/v1/defaults", tags=["fleet"],
             openapi_extra=s.json_body(s.DEFAULTS, "what every instance inherits"),
             responses={200: s.json_response(s.DEFAULTS, "replaced"), **_responses(400)})
    async def set_defaults(request: Request) -> JSONResponse:
        doc = await _json(request)
        defaults, _ = await _run(fleet.set_defaults, store, doc)
        audit(request, "set-defaults", "fleet")
        return JSONResponse(defaults.to_doc())

    @app.get("/v1/fleet", tags=["fleet"], responses={
        200: s.json_response(s.FLEET, "the whole fleet, as a fleet file"), **_responses()})
    def export_fleet() -> JSONResponse:
        return JSONResponse(fleet.export_fleet(store))

    @app.post("/v1/fleet", tags=["fleet"], response_model=s.ImportResult,
              openapi_extra=s.json_body(s.FLEET, "a fleet file (JSON)"),
              responses=_responses(400), summary="Import a fleet file, all of it or nothing")
    async def import_fleet(request: Request,
                           replace: bool = Query(False, description="delete the others")
                           ) -> s.ImportResult:
        doc = await _json(request)
        version = await _run(fleet.import_fleet, store, doc, replace)
        count = len(doc.get("instances") or []) if isinstance(doc, dict) else 0
        audit(request, "import", "fleet", instances=count, replace=replace)
        return s.ImportResult(Version=version, Instances=count)

    # -- keys, identity, credentials, API tokens ------------------------------------------
    @app.post("/v1/keys/token/rotate", tags=["keys"], response_model=s.TokenKeyOut,
              responses=_responses())
    def rotate_token_key(request: Request) -> s.TokenKeyOut:
        key = keys.rotate_token_key(store)
        audit(request, "rotate-token-key", "key-ring", kid=key.kid)
        return s.TokenKeyOut(KeyId=key.kid, KeyIds=sorted(k.kid for k in store.token_keys()))

    @app.post("/v1/keys/identity/rotate", tags=["keys"], response_model=s.Rotated,
              responses=_responses())
    def rotate_identity(request: Request) -> s.Rotated:
        version = keys.rotate_identity(store)
        audit(request, "rotate-identity-key", "identity")
        return s.Rotated(Version=version)

    @app.get("/v1/identity/certificate", tags=["keys"], response_class=PlainTextResponse,
             responses={**_responses(), 200: {"content": {"application/x-pem-file": {}}}})
    def identity_certificate() -> Response:
        return Response(keys.identity_signer(store).cert_pem,
                        media_type="application/x-pem-file")

    @app.post("/v1/credentials/verify", tags=["keys"], response_model=s.CredentialVerdict,
              responses=_responses(400, 404))
    def verify_credential(body: s.CredentialIn) -> s.CredentialVerdict:
        if not isinstance(ctx.issuer, BuiltinIssuer):
            raise ApiError(400, "InvalidParameter",
                           "only credentials of the builtin issuer can be verified")
        verdict = ctx.issuer.verify(body.AccessKeyId, body.SecurityToken, time.time())
        if verdict is None:
            raise ApiError(404, "InvalidCredential.NotFound", "not a credential of this fleet")
        return s.CredentialVerdict(InstanceId=verdict.instance_id, RoleName=verdict.role,
                                   LastUpdated=format_time(verdict.issued),
                                   Expiration=format_time(verdict.expires),
                                   Valid=verdict.valid)

    @app.post("/v1/api-tokens", tags=["keys"], status_code=201, response_model=s.ApiTokenOut,
              responses=_responses(400))
    def issue_api_token(body: s.ApiTokenIn, request: Request) -> s.ApiTokenOut:
        token = ctx.authority.issue(body.Scope, body.Name)
        audit(request, "issue-api-token", body.Name, scope=body.Scope)
        return s.ApiTokenOut(Name=body.Name, Scope=body.Scope, Token=token)

    return app


async def _run(func: Callable[..., Any], *args: Any) -> Any:
    """Blocking store work from an async route, off the event loop."""
    return await run_in_threadpool(func, *args)


_OPTION_FIELDS = (
    ("HttpEndpoint", "http-endpoint", ("enabled", "disabled"), "InvalidHttpEndpoint"),
    ("HttpTokens", "http-tokens", ("optional", "required"), "InvalidHttpTokens"),
    ("InstanceMetadataTags", "instance-metadata-tags", ("enabled", "disabled"),
     "InvalidInstanceMetadataTags"),
)


def _option_changes(body: s.MetadataOptions) -> dict[str, Any]:
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


def _options_out(store: Store, instance_id: str) -> s.MetadataOptionsOut:
    inst = Instance.from_doc(fleet.read_instance(store, instance_id).doc)
    opts = effective(inst, FleetDefaults.from_doc(store.load_defaults())).options
    return s.MetadataOptionsOut(InstanceId=instance_id, HttpEndpoint=opts.http_endpoint,
                                HttpTokens=opts.http_tokens,
                                HttpPutResponseHopLimit=opts.hop_limit,
                                InstanceMetadataTags=opts.instance_metadata_tags)


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7396 JSON merge patch, in place: null deletes, objects merge, the rest replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_patch(target[key], value)
        else:
            target[key] = value
