"""The API's interactive documentation (Swagger UI), served from the installed package so
that it works with no network: the assets come from `fastapi-offline`, read once into
memory (serving them needs no thread)."""

from __future__ import annotations

import functools
from importlib.resources import files

from fastapi import APIRouter, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

router = APIRouter(include_in_schema=False)

DOCS = "/docs"
ASSETS = DOCS + "/assets/"
_TYPES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
          "favicon.png": "image/png"}


@functools.cache
def asset(name: str) -> bytes:
    return (files("fastapi_offline") / "static" / name).read_bytes()


@router.get(DOCS)
async def docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json", title="ecs-imds control plane",
        swagger_js_url=ASSETS + "swagger-ui-bundle.js",
        swagger_css_url=ASSETS + "swagger-ui.css", swagger_favicon_url=ASSETS + "favicon.png",
        swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None,
                               "displayOperationId": True})


@router.get(ASSETS + "{name}")
async def docs_asset(name: str) -> Response:
    if name not in _TYPES:
        raise HTTPException(404, "no such asset")
    return Response(asset(name), media_type=_TYPES[name],
                    headers={"Cache-Control": "public, max-age=86400"})
