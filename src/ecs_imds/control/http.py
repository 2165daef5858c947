"""The HTTP conventions every route shares: Alibaba-shaped JSON errors, ETags and If-Match,
JSON bodies, and the mapping from the exceptions of `errors` to statuses.

Every error a client gets is `{"Code": ..., "Message": ...}` with a status: never a
traceback, never `text/plain`. Messages name the field at fault, never a secret.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ecs_imds.control import jsonbody
from ecs_imds.control import schemas as s
from ecs_imds.errors import (
    ApiError,
    Conflict,
    InstanceNotFound,
    StoreUnavailable,
    ValidationError,
)

log = logging.getLogger("ecs_imds.control")

_DESCRIBED = {400: "invalid input (the field is named)", 401: "no valid token",
              403: "a read-only token may not change anything",
              404: "no such instance or item",
              409: "the instance exists already, or an import with this key is running",
              412: "the instance changed since the ETag given in If-Match",
              422: "the idempotency key was used for another request"}


def error(status: int, code: str, message: str,
          headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"Code": code, "Message": message}, status_code=status,
                        headers=headers)


def responses(*codes: int, text: bool = False) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route that needs a token, for the OpenAPI document. Errors
    are JSON even where the route's own answer is `text` (FastAPI would say otherwise)."""
    if text:
        error_json = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        return {c: {"description": _DESCRIBED[c], "content": error_json}
                for c in (401, 403, *codes)}
    return {c: {"model": s.Error, "description": _DESCRIBED[c]} for c in (401, 403, *codes)}


def etag(revision: int) -> str:
    return f'"{revision}"'


def if_match(request: Request) -> int | None:
    """The revision an If-Match names; None without the header or with `*`."""
    value = request.headers.get("if-match")
    if value is None or value.strip() == "*":
        return None
    tag = value.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise ApiError(412, "PreconditionFailed", "If-Match must be an ETag from this API")
    return int(tag)


async def read_json(request: Request) -> Any:
    """The request's body as a JSON document, or a 400."""
    try:
        return await jsonbody.parse(await request.body())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "InvalidParameter", "the body must be a JSON document") from None


def instance_response(doc: dict[str, Any], revision: int, status: int = 200) -> JSONResponse:
    return JSONResponse(doc, status_code=status, headers={"ETag": etag(revision)})


# Errors of the store's drivers that mean "away for now" (down, unreachable, hung past its
# timeouts, locked): the client may try again; nothing in the answer says more.
STORE_AWAY: tuple[type[BaseException], ...] = (
    StoreUnavailable, psycopg.OperationalError, sqlite3.OperationalError)


def error_of(exc: BaseException) -> JSONResponse:
    """The answer for an exception a route raised: a status and a JSON error, for the
    exceptions of `errors`, the store being away (503), and anything else (500, the
    traceback logged, never sent)."""
    if isinstance(exc, ApiError):
        return error(exc.status, exc.code, exc.message, exc.headers)
    if isinstance(exc, ValidationError):
        return error(400, "InvalidParameter", str(exc))
    if isinstance(exc, InstanceNotFound):
        return error(404, "InvalidInstanceId.NotFound", f"no instance {exc}")
    if isinstance(exc, Conflict):
        if exc.current == 0:
            return error(404, "InvalidInstanceId.NotFound", f"no instance {exc.instance_id}")
        return error(412, "PreconditionFailed",
                     f"{exc.instance_id} changed; read it again (ETag {etag(exc.current)})")
    if isinstance(exc, STORE_AWAY):
        log.warning("store unavailable for an API request: %s", exc)
        return error(503, "ServiceUnavailable", "the store cannot be reached now; try again",
                     {"Retry-After": "5"})
    log.error("API request failed", exc_info=exc)
    return error(500, "InternalError", "the server failed; its log says why")


def install_error_handlers(app: FastAPI) -> None:
    """Every exception a route may raise, as a status and a JSON error."""

    async def handle(_: Request, exc: Exception) -> JSONResponse:
        return error_of(exc)

    for kind in (ApiError, ValidationError, InstanceNotFound, Conflict, *STORE_AWAY,
                 Exception):
        app.add_exception_handler(kind, handle)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
        where = ".".join(str(p) for p in first["loc"] if p not in ("body", "query", "path"))
        return error(400, "InvalidParameter", f"{where}: {first['msg']}" if where
                     else str(first["msg"]))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "Error")
        return error(exc.status_code, code, str(exc.detail))
