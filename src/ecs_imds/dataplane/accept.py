"""Accepting connections ourselves, so that a one-request connection costs little.

Many clients open a connection per request (`Connection: close`). Through the event loop's
own server, each such connection costs a transport, a protocol, callbacks scheduled for its
start and end, its registration with epoll and its removal: more than the request itself.
So a listener's socket is read here: it has TCP_DEFER_ACCEPT, so a connection is accepted
once its first bytes are there; when they are a whole simple GET that asks for the
connection to close, it is answered and closed on the spot (accept, recv, send, close).
Any other connection — keep-alive, a PUT, a request not complete in its first read — is
handed to the event loop with the bytes already read, and `HttpConnection` goes on from
there exactly as if it had read them itself.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING

from ecs_imds.dataplane.http import HttpConnection, render_leaf, render_response
from ecs_imds.dataplane.timed import TimedConnection
from ecs_imds.protocol.catalogue import Leaf
from ecs_imds.protocol.decide import resolve_get
from ecs_imds.protocol.snapshot import normalise_ip

if TYPE_CHECKING:
    from ecs_imds.dataplane.plane import DataPlane, ListenerState

log = logging.getLogger("ecs_imds.dataplane")

BATCH = 64  # connections accepted per readiness event, so that reading requests goes on too
FIRST_READ = 16384  # more than a request within the limits; the rest is read by the loop
_DONTWAIT = socket.MSG_DONTWAIT


def accept_ready(plane: DataPlane, listening: socket.socket, listener: ListenerState,
                 loop: asyncio.AbstractEventLoop) -> None:
    """The listening socket is readable: accept the connections waiting, a batch at most."""
    family = int(listening.family)
    for _ in range(BATCH):
        try:
            # socket.accept() without its enum conversions, which cost as much as the rest
            fd, address = listening._accept()  # type: ignore[attr-defined]
            sock = socket.socket(family, socket.SOCK_STREAM, 0, fd)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # out of descriptors, and the like: try again later
            log.warning("accept on %s failed: %s", listener.vpc_id, exc)
            return
        try:
            data = sock.recv(FIRST_READ, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            data = None  # accepted without data after all (TCP_DEFER_ACCEPT's timeout)
        except OSError:
            sock.close()
            continue
        if data == b"":  # closed before it asked anything
            sock.close()
            continue
        try:
            peer = address[0] if address else ""
            if ":" in peer:
                peer = normalise_ip(peer)
            if data is None or not answered(plane, listener, sock, peer, data, loop):
                hand_over(plane, listener, sock, data or b"", b"", loop)
        except Exception:  # a bug must cost one connection, not the descriptor or the batch
            log.exception("connection from %s on %s failed", address, listener.vpc_id)
            sock.close()


def answered(plane: DataPlane, listener: ListenerState, sock: socket.socket, peer: str,
             data: bytes, loop: asyncio.AbstractEventLoop) -> bool:
    """Answer a simple GET asking to close; False (nothing done) for anything else."""
    simple = plane.simple_requests[data]
    if simple is None:
        return False
    method, target, token, _, keep_alive = simple
    if keep_alive or method != "GET":
        return False
    snap = plane.snapshot
    caller = snap.identify(listener.vpc_id, peer, listener.aliases)
    now = time.time()
    limiter = plane.limiter
    answer = resolve_get(target, token, caller, snap, now, limiter if limiter.rate else None)
    if isinstance(answer, Leaf):
        out, status = render_leaf(answer, now, False), 200
    else:
        out, status = render_response(answer, False, False), answer.status
    plane.count(status)
    try:
        sent = sock.send(out, _DONTWAIT)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        sock.close()
        return True
    if sent == len(out):
        sock.close()
    else:  # the send buffer was full: the event loop writes the rest, then closes
        hand_over(plane, listener, sock, b"", out[sent:], loop)
    return True


def hand_over(plane: DataPlane, listener: ListenerState, sock: socket.socket, first: bytes,
              unsent: bytes, loop: asyncio.AbstractEventLoop) -> None:
    """Let the event loop carry the connection on: `first` are bytes already read from it,
    `unsent` the end of an answer to write before closing it."""
    loop.create_task(_attach(plane, listener, sock, first, unsent, loop))


async def _attach(plane: DataPlane, listener: ListenerState, sock: socket.socket,
                  first: bytes, unsent: bytes, loop: asyncio.AbstractEventLoop) -> None:
    try:
        # as the loop's own server does: an answer goes out as soon as it is written
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cls = TimedConnection if plane.stats.sampled() else HttpConnection
        await loop.connect_accepted_socket(
            lambda: cls(plane, listener, first=first, unsent=unsent), sock=sock)
    except OSError as exc:
        log.debug("connection lost before it was handed over: %s", exc)
        sock.close()
