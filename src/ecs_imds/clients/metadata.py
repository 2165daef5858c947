"""The client used inside an instance: plain GETs, or the token dance of hardening mode.

The endpoint comes from ECS_IMDS_ENDPOINT (default http://100.100.100.200), so the same
client works against a test server.
"""

from __future__ import annotations

import http.client
import os
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from ecs_imds.config import DEFAULT_ENDPOINT
from ecs_imds.errors import MetadataError
from ecs_imds.protocol.access import TOKEN_HEADER, TTL_HEADER


@dataclass
class MetadataClient:
    endpoint: str = ""
    timeout: float = 2.0
    retries: int = 3
    use_token: bool = False
    token_ttl: int = 21600
    source_address: str | None = None  # bind this address (on loopback: which instance)

    def __post_init__(self) -> None:
        self.endpoint = self.endpoint or os.environ.get("ECS_IMDS_ENDPOINT") or DEFAULT_ENDPOINT
        parts = urlsplit(self.endpoint)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"endpoint must be http://HOST[:PORT], not {self.endpoint!r}")
        self._host, self._port = parts.hostname, parts.port or 80
        self._token: tuple[str, float] | None = None

    def _request(self, method: str, path: str, headers: dict[str, str]
                 ) -> tuple[int, bytes]:
        last: Exception | None = None
        for attempt in range(self.retries):
            conn = http.client.HTTPConnection(
                self._host, self._port, timeout=self.timeout,
                source_address=(self.source_address, 0) if self.source_address else None)
            try:
                conn.request(method, path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status == 429 or resp.status >= 500:
                    last = MetadataError(resp.status, path, body)
                else:
                    return resp.status, body
            except OSError as exc:
                last = exc
            finally:
                conn.close()
            time.sleep(min(0.2 * 2 ** attempt, 2.0))
        assert last is not None
        raise last

    def token(self) -> str:
        """A session token, reused until shortly before it expires."""
        if self._token is None or self._token[1] < time.monotonic():
            status, body = self._request("PUT", "/latest/api/token",
                                         {TTL_HEADER: str(self.token_ttl)})
            if status != 200:
                raise MetadataError(status, "/latest/api/token", body)
            self._token = (body.decode(), time.monotonic() + self.token_ttl * 0.9)
        return self._token[0]

    def get(self, path: str) -> bytes:
        if not path.startswith("/"):
            path = "/latest/" + path
        headers = {TOKEN_HEADER: self.token()} if self.use_token else {}
        status, body = self._request("GET", path, headers)
        if status != 200:
            raise MetadataError(status, path, body)
        return body
