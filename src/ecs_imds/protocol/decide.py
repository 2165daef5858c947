"""Request → response: the whole protocol of SPEC §1-4 and §6 as one pure function.

No sockets, no store, no clock of its own: the data plane hands in the parsed request, the
caller it identified from the network, the current snapshot and the time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ecs_imds.protocol import access
from ecs_imds.protocol.catalogue import TEXT, VERSIONS, Leaf, Rendered
from ecs_imds.protocol.model import MAX_TOKEN_TTL
from ecs_imds.protocol.ratelimit import RateLimiter
from ecs_imds.protocol.snapshot import Snapshot

ROOT_LISTING = "\n".join(VERSIONS).encode()
TOKEN_PATH = "api/token"

REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
    414: "URI Too Long", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 503: "Service Unavailable",
}


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] | None = None


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: bytes = TEXT
    headers: tuple[tuple[bytes, bytes], ...] = ()
    hop_limit: int | None = None


def error(status: int, headers: tuple[tuple[bytes, bytes], ...] = ()) -> Response:
    """A short text body that says no more than the status (never echoes the request)."""
    return Response(status, REASONS[status].encode(), TEXT, headers)


def throttled(wait: int) -> Response:
    return error(429, ((b"Retry-After", str(wait).encode()),))


_ALLOW_READ = ((b"Allow", b"GET, HEAD"),)
_ALLOW_PUT = ((b"Allow", b"PUT"),)
_EMPTY: Mapping[str, str] = {}


def resolve(req: Request, caller: Rendered | None, snap: Snapshot, now: float,
            limiter: RateLimiter | None = None) -> Response:
    status = access.reachable(caller)
    if status or caller is None:
        return error(status or 403)
    if limiter is not None:
        wait = limiter.retry_after(caller.instance_id, now)
        if wait:
            return throttled(wait)
    headers = req.headers or _EMPTY
    path = req.path
    if path == "/":
        version, rest = "", ""
    else:
        version, _, rest = path[1:].partition("/")
        rest = rest.rstrip("/")

    if rest == TOKEN_PATH:
        if version == "latest":
            return _token(req.method, headers, caller, snap, int(now))
        if version == VERSIONS[0] and req.method == "PUT":  # only latest issues tokens (AWS)
            return error(403)
    if req.method not in ("GET", "HEAD"):
        return error(405, _ALLOW_READ)
    status = access.token_gate(caller, headers, snap.key_ring, int(now))
    if status:
        return error(status)
    if path == "/":
        return Response(200, ROOT_LISTING)
    if version not in VERSIONS:
        return error(404)
    entry = caller.entries.get(rest)
    if entry is None:
        return error(404)
    if isinstance(entry, Leaf):
        return Response(200, entry.body, entry.content_type)
    code, body, ctype = snap.dynamic.answer(entry, caller, req.query, now)
    return Response(code, body, ctype) if code == 200 else error(code)


_LATEST = "/latest/"
_OLD = "/2016-01-01/"


def resolve_get(path: str, token: str | None, caller: Rendered | None, snap: Snapshot,
                now: float, limiter: RateLimiter | None = None) -> Leaf | Response:
    """`resolve` for a GET without a query string whose only header that matters is the
    token (`token`, None when absent) — what nearly every request is.

    The answer is resolve's own, except that a static leaf comes back as the Leaf itself, so
    that the data plane can send bytes it already has; everything but the common case is
    handed to `resolve` (tests/test_fastpath.py checks the two agree on every path).
    """
    if caller is None or not caller.options.endpoint_enabled:
        return error(403)
    if limiter is not None:
        wait = limiter.retry_after(caller.instance_id, now)
        if wait:
            return throttled(wait)
    if path.startswith(_LATEST):
        rest = path[8:]
    elif path.startswith(_OLD):
        rest = path[12:]
    else:
        rest = TOKEN_PATH  # "/", a bare version, an unknown version: resolve() knows
    if rest[-1:] == "/":
        rest = rest.rstrip("/")
    if rest != TOKEN_PATH:
        if token is not None:
            if not snap.key_ring.verify(token, caller.instance_id, int(now)):
                return error(401)
        elif caller.options.tokens_required:
            return error(403)
        entry = caller.entries.get(rest)
        if isinstance(entry, Leaf):
            return entry
    headers = _EMPTY if token is None else {access.TOKEN_HEADER: token}
    return resolve(Request("GET", path, "", headers), caller, snap, now)  # limiter: applied


def _token(method: str, headers: Mapping[str, str], caller: Rendered, snap: Snapshot,
           now: int) -> Response:
    if method != "PUT":
        return error(405, _ALLOW_PUT)
    if access.proxied(headers):
        return error(403)
    ttl = access.parse_ttl(headers.get(access.TTL_HEADER), MAX_TOKEN_TTL)
    if ttl is None:
        return error(400)
    token = snap.key_ring.mint(caller.instance_id, now, ttl)
    return Response(200, token.encode(), TEXT,
                    ((b"X-aliyun-ecs-metadata-token-ttl-seconds", str(ttl).encode()),),
                    hop_limit=caller.options.hop_limit)
