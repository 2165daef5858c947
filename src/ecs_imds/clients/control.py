"""The operators' client of the control plane, used by `ecs-imds admin …`.

A failure is one of three things, and the client says which: the server answered with an
error (`ControlPlaneError` with its status and code); the request never reached it (status
0: nothing was changed); or a change was sent and the answer was lost (`OutcomeUnknown`:
it may have been made — look before trying again, or send an import again with the same
idempotency key).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from ecs_imds.errors import ControlPlaneError, OutcomeUnknown

NDJSON = "application/x-ndjson"
# Errors that mean the request never left: nothing can have been changed.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout,
             httpx.UnsupportedProtocol)

# What an import's progress reports: (stage, done, total); stage "upload" counts bytes.
Progress = Callable[[str, int, int], None]


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
            raise _lost(method, exc) from None
        if resp.status_code >= 400:
            raise _refused(resp.status_code, resp.content)
        return resp

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.request(method, path, **kwargs)
        return resp.json() if resp.content else None

    def import_fleet(self, data: bytes, replace: bool = False, key: str | None = None,
                     progress: Progress | None = None) -> dict[str, Any]:
        """POST a fleet file (JSON bytes) in chunks and follow the server's work as it
        reports it; the result (`Version`, `Instances`, `Replayed`)."""
        report = progress or (lambda stage, done, total: None)

        def chunks() -> Iterator[bytes]:
            step = 256 * 1024
            for start in range(0, len(data), step):
                yield data[start:start + step]
                report("upload", min(start + step, len(data)), len(data))

        headers = {"Content-Type": "application/json", "Content-Length": str(len(data)),
                   "Accept": NDJSON, **({"Idempotency-Key": key} if key else {})}
        params = {"replace": "true"} if replace else None
        try:
            with self.http.stream("POST", "/v1/fleet", content=chunks(), params=params,
                                  headers=headers, timeout=httpx.Timeout(60, read=600)) as resp:
                if resp.status_code >= 400:
                    raise _refused(resp.status_code, resp.read())
                for line in resp.iter_lines():
                    event = json.loads(line) if line.strip() else {}
                    if "Stage" in event:
                        report(event["Stage"], event["Done"], event["Total"])
                    elif "Error" in event:
                        found = event["Error"]
                        raise ControlPlaneError(found["Status"], found["Code"],
                                                found["Message"])
                    elif "Result" in event:
                        return {**event["Result"], "Replayed": event["Replayed"]}
        except httpx.HTTPError as exc:
            raise _lost("POST", exc) from None
        raise OutcomeUnknown(0, "", "the server stopped answering before the import ended")

    def plan_import(self, data: bytes, replace: bool = False) -> dict[str, Any]:
        """What importing `data` would change (a dry run: nothing is changed)."""
        params = {"dry-run": "true", **({"replace": "true"} if replace else {})}
        plan: dict[str, Any] = self.json("POST", "/v1/fleet", content=data, params=params,
                                         headers={"Content-Type": "application/json"})
        return plan


def _lost(method: str, exc: httpx.HTTPError) -> ControlPlaneError:
    """No answer: either the request never left, or a change may have been made."""
    if isinstance(exc, _NOT_SENT) or method in ("GET", "HEAD"):
        return ControlPlaneError(0, "", f"control plane unreachable: {exc}")
    return OutcomeUnknown(0, "", f"the connection was lost after the request was sent "
                                 f"({exc or type(exc).__name__})")


def _refused(status: int, body: bytes) -> ControlPlaneError:
    try:
        doc = json.loads(body)
        return ControlPlaneError(status, doc.get("Code", ""), doc.get("Message", ""))
    except (ValueError, AttributeError):
        return ControlPlaneError(status, "", body[:200].decode(errors="replace"))
