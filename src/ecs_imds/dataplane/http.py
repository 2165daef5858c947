"""One HTTP/1.1 connection from an instance: parse, resolve, write — in order.

Nearly every request an instance sends is the same shape: one `GET /latest/…` (or a token
PUT) with a few plain headers, arriving whole in one read. Such a request is recognised by
`simple_request` from its bytes alone (and remembered: the same bytes come again and
again); a GET is answered by `resolve_get`, a static leaf going out as bytes already
rendered. Anything else (a request split across reads or pipelined, a header httptools would
act on, a limit broken) goes through httptools and `resolve`. `simple_request` only says
yes where httptools would have read the same method, target, token, TTL and keep-alive, and
nothing else that matters (tests/test_fastpath.py).

Every request is answered as soon as it is complete, so pipelined requests are answered in
order without buffering. The caller is identified from the listener's VPC and the peer
address (never a header), against whichever snapshot is current at that moment.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from email.utils import formatdate
from typing import TYPE_CHECKING

import httptools

from ecs_imds.protocol.access import TOKEN_HEADER, TTL_HEADER
from ecs_imds.protocol.catalogue import Leaf, Rendered
from ecs_imds.protocol.decide import REASONS, Request, Response, error, resolve, resolve_get
from ecs_imds.protocol.snapshot import Snapshot, normalise_ip

if TYPE_CHECKING:
    from ecs_imds.dataplane.plane import DataPlane, ListenerState


class _Reject(Exception):
    """A request that breaks a limit: answer `status` and close."""

    def __init__(self, status: int) -> None:
        self.status = status


# The Date header line of the current second, made once per second.
_date_second = 0
_date = b""


def _date_line(now: float) -> bytes:
    global _date_second, _date
    second = int(now)
    if second != _date_second:
        _date = b"Date: %s\r\n" % formatdate(second, usegmt=True).encode()
        _date_second = second
    return _date


_KEEP = b"\r\n"
_CLOSE = b"Connection: close\r\n\r\n"


class _Heads(dict[int, bytes]):
    """Content length → status line, Content-Type and Content-Length of a 200, made once."""

    __slots__ = ("content_type",)

    def __init__(self, content_type: bytes) -> None:
        super().__init__()
        self.content_type = content_type

    def __missing__(self, length: int) -> bytes:
        if len(self) >= 4096:
            self.clear()
        head = self[length] = (b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                               % (self.content_type, length))
        return head


class _HeadsByType(dict[bytes, _Heads]):
    def __missing__(self, content_type: bytes) -> _Heads:
        heads = self[content_type] = _Heads(content_type)
        return heads


_heads = _HeadsByType()


def render_leaf(leaf: Leaf, now: float, keep_alive: bool) -> bytes:
    """A 200 with a static leaf: the same bytes as `render_response` would make of it."""
    body = leaf.body
    return b"".join((_heads[leaf.content_type][len(body)], _date_line(now),
                     _KEEP if keep_alive else _CLOSE, body))


def render_response(resp: Response, keep_alive: bool, head_only: bool) -> bytes:
    parts = [b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s" % (
        resp.status, REASONS[resp.status].encode(), resp.content_type, len(resp.body),
        _date_line(time.time()))]
    for name, value in resp.headers:
        parts.append(b"%s: %s\r\n" % (name, value))
    parts.append(_KEEP if keep_alive else _CLOSE)
    if not head_only:
        parts.append(resp.body)
    return b"".join(parts)


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
# A token PUT through a proxy is refused (SPEC §4.1): the parser's path says so.
_PROXIED = (b"\nx-forwarded-for:", b"\nforwarded:")
_PUT_TARGET = b"/latest/api/token"

# (method, target, token, TTL, keep-alive): what resolve needs of a simple request.
Simple = tuple[str, str, str | None, str | None, bool]


def simple_request(data: bytes, max_target: int, max_headers: int) -> Simple | None:
    """What matters of `data` when it is exactly one complete `GET <target> HTTP/1.1` or
    `PUT /latest/api/token HTTP/1.1` of the common shape; None for anything else."""
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
        return method, target, None, None, True
    if end - line_end > max_headers // 2 or not _SIMPLE_HEADERS.fullmatch(
            data, line_end + 2, end + 2):
        return None
    low = data[line_end:end + 2].lower()  # starts with "\r\n": every name follows a "\n"
    for name in _FRAMING:
        if name in low:
            return None
    if method == "PUT":
        for name in _PROXIED:
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
    return (method, target, None if token is None else token.decode("latin-1"),
            None if ttl is None else ttl.decode("latin-1"), keep_alive)


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


class HttpConnection(asyncio.Protocol):
    __slots__ = ("_body_size", "_busy", "_caller", "_closing", "_first", "_header_size",
                 "_headers", "_hop_limited", "_method", "_snapshot", "_unsent", "_url",
                 "deadline", "listener", "parser", "peer_ip", "plane", "transport")

    def __init__(self, plane: DataPlane, listener: ListenerState, first: bytes = b"",
                 unsent: bytes = b"") -> None:
        """`first`: bytes already read from the connection (dataplane.accept read them);
        `unsent`: the end of an answer already begun, to write before closing."""
        self.plane = plane
        self.listener = listener
        self._first = first
        self._unsent = unsent
        self.parser: httptools.HttpRequestParser | None = None  # made when first needed
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        # The parser's request (_url, _headers, _header_size, _body_size, _method) is set
        # by on_message_begin: a connection that never needs the parser never makes them.
        self._url: bytes
        self._headers: dict[str, str]
        self._header_size: int
        self._body_size: int
        self._method: str
        self._closing = False
        self._busy = False  # the parser is inside a request
        self._hop_limited = False
        self._snapshot: Snapshot | None = None  # the caller, as found in this snapshot
        self._caller: Rendered | None
        self.deadline = 0.0

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        if peer:
            # The kernel writes an IPv4 address canonically; IPv6 may need normalising.
            ip = peer[0]
            self.peer_ip = ip if ":" not in ip else normalise_ip(ip)
        self.deadline = time.monotonic() + self.plane.limits.idle_timeout
        self.plane.connections.add(self)
        if self._unsent:
            transport.write(self._unsent)  # type: ignore[attr-defined]
            self._unsent = b""
            self._close()
        elif self._first:
            first, self._first = self._first, b""
            self.data_received(first)

    def connection_lost(self, exc: Exception | None) -> None:
        self.plane.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if not self._busy:
            plane = self.plane
            simple = plane.simple_requests[data]
            if simple is not None:
                method, target, token, ttl, keep_alive = simple
                if method != "GET":
                    self._answer_put(method, target, token, ttl, keep_alive)
                    return
                # The common case, inline: every call saved here is saved on every request.
                snap = plane.snapshot
                caller = self._caller if snap is self._snapshot else self._identify(snap)
                now = time.time()
                limiter = plane.limiter
                answer = resolve_get(target, token, caller, snap, now,
                                     limiter if limiter.rate else None)
                transport = self.transport
                if isinstance(answer, Leaf) and transport is not None:
                    body = answer.body
                    transport.write(b"".join((
                        _heads[answer.content_type][len(body)],
                        _date if int(now) == _date_second else _date_line(now),
                        _KEEP if keep_alive else _CLOSE, body)))
                    plane.stats.responses[200] += 1
                else:
                    assert not isinstance(answer, Leaf)
                    self._write(answer, keep_alive, False)
                if keep_alive:
                    self.deadline = time.monotonic() + plane.limits.idle_timeout
                else:
                    self._close()
                return
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        """Everything but the common case: httptools, then `resolve`."""
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not self._closing:
                cause = exc.__context__
                self._reject(cause.status if isinstance(cause, _Reject) else 400)
        except httptools.HttpParserUpgrade:
            self._reject(400)
        except httptools.HttpParserError:
            self._reject(400)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self._closing:
            self.transport.resume_reading()

    # -- httptools callbacks -----------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._closing:  # a request pipelined behind one that closed the connection
            raise _Reject(400)
        self._busy = True
        self._method = ""
        self._url = b""
        self._headers = {}
        self._header_size = 0
        self._body_size = 0
        self.deadline = time.monotonic() + self.plane.limits.request_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.plane.limits.request_line:
            raise _Reject(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_size += len(name) + len(value) + 4
        if self._header_size > self.plane.limits.headers:
            raise _Reject(431)
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self._method = self.parser.get_method().decode("latin-1")
        length = self._headers.get("content-length", "0")
        if not length.isdigit() or int(length) > self._body_limit():
            raise _Reject(413)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._body_limit():
            raise _Reject(413)

    def on_message_complete(self) -> None:
        assert self.parser is not None
        self._busy = False
        keep_alive = self.parser.should_keep_alive()
        resp = self._respond()
        self._write(resp, keep_alive, self._method == "HEAD")
        self._done(keep_alive)

    # -- the work ------------------------------------------------------------------------
    def _body_limit(self) -> int:
        return self.plane.limits.put_body if self._method == "PUT" else 0

    def _identify(self, snap: Snapshot) -> Rendered | None:
        """The caller in `snap`; found once per snapshot per connection."""
        if snap is not self._snapshot:
            self._caller = snap.identify(self.listener.vpc_id, self.peer_ip,
                                         self.listener.aliases)
            self._snapshot = snap
        return self._caller

    def _answer_put(self, method: str, target: str, token: str | None, ttl: str | None,
                    keep_alive: bool) -> None:
        headers = {} if ttl is None else {TTL_HEADER: ttl}
        if token is not None:
            headers[TOKEN_HEADER] = token
        plane = self.plane
        snap = plane.snapshot
        self._write(resolve(Request(method, target, "", headers), self._identify(snap), snap,
                            time.time(), plane.limiter), keep_alive, False)
        self._done(keep_alive)

    def _done(self, keep_alive: bool) -> None:
        if keep_alive:
            self.deadline = time.monotonic() + self.plane.limits.idle_timeout
        else:
            self._close()

    def _respond(self) -> Response:
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            return error(400)
        path = (url.path or b"/").decode("latin-1")
        query = (url.query or b"").decode("latin-1")
        plane = self.plane
        snap = plane.snapshot
        return resolve(Request(self._method, path, query, self._headers), self._identify(snap),
                       snap, time.time(), plane.limiter)

    def _write(self, resp: Response, keep_alive: bool, head_only: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        if resp.hop_limit is not None and not self._hop_limited:
            # Once a token leaves on this connection, every later segment (retransmissions
            # included) keeps the hop limit: restoring the TTL could let a retransmitted
            # token travel further than the instance's hop limit allows.
            self._set_hop_limit(transport, resp.hop_limit)
        transport.write(render_response(resp, keep_alive, head_only))
        self.plane.count(resp.status)
        if resp.hop_limit is not None:  # only a token carries a hop limit
            self.plane.stats.tokens_issued += 1

    def _set_hop_limit(self, transport: asyncio.Transport, hops: int) -> None:
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hops)
            if self.peer_ip and ":" not in self.peer_ip:  # IPv4-mapped peer on a v6 socket
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, hops)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, hops)
        self._hop_limited = True

    def _reject(self, status: int) -> None:
        self._write(error(status), keep_alive=False, head_only=False)
        self._close()

    def _close(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def expire(self) -> None:
        """Called by the sweeper when the connection idled or a request dragged on."""
        if self.transport is not None:
            self._close()
