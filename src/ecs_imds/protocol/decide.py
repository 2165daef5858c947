"""The one decision: what an instance's request gets (SPEC §1-§6 and §8's rate limit).

`decide(request, caller, snapshot, now, limiter, source) -> Verdict` is a pure function: no
sockets, no store, no clock of its own, nothing that waits. Its answers are values, in the
manner of h11's events:

- a `Leaf` (from the catalogue): serve these bytes, 200;
- `Refuse`: this status (and headers); `close` when the connection should go too;
- `MintToken`: issue a session token of this TTL, sent with this hop limit;
- `NeedCredentials`: the RAM credentials of (instance, role) are the answer;
- `NeedSignature`: the PKCS#7 signature of these document bytes is the answer.

The two "needs" are what the data plane fulfils from caches refreshed off its event loop,
so a slow credential broker makes only the requests that need it wait. Every front of the
data plane (the byte-level fast path, httptools, the access-logged and PROXY protocol
connections) calls this one function; the console calls it too, to show what an instance
sees.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from ecs_imds.protocol import access
from ecs_imds.protocol.catalogue import TEXT, VERSIONS, Dynamic, Leaf, Rendered
from ecs_imds.protocol.identity import with_audience
from ecs_imds.protocol.model import MAX_TOKEN_TTL
from ecs_imds.protocol.ratelimit import CLOSE, RateLimiter
from ecs_imds.protocol.snapshot import Snapshot

TOKEN_PATH = "api/token"
ROOT = Leaf("\n".join(VERSIONS).encode(), TEXT)

Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class Request:
    """What the decision needs of a request, read once from its method, target and headers.

    `version` and `item` split the path (`/latest/meta-data/` → `latest`, `meta-data`);
    `root` is a request for `/`. Only three headers matter: the token, its TTL (on a token
    PUT) and whether a proxy is in the way. The data plane keeps the Request of a request
    it has seen before, keyed by its bytes, so an instance polling one path costs no parsing.
    """

    method: str
    path: str
    query: str = ""
    token: str | None = None
    ttl: str | None = None
    proxied: bool = False
    version: str = ""
    item: str = ""

    @classmethod
    def of(cls, method: str, path: str, query: str = "",
           headers: Mapping[str, str] | None = None) -> Request:
        """`headers` maps lower-case names to values."""
        headers = headers or {}
        if path == "/":
            version, item = "", ""
        else:
            version, _, item = path[1:].partition("/")
            item = item.rstrip("/")
        return cls(method, path, query, headers.get(access.TOKEN_HEADER),
                   headers.get(access.TTL_HEADER), access.proxied(headers), version, item)


@dataclass(frozen=True, slots=True)
class Refuse:
    """An error answer: the status (the body names only the status) and extra headers."""

    status: int
    headers: Headers = ()
    close: bool = False


@dataclass(frozen=True, slots=True)
class MintToken:
    instance_id: str
    ttl: int
    hop_limit: int


@dataclass(frozen=True, slots=True)
class NeedCredentials:
    instance_id: str
    role: str


@dataclass(frozen=True, slots=True)
class NeedSignature:
    """`content` is the identity document, with the audience inserted when one was asked."""

    instance_id: str
    content: bytes


Verdict = Leaf | Refuse | MintToken | NeedCredentials | NeedSignature

BAD_REQUEST = Refuse(400)
UNAUTHORIZED = Refuse(401)
FORBIDDEN = Refuse(403)
NOT_FOUND = Refuse(404)
READ_ONLY = Refuse(405, ((b"Allow", b"GET, HEAD"),))
PUT_ONLY = Refuse(405, ((b"Allow", b"PUT"),))
FLOODING = Refuse(429, close=True)
_THROTTLED: dict[int, Refuse] = {}


def throttled(wait: int) -> Refuse:
    """429 with Retry-After: made once per distinct wait, so refusing costs no allocation."""
    found = _THROTTLED.get(wait)
    if found is None:
        found = _THROTTLED[wait] = Refuse(429, ((b"Retry-After", str(wait).encode()),))
    return found


def decide(req: Request, caller: Rendered | None, snap: Snapshot, now: float,
           limiter: RateLimiter | None = None, source: str = "") -> Verdict:
    """What `req` from `caller` gets. The order is SPEC's, and it is written only here:

    1. Who: `caller` was found from the network (listener VPC, peer address), never from a
       header; no instance there → 403. An instance whose `http-endpoint` is disabled → 403.
    2. Rate limit: per instance (per source address for callers that are no instance, and
       for disabled instances) → 429 with Retry-After; far past it → 429 and close.
    3. The token endpoint, `PUT /latest/api/token`: another method → 405; through a proxy
       (X-Forwarded-For, Forwarded) → 403; a TTL that is not 1..21600 → 400; else a token
       bound to the instance, sent with its hop limit. A PUT to `/2016-01-01/api/token` → 403.
    4. Any method but GET and HEAD → 405.
    5. The token gate: a token, when present, must be valid for this instance (else 401, in
       both modes); when absent, the instance must not require one (else 403).
    6. The tree: `/` lists the versions; a version other than `latest` and `2016-01-01` → 404;
       a path the instance has → its leaf or listing, its RAM credentials (the attached
       role only), or its identity signature (`?audience=` of 1..256 printable characters,
       else 400); anything else → 404.
    """
    if caller is None or not caller.options.endpoint_enabled:
        if limiter is not None and limiter.rate:
            wait = limiter.admit(source, now)
            if wait:
                return FLOODING if wait == CLOSE else throttled(wait)
        return FORBIDDEN
    if limiter is not None and limiter.rate:
        wait = limiter.admit(caller.instance_id, now)
        if wait:
            return FLOODING if wait == CLOSE else throttled(wait)
    item = req.item
    if item == TOKEN_PATH:
        if req.version == "latest":
            return _token(req, caller)
        if req.version == VERSIONS[0] and req.method == "PUT":  # only latest issues (AWS)
            return FORBIDDEN
    if req.method != "GET" and req.method != "HEAD":
        return READ_ONLY
    token = req.token
    if token is not None:
        if not snap.key_ring.verify(token, caller.instance_id, int(now)):
            return UNAUTHORIZED
    elif caller.options.tokens_required:
        return FORBIDDEN
    if req.version not in VERSIONS:
        return ROOT if req.path == "/" else NOT_FOUND
    entry = caller.entries.get(item)
    if entry is None:
        return NOT_FOUND
    if entry.__class__ is Leaf:  # an exact-class check: cheaper than isinstance
        return entry
    return _dynamic(entry, caller, req.query)  # type: ignore[arg-type]


def _token(req: Request, caller: Rendered) -> Verdict:
    if req.method != "PUT":
        return PUT_ONLY
    if req.proxied:
        return FORBIDDEN
    ttl = access.parse_ttl(req.ttl, MAX_TOKEN_TTL)
    if ttl is None:
        return BAD_REQUEST
    return MintToken(caller.instance_id, ttl, caller.options.hop_limit)


def _dynamic(entry: Dynamic, caller: Rendered, query: str) -> Verdict:
    if entry.kind == "credentials":
        if caller.role is None or entry.arg != caller.role:
            return NOT_FOUND
        return NeedCredentials(caller.instance_id, caller.role)
    try:
        audience = audience_of(query)
        content = (caller.document if audience is None
                   else with_audience(caller.document, audience))
    except ValueError:
        return BAD_REQUEST
    return NeedSignature(caller.instance_id, content)


def audience_of(query: str) -> str | None:
    """The percent-decoded `audience` of a query string; None when there is none.

    The data plane hands the raw query decoded as Latin-1, so it is turned back into its bytes
    before percent-decoding and the result is read as UTF-8. Raises ValueError for an
    audience given twice or one that is not UTF-8; other parameters are ignored.
    """
    if not query:
        return None
    try:
        raw = query.encode("latin-1")
    except UnicodeEncodeError:
        raw = query.encode()
    found: list[bytes] = []
    for part in raw.split(b"&"):
        name, _, value = part.partition(b"=")
        if unquote_to_bytes(name.replace(b"+", b" ")) == b"audience":
            found.append(unquote_to_bytes(value.replace(b"+", b" ")))
    if not found:
        return None
    if len(found) > 1:
        raise ValueError("audience given more than once")
    return found[0].decode("utf-8")
