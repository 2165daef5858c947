"""The data plane of one process: listeners, the current snapshot, the connections.

It runs on one asyncio loop (uvloop). It reads `snapshot` once per request; the change feed
replaces it from its own thread through `install`, on the loop.

Connections are bounded (SPEC §8): at most `connections-per-source` from one source address
(a trusted PROXY protocol peer, which carries many instances, is bound only by the total),
and at most `max_connections` in all, kept below the process's descriptor limit (raised to
its hard limit at start) so that accepting can never run out of descriptors. At a cap the
new connection is closed at once; everyone else is still accepted. Where the total is no
more than one source's cap (a low descriptor limit), that cap is lowered to a quarter of
the total, so that no one source can take them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import socket
import time
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

from ecs_imds.config import Limits, Listener
from ecs_imds.dataplane.accept import accept_ready
from ecs_imds.dataplane.connection import HttpConnection
from ecs_imds.dataplane.fastpath import SimpleRequests
from ecs_imds.dataplane.fulfil import Fulfiller
from ecs_imds.dataplane.memory import BACKED_UP, Trimmer
from ecs_imds.dataplane.proxy import ProxyFront
from ecs_imds.dataplane.stats import Stats
from ecs_imds.dataplane.warnings import Warnings
from ecs_imds.protocol.decide import Request
from ecs_imds.protocol.ratelimit import RateLimiter
from ecs_imds.protocol.snapshot import Snapshot

log = logging.getLogger("ecs_imds.dataplane")
access = logging.getLogger("ecs_imds.access")

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
LISTEN_BACKLOG = 4096
# Seconds a connection may stay silent before it is accepted all the same (dataplane.accept).
DEFER_ACCEPT = 1
# Descriptors kept for everything but instance connections: the store, the control plane,
# log files, the credential command's pipes.
RESERVED_DESCRIPTORS = 256
# Unknown sources remembered for the debug log (DataPlane.stranger); past it, none is said.
MAX_STRANGERS = 4096
# The kernel's send buffer of each connection (it doubles what is asked). Left to itself it
# grows to net.ipv4.tcp_wmem's maximum (4 MiB): answers a peer never reads would sit there,
# out of the sight of `limits.write-buffer`. Answers are a few KiB; this holds plenty.
SEND_BUFFER = 64 * 1024


# Long-lived objects the collector still watches beyond which they are frozen (see _settle):
# a full collection of this many is a pause of a few milliseconds.
SETTLE_ABOVE = 100_000
# Seconds between two looks at how many that is: a look walks them all (a millisecond or
# more of the event loop), and snapshots come as often as the fleet changes.
SETTLE_EVERY = 5.0


def _settle(always: bool = False) -> None:
    """Move everything alive now (the snapshot above all: millions of objects on a large
    fleet) out of the cyclic garbage collector's sight. Its full collections would otherwise
    walk the whole snapshot again and again, each one a pause of the event loop; snapshots
    hold no reference cycles, so they are freed by reference counting all the same.

    Only when many long-lived objects came since (a large build, instances rendered on
    their first request), or `always`: freezing also makes permanent whatever reference
    cycles are alive at that moment (a control-plane request in flight), which would
    otherwise leak a little at every small change of the fleet."""
    if always or len(gc.get_objects(generation=2)) > SETTLE_ABOVE:
        gc.freeze()


@dataclass(frozen=True, slots=True)
class ListenerState:
    vpc_id: str
    aliases: dict[str, str]
    proxy_trusted: tuple[IPv4Network | IPv6Network, ...] | None = None

    def trusts(self, peer: str) -> bool:
        """Whether `peer` is a trusted PROXY protocol peer of this listener."""
        if not self.proxy_trusted:
            return False
        try:
            address = ip_address(peer)
        except ValueError:
            return False
        return any(address in net for net in self.proxy_trusted)


def bind_socket(listener: Listener, reuse_port: bool = False) -> socket.socket:
    """A bound socket, not listening yet (connections are refused until `start`);
    IP_FREEBIND lets it start before 100.100.100.200 is assigned."""
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    with contextlib.suppress(OSError, AttributeError):  # Linux: accept once data is there
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT)
    # Set on the listening socket, it is every accepted connection's from the start.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    sock.bind((listener.host, listener.port))
    sock.setblocking(False)
    return sock


def descriptor_budget() -> int:
    """Raise the soft descriptor limit to the hard one; what instance connections may use."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return max(16, soft - RESERVED_DESCRIPTORS)


