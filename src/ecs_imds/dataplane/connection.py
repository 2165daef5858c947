"""One HTTP/1.1 connection from an instance: read a request, decide, write — in order.

A request that arrives whole in one read, of the common shape, is recognised from its bytes
(`fastpath`); anything else (split across reads, pipelined, odd headers, a limit broken)
goes through httptools. Both build the same `Request` and call the same `decide`; the
answer is written by the one writer (`protocol.response`). Every request is answered as
soon as it is complete, in order: an answer that must wait (RAM credentials not cached yet,
a signature being made) holds the answers after it in a queue, and reading pauses until it
is out. A read of many pipelined requests is parsed a slice (`PARSE_SLICE`) per turn of the
event loop, so that one connection never holds up the others' answers.

The caller is identified from the listener's VPC and the peer address (never a header),
against whichever snapshot is current at that moment, once per snapshot per connection.

What a hostile instance can do to a connection is bounded (SPEC §8): the request line and
the headers are counted as they arrive, across reads, and refused as soon as they are too
long; a request must be complete within `request-timeout` of its first byte and a
keep-alive connection may idle `idle-timeout`; a peer that does not read its answers is
cut off (the transport aborted, not closed politely) when its write buffer — answers
waiting in the queue included — passes `write-buffer`, or its deadline passes.

Options, which compose: PROXY protocol on the listener (`proxy.ProxyFront` reads the header
first), an access log line per answer, and latency sampling of one connection in N.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import sys
import termios
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from ecs_imds.dataplane.fulfil import Answer, Pending
from ecs_imds.protocol.catalogue import TEXT, Leaf, Rendered
from ecs_imds.protocol.decide import MintToken, Refuse, Request, Verdict, decide
from ecs_imds.protocol.response import write, write_error, write_leaf
from ecs_imds.protocol.snapshot import Snapshot

if TYPE_CHECKING:
    from ecs_imds.dataplane.plane import DataPlane, ListenerState
    from ecs_imds.dataplane.proxy import ProxyFront

# (status, bytes of the body sent, the request) → one access log line
AccessLog = Callable[["HttpConnection", Request | None, int, int], None]
_TOKEN_TTL = b"X-aliyun-ecs-metadata-token-ttl-seconds"
# What an answer not made yet counts against the write buffer's bound while it waits in the
# queue: about a RAM credential's size (with a real STS token). Requests pipelined behind it
# cost memory before a byte is written.
PENDING_SIZE = 1024
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, for 0 s: close() resets the connection
# Bytes of one read parsed in one turn of the event loop. A read may hold thousands of
# pipelined requests (uvloop reads up to 256 KiB at once): parsed in one go, they held the
# loop — and every other instance's answers on it — for tens of milliseconds (a flooding
# instance's 1,000-request bursts, answered and refused: 20-60 ms). The rest of the read
# waits for the next turn, reading paused meanwhile. About 60 small requests: well under
# a millisecond.
PARSE_SLICE = 4096


class _Reject(Exception):
    """Raised from a parser callback: answer `status` and close."""

    def __init__(self, status: int) -> None:
        self.status = status


def _unacknowledged(transport: asyncio.Transport) -> int:
    """Bytes the kernel holds that the peer has not acknowledged yet (SIOCOUTQ)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int.from_bytes(out, sys.byteorder)


