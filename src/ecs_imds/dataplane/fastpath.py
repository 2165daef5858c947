"""The common request, recognised from its bytes alone.

Nearly every request an instance sends is the same shape: one `GET /latest/…` (or a token
PUT) with a few plain headers, arriving whole in one read. `simple_request` recognises such
a request without a parser and gives the same `Request` the parser path would build; it says
yes only where httptools would have read the same method, target, token, TTL and keep-alive,
and nothing else that matters (tests/test_fastpath.py). `SimpleRequests` remembers the
answer by the request's bytes: an instance polling one path sends the same bytes again and
again, and a dict lookup is much cheaper than looking again.
"""

from __future__ import annotations

import re

from ecs_imds.protocol.access import PROXY_HEADERS, TOKEN_HEADER, TTL_HEADER
from ecs_imds.protocol.decide import Request

# --- the common request, recognised from its bytes -------------------------------------------
# An origin-form target of characters httptools passes through as they are (no query, no
# fragment, no percent-escapes, nothing a tag key could smuggle in).
_SIMPLE_TARGET = re.compile(rb"/[A-Za-z0-9._~!$&'()*+,;=:@/-]*")
# Header lines "Name: value" (one optional space), visible ASCII only, no trailing space.
_SIMPLE_HEADERS = re.compile(
    rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+: ?[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?\r\n)*")
# Headers llhttp itself acts on (framing, upgrade, persistence): the parser handles those,
# but for a `Content-Length: 0` (what many clients send with a PUT) and `Connection`.
_FRAMING = (b"\ntransfer-encoding:", b"\nupgrade:", b"\nproxy-connection:")
_LENGTH = b"\ncontent-length:"
_CONNECTION = b"\nconnection:"
_TOKENS = b"\nx-aliyun-ecs-metadata-token"  # the token and its TTL, and nothing else like them
_TOKEN = _TOKENS + b":"
_TTL = _TOKENS + b"-ttl-seconds:"
_PUT_TARGET = b"/latest/api/token"
# A proxy in the way (a token PUT through one is refused, SPEC §4.1): only whether it is there.
_PROXIES = tuple((name, b"\n" + name.encode() + b":") for name in PROXY_HEADERS)

# A simple request: what `decide` needs of it, and whether the connection stays open.
Simple = tuple[Request, bool]


def simple_request(data: bytes, max_target: int, max_headers: int) -> Simple | None:
    """The Request in `data` when it is exactly one complete `GET <target> HTTP/1.1` or
    `PUT /latest/api/token HTTP/1.1` of the common shape, and whether it keeps the
    connection open; None for anything else (the connection's parser reads it)."""
    if data[:5] == b"GET /":
        method, target_start = "GET", 4
    elif data[:5] == b"PUT /":
        method, target_start = "PUT", 4
    else:
        return None
    end = data.find(b"\r\n\r\n")
    if end != len(data) - 4:
        return None  # incomplete, pipelined, or with a body
    line_end = data.find(b"\r\n")
    target_end = line_end - 9
    if (data[target_end:line_end] != b" HTTP/1.1" or target_end - target_start > max_target
            or not _SIMPLE_TARGET.fullmatch(data, target_start, target_end)):
        return None
    if method == "PUT" and data[target_start:target_end] != _PUT_TARGET:
        return None
    target = data[target_start:target_end].decode("ascii")
    if line_end == end:
        return Request.of(method, target), True
    if end - line_end > max_headers // 2 or not _SIMPLE_HEADERS.fullmatch(
            data, line_end + 2, end + 2):
        return None
    low = data[line_end:end + 2].lower()  # starts with "\r\n": every name follows a "\n"
    for name in _FRAMING:
        if name in low:
            return None
    values: list[bytes | None] = []
    for name in (_LENGTH, _CONNECTION, _TOKEN, _TTL):
        at = low.find(name)
        if at < 0:
            values.append(None)
            continue
        if low.find(name, at + 1) >= 0:
            return None  # twice
        start = line_end + at + len(name)
        values.append(data[start:line_end + low.index(b"\r", at)].lstrip(b" "))
    length, connection, token, ttl = values
    if low.count(_TOKENS) != (token is not None) + (ttl is not None):
        return None  # some other x-aliyun-ecs-metadata-token… header
    if length is not None and length != b"0":
        return None
    keep_alive = True
    if connection is not None:
        connection = connection.lower()
        if connection == b"close":
            keep_alive = False
        elif connection != b"keep-alive":
            return None
    headers = {name: "" for name, line in _PROXIES if line in low}
    if token is not None:
        headers[TOKEN_HEADER] = token.decode("latin-1")
    if ttl is not None:
        headers[TTL_HEADER] = ttl.decode("latin-1")
    return Request.of(method, target, "", headers), keep_alive


class SimpleRequests(dict[bytes, Simple | None]):
    """Request bytes → `simple_request` of them, remembered: the same bytes come again and
    again (a client polling one path, every instance of a fleet running the same agent, a
    token reused on a connection), and a dict lookup is much cheaper than looking again."""

    __slots__ = ("max_headers", "max_target")

    SIZE = 4096  # requests remembered; past it the memory starts over
    LONGEST = 512  # longer requests are looked at every time

    def __init__(self, max_target: int, max_headers: int) -> None:
        super().__init__()
        self.max_target = max_target
        self.max_headers = max_headers

    def __missing__(self, data: bytes) -> Simple | None:
        found = simple_request(data, self.max_target, self.max_headers)
        if len(data) <= self.LONGEST:
            if len(self) >= self.SIZE:
                self.clear()
            self[data] = found
        return found
