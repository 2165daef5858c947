"""Listeners, the current snapshot, and the housekeeping of connections.

The data plane runs on one asyncio loop (uvloop). It reads `snapshot` once per request; the
change feed replaces it from its own thread through `install`, on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import time
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Network, IPv6Network, ip_network

from ecs_imds.config import Limits, Listener
from ecs_imds.dataplane.accept import accept_ready
from ecs_imds.dataplane.http import HttpConnection, SimpleRequests
from ecs_imds.dataplane.logged import LoggedConnection
from ecs_imds.dataplane.proxied import ProxiedConnection
from ecs_imds.dataplane.stats import Stats
from ecs_imds.protocol.ratelimit import RateLimiter
from ecs_imds.protocol.snapshot import Snapshot

log = logging.getLogger("ecs_imds.dataplane")

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
LISTEN_BACKLOG = 4096
# Seconds a connection may stay silent before it is accepted all the same (dataplane.accept).
DEFER_ACCEPT = 1


def _settle() -> None:
    """Move everything alive now (the snapshot above all: millions of objects on a large
    fleet) out of the cyclic garbage collector's sight. Its full collections would otherwise
    walk the whole snapshot again and again, each one a pause of the event loop; snapshots
    hold no reference cycles, so they are freed by reference counting all the same."""
    gc.freeze()


@dataclass(frozen=True, slots=True)
class ListenerState:
    vpc_id: str
    aliases: dict[str, str]
    proxy_trusted: tuple[IPv4Network | IPv6Network, ...] = ()


def bind_socket(listener: Listener, reuse_port: bool = False) -> socket.socket:
    """A listening socket; IP_FREEBIND lets it start before 100.100.100.200 is assigned."""
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    with contextlib.suppress(OSError, AttributeError):  # Linux: accept once data is there
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT)
    sock.bind((listener.host, listener.port))
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


class DataPlane:
    def __init__(self, snapshot: Snapshot, limits: Limits, access_log: bool = False) -> None:
        self.snapshot = snapshot
        self.access_log = access_log
        self.limits = limits
        self.limiter = RateLimiter(limits.rate, limits.burst)
        self.simple_requests = SimpleRequests(limits.request_line, limits.headers)
        self.connections: set[HttpConnection] = set()
        self.stats = Stats()
        self.servers: list[asyncio.AbstractServer] = []
        self.listening: list[socket.socket] = []  # the sockets accept_ready reads
        self._sweeper: asyncio.Task[None] | None = None

    def install(self, snapshot: Snapshot) -> None:
        """Swap in a new snapshot (on the loop's thread)."""
        self.snapshot = snapshot
        self.limiter.forget(snapshot.by_id)
        _settle()

    def count(self, status: int) -> None:
        self.stats.count(status)

    async def start(self, listeners: list[tuple[Listener, socket.socket]]) -> None:
        loop = asyncio.get_running_loop()
        for listener, sock in listeners:
            state = ListenerState(listener.vpc_id, listener.aliases, tuple(
                ip_network(n) for n in listener.proxy_trusted or ()))
            if self.access_log and listener.proxy_trusted is None:
                server = await loop.create_server(
                    partial(LoggedConnection, self, state), sock=sock, backlog=LISTEN_BACKLOG)
                self.servers.append(server)
            elif listener.proxy_trusted is None:
                sock.listen(LISTEN_BACKLOG)
                loop.add_reader(sock.fileno(), accept_ready, self, sock, state, loop)
                self.listening.append(sock)
            else:  # only a PROXY protocol listener pays for reading the header
                server = await loop.create_server(
                    partial(ProxiedConnection, self, state), sock=sock, backlog=LISTEN_BACKLOG)
                self.servers.append(server)
            log.info("data plane listening on %s for %s", listener.bind, listener.vpc_id)
        self._sweeper = asyncio.create_task(self._sweep())
        _settle()

    async def _sweep(self) -> None:
        """Close connections that idle too long or send a request too slowly."""
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for conn in [c for c in self.connections if c.deadline < now]:
                conn.expire()

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        loop = asyncio.get_running_loop()
        for sock in self.listening:
            loop.remove_reader(sock.fileno())
            sock.close()
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.expire()
        for server in self.servers:
            await server.wait_closed()
