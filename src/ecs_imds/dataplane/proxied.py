"""An HTTP connection on a listener that speaks PROXY protocol v2 (`proxy-protocol:` in the
listener's config), for deployments with a per-host proxy in front.

From a trusted peer (the proxy) the header is required: its source address becomes the
peer address that identifies the instance, and a connection without a valid header is
closed. From any other peer, a connection that starts with the v2 signature is closed
(someone claiming to be a proxy), and plain HTTP is served with the real peer address.

Once the first bytes are settled, every later chunk goes straight to `HttpConnection`:
listeners without PROXY protocol use `HttpConnection` itself and pay nothing for this.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import TYPE_CHECKING

from ecs_imds.dataplane import proxy
from ecs_imds.dataplane.http import HttpConnection
from ecs_imds.protocol.snapshot import normalise_ip

if TYPE_CHECKING:
    from ecs_imds.dataplane.plane import DataPlane, ListenerState

log = logging.getLogger("ecs_imds.dataplane")


class ProxiedConnection(HttpConnection):
    __slots__ = ("_pending", "_trusted_peer")

    def __init__(self, plane: DataPlane, listener: ListenerState) -> None:
        super().__init__(plane, listener)
        self._pending: bytes | None = b""  # None once the connection's start is settled
        self._trusted_peer = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        try:
            peer = ipaddress.ip_address(self.peer_ip)
        except ValueError:
            return
        self._trusted_peer = any(peer in net for net in self.listener.proxy_trusted)

    def data_received(self, data: bytes) -> None:
        if self._pending is None:
            HttpConnection.data_received(self, data)
            return
        data = self._pending + data
        if self._trusted_peer:
            parsed = proxy.parse(data)
            if isinstance(parsed, proxy.Incomplete):
                self._pending = data
                return
            if isinstance(parsed, proxy.Invalid):
                self._refuse(parsed.reason)
                return
            if parsed.source is not None:
                self.peer_ip = normalise_ip(parsed.source)
            data = data[parsed.length:]
        else:
            looks = proxy.looks_like_proxy(data)
            if looks is None:
                self._pending = data
                return
            if looks:
                self._refuse("PROXY protocol header from an untrusted peer")
                return
        self._pending = None
        if data:
            HttpConnection.data_received(self, data)

    def _refuse(self, reason: str) -> None:
        """Close without an answer: whoever sent this is not speaking to us as expected."""
        log.warning("refused a connection from %s on %s: %s", self.peer_ip,
                    self.listener.vpc_id, reason)
        self._pending = None
        self._close()
