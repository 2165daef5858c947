"""The console's page and its assets, shipped in the package and served from memory.

They hold no data and no secret, so they are served without a bearer token (a browser
cannot attach one to a navigation); everything the page shows it fetches from `/v1` with the
token the operator signed in with, kept in the tab's sessionStorage and sent as a header —
never a cookie, so no other site can make a browser act with it (no CSRF to defend).

Only the files named in `ASSETS` are served, each with a Content-Security-Policy that
allows scripts, styles and connections from this origin alone: no inline script or style,
no framing, no form posting anywhere.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

PREFIX = "/console"

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "fleet.js": "text/javascript; charset=utf-8",
    "instance.js": "text/javascript; charset=utf-8",
    "change.js": "text/javascript; charset=utf-8",
    "audit.js": "text/javascript; charset=utf-8",
}

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


_STATIC = files("ecs_imds.control.console") / "static"
_BODIES = {name: (_STATIC / name).read_bytes() for name in ASSETS}

router = APIRouter(prefix=PREFIX, include_in_schema=False)


def _asset(name: str) -> Response:
    return Response(_BODIES[name], media_type=ASSETS[name], headers=HEADERS)


@router.get("")
async def to_index() -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/", status_code=308)


@router.get("/")
async def index() -> Response:
    return _asset("index.html")


@router.get("/{name}")
async def asset(name: str) -> Response:
    if name not in ASSETS or name == "index.html":
        return Response("Not Found", status_code=404, media_type="text/plain", headers=HEADERS)
    return _asset(name)