class DataPlane:
    def __init__(self, snapshot: Snapshot, limits: Limits, fulfiller: Fulfiller,
                 access_log: bool = False) -> None:
        self.snapshot = snapshot
        self.limits = limits
        self.fulfiller = fulfiller
        self.access_log = access_log
        self.limiter = RateLimiter(limits.rate, limits.burst)
        self.simple_requests = SimpleRequests(limits.request_line, limits.headers)
        self.connections: set[HttpConnection] = set()
        self.per_source: dict[str, int] = {}  # source address → connections open
        self.open = 0  # connections admitted and not yet ended
        budget = descriptor_budget()
        self.max_connections = min(limits.max_connections or budget, budget)
        self.source_cap = limits.connections_per_source
        if self.source_cap >= self.max_connections:
            self.source_cap = max(1, self.max_connections // 4)
            log.warning("limits.connections-per-source lowered to %d, a quarter of the %d "
                        "connections this process takes in all (limits.max-connections, or "
                        "its descriptor limit less %d: raise it with ulimit -n)",
                        self.source_cap, self.max_connections, RESERVED_DESCRIPTORS)
        self.stats = Stats()
        self.warnings = Warnings(log)
        self.trimmer = Trimmer(tail=max(limits.idle_timeout, limits.request_timeout) + 2)
        self._strangers: set[tuple[str, str]] = set()  # (VPC, source) said to be no instance
        self.listening: list[socket.socket] = []  # the sockets accept_ready reads
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._settled_at = -SETTLE_EVERY  # monotonic time of the last look (see settle)
        self._settle_due = False  # a snapshot came since that look

    def install(self, snapshot: Snapshot) -> None:
        """Swap in a new snapshot (on the loop's thread)."""
        self.snapshot = snapshot
        self.limiter.forget(snapshot.by_id)
        self._settle_due = True
        self.settle(time.monotonic())

    def settle(self, now: float) -> None:
        """`_settle` once a snapshot came since the last look, and at most every
        SETTLE_EVERY seconds; the sweeper calls it too, so the last snapshot of a burst is
        looked at even when none follows it."""
        if self._settle_due and now - self._settled_at >= SETTLE_EVERY:
            self._settled_at = now
            self._settle_due = False
            _settle()

    def stranger(self, source: str, listener: ListenerState) -> None:
        """A request from an address that is no instance's (it gets 403). With the debug log
        on (`-v`) that is said once per source, so a caller that should be known shows up
        without a line per request; the memory of sources said is bounded."""
        key = (listener.vpc_id, source)
        if key in self._strangers or not log.isEnabledFor(logging.DEBUG) or len(
                self._strangers) >= MAX_STRANGERS:
            return
        self._strangers.add(key)
        log.debug("refusing %s on %s (403): no instance of the fleet has that address in "
                  "that VPC, nor is it a listener alias; said once per source", source,
                  listener.vpc_id)

    # -- connections ---------------------------------------------------------------------
    def admit(self, source: str, listener: ListenerState) -> bool:
        """Whether a new connection from `source` may be had; counts it when it may."""
        if self.open >= self.max_connections:
            self.warnings.warn("connections", "refused a connection from %s: %d connections "
                               "open, the most this server takes", source, self.max_connections)
            return False
        per_source = self.per_source
        count = per_source.get(source, 0)
        if count >= self.source_cap and not listener.trusts(source):
            self.warnings.warn("source", "refused a connection from %s: %d connections "
                               "open from it, the most one source may have", source,
                               self.source_cap)
            return False
        per_source[source] = count + 1
        self.open += 1
        return True

    def release(self, source: str, backed_up: bool = False) -> None:
        """A connection admitted has ended; `backed_up`: with answers unsent past the
        transport's high-water mark (memory worth giving back)."""
        self.open -= 1
        self.trimmer.ended += BACKED_UP if backed_up else 1
        left = self.per_source.pop(source, 1) - 1
        if left > 0:
            self.per_source[source] = left

    def connection(self, listener: ListenerState, source: str, first: bytes
                   ) -> HttpConnection:
        """A connection with the options its listener and this plane ask for."""
        front = None
        if listener.proxy_trusted is not None:
            front = ProxyFront(listener.trusts(source))
        return HttpConnection(self, listener, source, first, front,
                              self._log_access if self.access_log else None,
                              self.stats.sampled())

    def forget(self, conn: HttpConnection) -> None:
        """A connection ended (connection_lost)."""
        if conn in self.connections:
            self.connections.discard(conn)
            self.release(conn.source, conn.backed_up)

    def _log_access(self, conn: HttpConnection, req: Request | None, status: int,
                    sent: int) -> None:
        """One JSON line per answer; never a header (tokens and TTLs stay out)."""
        caller = conn.caller
        access.info({
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "vpc-id": conn.listener.vpc_id, "peer": conn.peer_ip,
            "instance-id": caller.instance_id if caller else None,
            "method": req.method if req else None,
            "path": req.path[:256] if req else None,
            "status": status, "bytes": sent})

    # -- listening -----------------------------------------------------------------------
    async def start(self, listeners: list[tuple[Listener, socket.socket]]) -> None:
        loop = self._loop = asyncio.get_running_loop()
        for listener, sock in listeners:
            state = ListenerState(listener.vpc_id, listener.aliases, None
                                  if listener.proxy_trusted is None else
                                  tuple(ip_network(n) for n in listener.proxy_trusted))
            sock.listen(LISTEN_BACKLOG)
            loop.add_reader(sock.fileno(), accept_ready, self, sock, state, loop)
            self.listening.append(sock)
            log.info("data plane listening on %s for %s", listener.bind, listener.vpc_id)
        self._sweeper = asyncio.create_task(self._sweep())
        _settle(always=True)

    def pause_accepting(self, sock: socket.socket, state: ListenerState, seconds: float
                        ) -> None:
        """Out of descriptors (or kernel memory): stop accepting on `sock` for a while
        rather than be woken for it again and again."""
        loop = self._loop
        assert loop is not None
        loop.remove_reader(sock.fileno())
        loop.call_later(seconds, self._resume_accepting, sock, state)

    def _resume_accepting(self, sock: socket.socket, state: ListenerState) -> None:
        if self._loop is not None and sock in self.listening:
            self._loop.add_reader(sock.fileno(), accept_ready, self, sock, state, self._loop)

    async def _sweep(self) -> None:
        """Close connections that idle too long, send a request too slowly, or do not read
        their answers; give memory back after a burst of them."""
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for conn in [c for c in self.connections if c.deadline < now]:
                conn.expire()
            self.trimmer.tick()
            self.settle(now)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        loop = asyncio.get_running_loop()
        for sock in self.listening:
            loop.remove_reader(sock.fileno())
            sock.close()
        self.listening.clear()
        for conn in list(self.connections):
            conn.expire()
        self.fulfiller.close()