class HttpConnection(asyncio.Protocol):
    __slots__ = ("_body_size", "_busy", "_caller", "_close_after", "_closing", "_first",
                 "_front", "_header_size", "_headers", "_hop_limited", "_in_body", "_method",
                 "_partial", "_peer_done", "_queue", "_queued", "_snapshot", "_timed",
                 "_unparsed", "_url", "_write_paused", "access_log",
                 "deadline", "listener", "parser", "peer_ip", "plane", "source", "transport")

    def __init__(self, plane: DataPlane, listener: ListenerState, peer_ip: str = "",
                 first: bytes = b"", front: ProxyFront | None = None,
                 access_log: AccessLog | None = None, timed: bool = False) -> None:
        """`first`: bytes already read from the connection (`accept` read them);
        `front`: the PROXY protocol header reader of a listener that speaks it."""
        self.plane = plane
        self.listener = listener
        self.peer_ip = peer_ip  # who the caller is (a PROXY header may name another)
        self.source = peer_ip  # where the connection comes from, for the per-source cap
        self._first = first
        self._front = front
        self.access_log = access_log
        self._timed = timed
        self.parser: httptools.HttpRequestParser | None = None  # made when first needed
        self.transport: asyncio.Transport | None = None
        # The parser's request: set by on_message_begin (a connection that never needs the
        # parser never makes them).
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_size = 0
        self._body_size = 0
        self._method = ""
        self._busy = False  # the parser is inside a request
        self._in_body = False  # ... and past its headers
        self._partial = 0  # bytes of a header line that has not ended yet
        self._unparsed: memoryview | None = None  # the rest of a read, parsed on later turns
        self._peer_done = False  # the peer half-closed while a read was still being parsed
        self._queue: deque[bytes | tuple[Pending, Request, bool]] | None = None
        self._queued = 0  # bytes of the answers in the queue (a pending one: PENDING_SIZE)
        self._closing = False
        self._write_paused = False  # between pause_writing and resume_writing
        self._close_after = False  # close once the queue is out
        self._hop_limited = False
        self._snapshot: Snapshot | None = None  # the caller, as found in this snapshot
        self._caller: Rendered | None = None
        self.deadline = 0.0

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.deadline = time.monotonic() + self.plane.limits.idle_timeout
        self.plane.connections.add(self)
        if self._queue is not None:  # answers begun before the loop had the connection
            transport.pause_reading()  # type: ignore[attr-defined]
            self._flush()
        elif self._first:
            first, self._first = self._first, b""
            self.data_received(first)

    def connection_lost(self, exc: Exception | None) -> None:
        self.plane.forget(self)
        self.transport = None
        self._closing = True

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._write_paused and self.transport is not None:
            # Reading was paused with writing, yet here is a read: uvloop starts reading
            # after `connection_made` whatever was paused in it (as when the first bytes,
            # read with the connection, asked for more than the kernel takes). Without
            # this it would read on, and a lone request is answered without a look at
            # the write buffer's bound (only the parser's path has one): a peer sending
            # one request at a time grew its buffer without end.
            self.transport.pause_reading()
        if self._front is not None:
            data = self._front.read(self, data)
            if not data:
                return
        if self._unparsed is not None:
            # Reading was paused, yet a read came (uvloop, after connection_made): it
            # goes after the rest of the one being parsed.
            self._unparsed = memoryview(bytes(self._unparsed) + data)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        started = time.perf_counter() if self._timed else 0.0
        simple = None
        if not self._busy and self._queue is None:
            simple = self.plane.simple_requests[data]
        if simple is not None:
            self._answer(simple[0], simple[1])
        else:
            self._parse(data)
        if started:
            self.plane.stats.observe(time.perf_counter() - started)

    def eof_received(self) -> bool | None:
        """The peer has sent all it will (a half-close, as `nc -N` does): an answer still
        awaited is written first, and the connection closed after it."""
        if self._unparsed is not None:  # requests it sent before are still being parsed
            self._peer_done = True
            return True
        if self._queue is not None:
            self._close_after = True
            return True  # keep the transport open for the answers
        return None  # nothing awaited: close

    def pause_writing(self) -> None:
        """The peer is not reading: read no more requests from it (its deadline runs on)."""
        self._write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.transport is not None and not self._closing and self._queue is None \
                and self._unparsed is None:
            self.transport.resume_reading()

    # -- the parser path -----------------------------------------------------------------
    def _parse(self, data: bytes) -> None:
        """Parse `data`, one PARSE_SLICE now and the rest on later turns of the loop."""
        if len(data) > PARSE_SLICE:
            self._unparsed = memoryview(data)[PARSE_SLICE:]
            data = data[:PARSE_SLICE]
            if self.transport is not None:
                self.transport.pause_reading()
            asyncio.get_running_loop().call_soon(self._parse_on)
        self._feed(data)

    def _parse_on(self) -> None:
        """The next slice of a read (`_parse`); once it is all parsed, reading resumes (or,
        when the peer half-closed meanwhile, the connection ends as `eof_received` says)."""
        rest = self._unparsed
        if rest is None or self._closing:
            self._unparsed = None
            return
        if len(rest) > PARSE_SLICE:
            self._unparsed = rest[PARSE_SLICE:]
            asyncio.get_running_loop().call_soon(self._parse_on)
        else:
            self._unparsed = None
        self._feed(bytes(rest[:PARSE_SLICE]))
        if self._unparsed is not None or self._closing or self.transport is None:
            return
        if self._peer_done:
            self._peer_done = False
            if not self.eof_received():
                self._close()
        elif self._queue is None and not self._write_paused:
            self.transport.resume_reading()

    def _feed(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self._unparsed = None  # the parser stops at its first error: so does the read
            cause = exc.__context__
            if not self._closing:
                self._reject(cause.status if isinstance(cause, _Reject) else 400)
            return
        except httptools.HttpParserError:  # malformed
            self._unparsed = None
            self._reject(400)
            return
        if self._busy:
            # The request line is counted as it arrives (on_url), a header only once it has
            # ended: so count the line that has not ended yet, across reads, or httptools
            # would keep it however long it grows. The same holds after the headers: a
            # chunked body's trailers are header lines too, and its chunk lines are lines.
            end = data.rfind(b"\n")
            self._partial = len(data) - end - 1 if end >= 0 else self._partial + len(data)
            limit = self.plane.limits.headers
            if self._in_body:
                limit += self._body_limit()
            if self._header_size + self._partial > limit:
                self._reject(431)

    def on_message_begin(self) -> None:
        if self._closing or self._close_after:  # pipelined behind a request that closes
            raise _Reject(400)
        self._busy = True
        self._in_body = False
        self._method = ""
        self._url = b""
        self._headers = {}
        self._header_size = 0
        self._body_size = 0
        self._partial = 0
        self.deadline = time.monotonic() + self.plane.limits.request_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.plane.limits.request_line:
            raise _Reject(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_size += len(name) + len(value) + 4
        self._partial = 0
        if self._header_size > self.plane.limits.headers:
            raise _Reject(431)
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self._in_body = True
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
        if self.parser.should_upgrade():
            raise _Reject(400)  # no Upgrade, no CONNECT: one answer, then close
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            raise _Reject(400) from None
        path = (url.path or b"/").decode("latin-1")
        query = (url.query or b"").decode("latin-1")
        self._answer(Request.of(self._method, path, query, self._headers), keep_alive)
        self._method = ""  # answered: a refusal of what follows is not this request's
        transport = self.transport
        # Answers waiting in the queue count too: behind one that waits (RAM credentials
        # from a slow broker) a peer could otherwise pipeline any number of them.
        if transport is not None and transport.get_write_buffer_size() + self._queued \
                > self.plane.limits.write_buffer:
            self._abort("its answers are not read")
            raise _Reject(0)  # stop parsing what it pipelined

    def _body_limit(self) -> int:
        return self.plane.limits.put_body if self._method == "PUT" else 0

    # -- deciding and answering ---------------------------------------------------------
    def _identify(self, snap: Snapshot) -> Rendered | None:
        """The caller in `snap`; found once per snapshot per connection."""
        self._caller = snap.identify(self.listener.vpc_id, self.peer_ip,
                                     self.listener.aliases)
        if self._caller is None:
            self.plane.stranger(self.peer_ip, self.listener)
        self._snapshot = snap
        return self._caller

    def _answer(self, req: Request, keep_alive: bool) -> None:
        plane = self.plane
        snap = plane.snapshot
        caller = self._caller if snap is self._snapshot else self._identify(snap)
        now = time.time()
        verdict = decide(req, caller, snap, now, plane.limiter, self.peer_ip)
        if verdict.__class__ is Leaf and self._queue is None and self.access_log is None:
            # The common case: bytes already rendered, out in one write.
            transport = self.transport
            if transport is not None:
                transport.write(write_leaf(verdict, now, keep_alive, req.method == "HEAD"))
            plane.stats.responses[200] += 1
        else:
            keep_alive = self._send_verdict(verdict, req, keep_alive, now)
        if keep_alive:
            self.deadline = time.monotonic() + plane.limits.idle_timeout
        else:
            self._close()

    def _send_verdict(self, verdict: Verdict, req: Request | None, keep_alive: bool,
                      now: float | None = None) -> bool:
        """Write (or queue) the answer to `verdict`; whether the connection stays open."""
        now = time.time() if now is None else now
        if isinstance(verdict, Refuse):
            keep_alive = keep_alive and not verdict.close
        elif isinstance(verdict, MintToken):
            self._mint(verdict, req, keep_alive, now)
            return keep_alive
        elif not isinstance(verdict, Leaf):
            answer = self.plane.fulfiller.answer(verdict, now)
            if isinstance(answer, asyncio.Future):
                self._wait_for(answer, req, keep_alive)
                return keep_alive
            verdict = answer
        self._send_answer(verdict, req, keep_alive, now)
        return keep_alive

    def _send_answer(self, answer: Answer, req: Request | None, keep_alive: bool,
                     now: float, head_only: bool = False) -> None:
        """`head_only`: a HEAD's answer when there is no `req` (a request refused unread)."""
        head_only = req.method == "HEAD" if req is not None else head_only
        if isinstance(answer, Leaf):
            status, out = 200, write_leaf(answer, now, keep_alive, head_only)
            sent = 0 if head_only else len(answer.body)
        else:
            status = answer.status
            out = write_error(status, now, keep_alive, answer.headers, head_only)
            sent = 0 if head_only else len(out) - out.index(b"\r\n\r\n") - 4
        self._send(out)
        self.plane.stats.responses[status] += 1
        if self.access_log is not None:
            self.access_log(self, req, status, sent)

    def _mint(self, mint: MintToken, req: Request | None, keep_alive: bool,
              now: float) -> None:
        token = self.plane.snapshot.key_ring.mint(mint.instance_id, int(now), mint.ttl)
        transport = self.transport
        if transport is not None and not self._hop_limited:
            # Once a token leaves on this connection, every later segment (retransmissions
            # included) keeps the hop limit: restoring the TTL could let a retransmitted
            # token travel further than the instance's hop limit allows.
            self._set_hop_limit(transport, mint.hop_limit)
        body = token.encode()
        self._send(write(200, TEXT, body, now, keep_alive,
                         ((_TOKEN_TTL, str(mint.ttl).encode()),)))
        stats = self.plane.stats
        stats.responses[200] += 1
        stats.tokens_issued += 1
        if self.access_log is not None:
            self.access_log(self, req, 200, len(body))

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

    # -- writing in order ----------------------------------------------------------------
    def _send(self, out: bytes) -> None:
        if self._queue is not None:
            self._queue.append(out)
            self._queued += len(out)
        elif self.transport is not None:
            self.transport.write(out)

    def _wait_for(self, pending: Pending, req: Request | None, keep_alive: bool) -> None:
        """Hold this answer's place: what comes after it waits in the queue."""
        if self._queue is None:
            self._queue = deque()
            if self.transport is not None:
                self.transport.pause_reading()
        self._queue.append((pending, req or Request.of("GET", "/"), keep_alive))
        self._queued += PENDING_SIZE
        pending.add_done_callback(lambda _: self._flush())

    def wait_for(self, pending: Pending, req: Request) -> None:
        """Answer `req` with `pending` once it is done, then close (from `accept`)."""
        self._wait_for(pending, req, False)
        self._close_after = True

    def finish(self, unsent: bytes) -> None:
        """Write the end of an answer already begun, then close (from `accept`)."""
        self._queue = deque([unsent])
        self._close_after = True

    def _flush(self) -> None:
        if self.transport is None and not self._closing:
            return  # not attached to the loop yet: connection_made flushes
        queue = self._queue
        while queue:
            item = queue[0]
            if isinstance(item, bytes):
                if self.transport is not None:
                    self.transport.write(item)
                self._queued -= len(item)
            else:
                pending, req, keep_alive = item
                if not pending.done():
                    return
                queue.popleft()  # so that its answer is written, not queued again
                self._queued -= PENDING_SIZE
                self._queue = None
                self._send_answer(pending.result(), req, keep_alive, time.time())
                self._queue = queue
                continue
            queue.popleft()
        self._queue = None
        if self._close_after or self._closing:
            self._close_after = False
            self._close()
        elif self.transport is not None:
            self.deadline = time.monotonic() + self.plane.limits.idle_timeout
            if not self._write_paused and self._unparsed is None:
                self.transport.resume_reading()  # else resume_writing or _parse_on does

    # -- closing -------------------------------------------------------------------------
    def _reject(self, status: int) -> None:
        """A request that breaks the protocol or a limit: answer it once, then close. The
        answer to a HEAD has no body, or the client would read it as the next answer."""
        method = self._method  # known once its headers are read
        if not method and self._busy and self.parser is not None:
            method = self.parser.get_method().decode("latin-1")  # its request line's
        self._send_answer(Refuse(status), None, False, time.time(), method == "HEAD")
        self._close()

    def _close(self) -> None:
        """Close once every answer is out (politely: what is written is delivered)."""
        if self._queue is not None:
            self._close_after = True
            return
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def _abort(self, why: str) -> None:
        """Cut the connection off: nothing more is sent, its buffers are freed at once.
        Answers left unread in the kernel are dropped too (a zero linger time: the peer
        gets a reset), rather than kept for a peer that may never read them."""
        self._closing = True
        self._queue = None
        transport = self.transport
        if transport is not None:
            self.plane.warnings.warn("abort", "cut off a connection from %s on %s: %s",
                                     self.peer_ip, self.listener.vpc_id, why)
            sock = transport.get_extra_info("socket")
            if sock is not None and (transport.get_write_buffer_size()
                                     or _unacknowledged(transport)):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            transport.abort()

    def expire(self) -> None:
        """Called by the sweeper when the deadline passed: idle, too slow, or not reading.
        Answers not read yet, in our buffer or still in the kernel's (a peer that keeps its
        receive window shut), are dropped with the connection: a polite close would leave
        the kernel holding them for a peer that never reads."""
        transport = self.transport
        if transport is None:
            return
        if transport.get_write_buffer_size() or self._queue is not None or self._busy \
                or _unacknowledged(transport):
            self._abort("deadline passed")
        else:
            self._closing = True
            transport.close()

    # -- for the PROXY protocol front and the access log -----------------------------------
    def settled(self) -> None:
        """The PROXY header (if any) is read: the peer address is final."""
        self._front = None
        self._snapshot = None

    def refuse(self, reason: str) -> None:
        """Close without an answer: whoever sent this is not speaking to us as expected."""
        self.plane.warnings.warn("proxy", "refused a connection from %s on %s: %s",
                                 self.peer_ip, self.listener.vpc_id, reason)
        self._front = None
        self._close()

    @property
    def caller(self) -> Rendered | None:
        return self._caller

    @property
    def backed_up(self) -> bool:
        """Whether its writing is paused: more of its answers unsent than the transport's
        high-water mark (what it ends with is worth giving back: `memory.Trimmer`)."""
        return self._write_paused
