"""The operators' client of the control plane, used by `ecs-imds admin …`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx

from ecs_imds.errors import ControlPlaneError


class AdminClient:
    """`url` is http://HOST:PORT or unix:///path/to/api.sock."""

    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        if url.startswith("unix://"):
            transport = httpx.HTTPTransport(uds=url.removeprefix("unix://"))
            base = "http://ecs-imds"
        else:
            transport, base = httpx.HTTPTransport(), url.rstrip("/")
        self.http = httpx.Client(base_url=base, transport=transport, timeout=timeout,
                                 headers={"Authorization": f"Bearer {token}"})

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ControlPlaneError(0, "", f"control plane unreachable: {exc}") from None
        if resp.status_code >= 400:
            try:
                body = resp.json()
                raise ControlPlaneError(resp.status_code, body.get("Code", ""),
                                        body.get("Message", ""))
            except ValueError:
                raise ControlPlaneError(resp.status_code, "", resp.text[:200]) from None
        return resp

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.request(method, path, **kwargs)
        return resp.json() if resp.content else None

    def upload(self, path: str, data: bytes, progress: Callable[[int], None] | None = None,
               params: dict[str, Any] | None = None) -> Any:
        """POST a large JSON body in chunks, reporting bytes sent (for a progress bar)."""
        def chunks() -> Iterator[bytes]:
            step = 256 * 1024
            for start in range(0, len(data), step):
                chunk = data[start:start + step]
                yield chunk
                if progress is not None:
                    progress(len(chunk))

        return self.json("POST", path, content=chunks(), params=params,
                         headers={"Content-Type": "application/json",
                                  "Content-Length": str(len(data))})
