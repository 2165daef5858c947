"""One HTTP/1.1 connection from an instance: parse, resolve, write — in order.

httptools does the parsing; every request is answered as soon as it is complete, so
pipelined requests are answered in order without buffering. The caller is identified per
request from the listener's VPC and the peer address (never a header), against whichever
snapshot is current at that moment.
"""

from __future__ import annotations

import asyncio
import socket
import time
from email.utils import formatdate
from typing import TYPE_CHECKING

import httptools

from ..resolve import REASONS, Request, Response, error, resolve
from ..snapshot import normalise_ip

if TYPE_CHECKING:
    from .server import DataPlane, ListenerState


class _Reject(Exception):
    """A request that breaks a limit: answer `status` and close."""

    def __init__(self, status: int) -> None:
        self.status = status


_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The Date header value, formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def render_response(resp: Response, keep_alive: bool, head_only: bool) -> bytes:
    parts = [b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nDate: %s\r\n" % (
        resp.status, REASONS[resp.status].encode(), resp.content_type, len(resp.body),
        http_date())]
    for name, value in resp.headers:
        parts.append(b"%s: %s\r\n" % (name, value))
    parts.append(b"\r\n" if keep_alive else b"Connection: close\r\n\r\n")
    if not head_only:
        parts.append(resp.body)
    return b"".join(parts)


class HttpConnection(asyncio.Protocol):
    __slots__ = ("_body_size", "_closing", "_header_size", "_headers", "_hop_limited",
                 "_method", "_url", "deadline", "listener", "parser", "peer_ip", "plane",
                 "transport")

    def __init__(self, plane: DataPlane, listener: ListenerState) -> None:
        self.plane = plane
        self.listener = listener
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_size = 0
        self._body_size = 0
        self._method = ""
        self._closing = False
        self._hop_limited = False
        self.deadline = 0.0

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        self.peer_ip = normalise_ip(peer[0]) if peer else ""
        self.deadline = time.monotonic() + self.plane.limits.idle_timeout
        self.plane.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.plane.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self.parser.feed_data(data)
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
        self._method = self.parser.get_method().decode("latin-1")
        length = self._headers.get("content-length", "0")
        if not length.isdigit() or int(length) > self._body_limit():
            raise _Reject(413)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._body_limit():
            raise _Reject(413)

    def on_message_complete(self) -> None:
        keep_alive = self.parser.should_keep_alive()
        resp = self._respond()
        self._write(resp, keep_alive, self._method == "HEAD")
        if keep_alive:
            self.deadline = time.monotonic() + self.plane.limits.idle_timeout
        else:
            self._close()

    # -- the work ------------------------------------------------------------------------
    def _body_limit(self) -> int:
        return self.plane.limits.put_body if self._method == "PUT" else 0

    def _respond(self) -> Response:
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            return error(400)
        path = (url.path or b"/").decode("latin-1")
        query = (url.query or b"").decode("latin-1")
        plane = self.plane
        snap = plane.snapshot
        caller = snap.identify(self.listener.vpc_id, self.peer_ip, self.listener.aliases)
        return resolve(Request(self._method, path, query, self._headers), caller, snap,
                       time.time(), plane.limiter)

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
