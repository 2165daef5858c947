"""A data-plane connection that writes an access log (`access-log:` in the config).

Logging costs more than answering, so it is opt-in and lives in its own connection class:
every request goes through httptools and `resolve`, and each answer adds one JSON line —
time, VPC, peer address, instance, method, path (without the query), status, bytes. Never a
header: tokens and their TTLs stay out of the log. Listeners without an access log keep the
fast paths and pay nothing for this.
"""

from __future__ import annotations

import logging
import time

from ecs_imds.dataplane.http import HttpConnection
from ecs_imds.protocol.decide import Response

access = logging.getLogger("ecs_imds.access")


class LoggedConnection(HttpConnection):
    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        if not self._closing:
            self._parse(data)

    def _write(self, resp: Response, keep_alive: bool, head_only: bool) -> None:
        super()._write(resp, keep_alive, head_only)
        url = getattr(self, "_url", b"")
        caller = self.plane.snapshot.identify(self.listener.vpc_id, self.peer_ip,
                                              self.listener.aliases)
        access.info({
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "vpc-id": self.listener.vpc_id, "peer": self.peer_ip,
            "instance-id": caller.instance_id if caller else None,
            "method": getattr(self, "_method", ""),
            "path": url.split(b"?", 1)[0].decode("latin-1")[:256],
            "status": resp.status, "bytes": 0 if head_only else len(resp.body)})
