"""What a test changes in the fleet while it runs, each change served when the call returns.

Every call goes through the control plane's REST API (the same calls `ecs-imds admin`
makes); afterwards it waits until the data plane's snapshot holds the change, so the next
request a test makes already sees it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ecs_imds.clients.control import AdminClient
from ecs_imds.errors import MetadataError

if TYPE_CHECKING:
    from ecs_imds.testing.server import ImdsServer

WAIT = 10.0


def utc(when: datetime | str) -> str:
    """Alibaba's time format, `2026-11-28T17:03:00Z`."""
    if isinstance(when, str):
        return when
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FleetAdmin:
    def __init__(self, client: AdminClient, server: ImdsServer,
                 store_version: Callable[[], int]) -> None:
        self.client = client  # the raw API client, for anything not below
        self._server = server
        self._store_version = store_version
        self.changed = False  # something was written since the last reset

    def _write(self, method: str, path: str, **kwargs: Any) -> Any:
        result = self.client.json(method, path, **kwargs)
        self.changed = True
        self.wait_served()
        return result

    def wait_served(self, timeout: float = WAIT) -> None:
        """Until the data plane serves the store as it is now."""
        wanted = self._store_version()
        deadline = time.monotonic() + timeout
        while (self.client.http.get("/readyz").json().get("version") or 0) < wanted:
            if time.monotonic() > deadline:
                raise TimeoutError(f"store version {wanted} not served in {timeout:g} s")
            time.sleep(0.01)

    # -- the fleet -------------------------------------------------------------------------
    def load(self, fleet: dict[str, Any], replace: bool = False) -> None:
        """Import a fleet document (with `replace`, instances not in it are removed)."""
        self._write("POST", "/v1/fleet", json=fleet,
                    params={"replace": "true"} if replace else None)

    def add_instance(self, doc: dict[str, Any]) -> str:
        """Create an instance; returns the loopback source address that stands for it."""
        self._write("POST", "/v1/instances", json=doc)
        iid = doc["instance-id"]
        server = self._server
        taken = {int(a.rsplit(".", 1)[1]) + 256 * int(a.split(".")[2])
                 for a in server.addresses}
        n = next(n for n in range(1, 1 << 16) if n not in taken and n % 256 not in (0, 255))
        address = f"127.0.{n // 256}.{n % 256}"
        server.addresses[address] = iid
        server.reload_aliases()
        if (doc.get("metadata-options") or {}).get("http-endpoint") == "disabled":
            return address  # it answers nothing: there is nothing to wait for
        deadline = time.monotonic() + WAIT
        while True:  # the reload is done when that address is that instance
            try:
                if server.client(iid, token=True).get("meta-data/instance-id") == iid.encode():
                    return address
            except MetadataError:  # not yet: the address is still no instance's (403)
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def delete_instance(self, instance_id: str) -> None:
        self._write("DELETE", f"/v1/instances/{instance_id}")

    def instance(self, instance_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.client.json("GET", f"/v1/instances/{instance_id}")
        return doc

    # -- one instance ------------------------------------------------------------------------
    def set_options(self, instance_id: str, *, http_tokens: str | None = None,
                    http_endpoint: str | None = None, hop_limit: int | None = None,
                    instance_metadata_tags: str | None = None) -> dict[str, Any]:
        """ModifyInstanceMetadataOptions: `http_tokens="required"` is hardened mode."""
        body = {"HttpTokens": http_tokens, "HttpEndpoint": http_endpoint,
                "HttpPutResponseHopLimit": hop_limit,
                "InstanceMetadataTags": instance_metadata_tags}
        result: dict[str, Any] = self._write(
            "PATCH", f"/v1/instances/{instance_id}/metadata-options",
            json={k: v for k, v in body.items() if v is not None})
        return result

    def schedule_spot_reclaim(self, instance_id: str, at: datetime | str | None = None,
                              in_seconds: float = 120) -> str:
        """Schedule the reclaim (`instance/spot/termination-time`); returns its time."""
        when = utc(at or datetime.now(UTC) + timedelta(seconds=in_seconds))
        self._write("PUT", f"/v1/instances/{instance_id}/spot", json={"TerminationTime": when})
        return when

    def cancel_spot_reclaim(self, instance_id: str) -> None:
        self._write("DELETE", f"/v1/instances/{instance_id}/spot")

    def add_event(self, instance_id: str, event_type: str = "SystemMaintenance.Reboot",
                  not_before: datetime | str | None = None, reason: str = "",
                  status: str = "Scheduled") -> str:
        """An active system event (`maintenance/active-system-events`); returns its id."""
        body = {"EventType": event_type, "Reason": reason, "EventCycleStatus": status,
                **({"NotBefore": utc(not_before)} if not_before else {})}
        result = self._write("POST", f"/v1/instances/{instance_id}/events", json=body)
        return str(result["EventId"])

    def cancel_event(self, instance_id: str, event_id: str) -> None:
        self._write("DELETE", f"/v1/instances/{instance_id}/events/{event_id}")

    def attach_role(self, instance_id: str, role: str) -> None:
        self._write("PUT", f"/v1/instances/{instance_id}/ram-role", json={"RamRoleName": role})

    def detach_role(self, instance_id: str) -> None:
        self._write("DELETE", f"/v1/instances/{instance_id}/ram-role")

    # -- keys -------------------------------------------------------------------------------
    def rotate_token_key(self) -> None:
        """New tokens are minted with a new key; older tokens stay valid until they expire."""
        self._write("POST", "/v1/keys/token/rotate")

    def rotate_identity_key(self) -> None:
        """A new identity signing key and certificate (`identity_certificate()`)."""
        self._write("POST", "/v1/keys/identity/rotate")

    def identity_certificate(self) -> bytes:
        """The PEM certificate that verifies identity signatures."""
        return self.client.request("GET", "/v1/identity/certificate").content
