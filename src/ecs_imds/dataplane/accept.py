"""Accepting connections ourselves: caps first, and a one-request connection costs little.

Every listener's socket is read here, not by the event loop's own server:

- A new connection is checked against the caps (per source address, in all) before anything
  else is spent on it; over a cap it is closed at once.
- Out of descriptors (EMFILE, ENFILE) or kernel memory, accepting stops for a moment and
  one rate-limited warning says so: never a busy loop, never a line per attempt.
- The socket has TCP_DEFER_ACCEPT, so a connection is accepted once its first bytes are
  there. When they are a whole simple GET that asks for the connection to close (many
  clients open a connection per request), it is answered and closed on the spot (accept,
  recv, send, close) — through the event loop's server each such connection would cost a
  transport, a protocol, callbacks and epoll registrations, more than the request itself.
- Any other connection — keep-alive, a PUT, a request not complete in its first read, a
  PROXY protocol listener, a plane that writes an access log — is handed to the event loop
  with the bytes already read, and `HttpConnection` goes on from there exactly as if it had
  read them itself.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from typing import TYPE_CHECKING

from ecs_imds.dataplane.fulfil import Answer, Pending
from ecs_imds.protocol.catalogue import Leaf
from ecs_imds.protocol.decide import MintToken, Refuse, decide
from ecs_imds.protocol.response import write_error, write_leaf
from ecs_imds.protocol.snapshot import normalise_ip

if TYPE_CHECKING:
    from ecs_imds.dataplane.connection import HttpConnection
    from ecs_imds.dataplane.plane import DataPlane, ListenerState

BATCH = 64  # connections accepted per readiness event, so that reading requests goes on too
FIRST_READ = 16384  # more than a request within the limits; the rest is read by the loop
_DONTWAIT = socket.MSG_DONTWAIT
_SCARCE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
PAUSE = 0.1  # seconds without accepting when descriptors or memory run out


def accept_ready(plane: DataPlane, listening: socket.socket, listener: ListenerState,
                 loop: asyncio.AbstractEventLoop) -> None:
    """The listening socket is readable: accept the connections waiting, a batch at most."""
    family = int(listening.family)
    for _ in range(BATCH):
        try:
            # socket.accept() without its enum conversions, which cost as much as the rest
            fd, address = listening._accept()  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in _SCARCE:
                plane.warnings.warn("accept", "accepting on %s paused for %.1f s: %s",
                                    listener.vpc_id, PAUSE, exc.strerror)
                plane.pause_accepting(listening, listener, PAUSE)
            else:  # the peer gave up before we accepted (ECONNABORTED…): next one
                plane.warnings.warn("accept", "accept on %s failed: %s", listener.vpc_id,
                                    exc.strerror)
            return
        sock = socket.socket(family, socket.SOCK_STREAM, 0, fd)
        peer = address[0] if address else ""
        if ":" in peer:
            peer = normalise_ip(peer)
        if not plane.admit(peer, listener):
            sock.close()
            continue
        try:
            data: bytes | None = sock.recv(FIRST_READ, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            data = None  # accepted without data after all (TCP_DEFER_ACCEPT's timeout)
        except OSError:
            data = b""
        if data == b"":  # closed before it asked anything
            plane.release(peer)
            sock.close()
            continue
        if data is None or listener.proxy_trusted is not None or plane.access_log \
                or not answered(plane, listener, sock, peer, data, loop):
            hand_over(plane, listener, sock, peer, data or b"", loop)


def answered(plane: DataPlane, listener: ListenerState, sock: socket.socket, peer: str,
             data: bytes, loop: asyncio.AbstractEventLoop) -> bool:
    """Answer a simple GET that asks to close; False (nothing done) for anything else."""
    simple = plane.simple_requests[data]
    if simple is None:
        return False
    req, keep_alive = simple
    if keep_alive or req.method != "GET":
        return False
    snap = plane.snapshot
    caller = snap.identify(listener.vpc_id, peer, listener.aliases)
    if caller is None:
        plane.stranger(peer, listener)
    now = time.time()
    verdict = decide(req, caller, snap, now, plane.limiter, peer)
    if verdict.__class__ is Leaf:  # the common case first, by exact class: it is cheaper
        out, status = write_leaf(verdict, now, keep_alive=False), 200
    else:
        answer: Answer | Pending
        if isinstance(verdict, Leaf | Refuse):
            answer = verdict
        else:
            assert not isinstance(verdict, MintToken)  # a GET mints nothing
            answer = plane.fulfiller.answer(verdict, now)
        if isinstance(answer, asyncio.Future):  # it has to wait: the event loop carries it on
            hand_over(plane, listener, sock, peer, b"", loop).wait_for(answer, req)
            return True
        if isinstance(answer, Leaf):
            out, status = write_leaf(answer, now, keep_alive=False), 200
        else:
            out, status = write_error(answer.status, now, False, answer.headers), answer.status
    plane.stats.responses[status] += 1
    try:
        sent = sock.send(out, _DONTWAIT)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        sent = len(out)  # the peer is gone: nothing left to do
    if sent == len(out):
        plane.release(peer)
        sock.close()
    else:  # the send buffer was full: the event loop writes the rest, then closes
        hand_over(plane, listener, sock, peer, b"", loop).finish(out[sent:])
    return True


def hand_over(plane: DataPlane, listener: ListenerState, sock: socket.socket, peer: str,
              first: bytes, loop: asyncio.AbstractEventLoop) -> HttpConnection:
    """Let the event loop carry the connection on: `first` are bytes already read from it.
    The connection is returned at once; it is attached to the loop shortly."""
    conn = plane.connection(listener, peer, first)
    loop.create_task(_attach(plane, conn, sock, loop))
    return conn


async def _attach(plane: DataPlane, conn: HttpConnection, sock: socket.socket,
                  loop: asyncio.AbstractEventLoop) -> None:
    try:
        # as the loop's own server does: an answer goes out as soon as it is written
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.connect_accepted_socket(lambda: conn, sock=sock)
    except OSError:
        plane.release(conn.source)
        sock.close()
