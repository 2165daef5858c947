"""Operations through the control plane, their effect observed from inside instances."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from e2e import ROLE, A, C, curl, token
from ecs_imds.clients.control import AdminClient
from netns import Topology
from server import ServerProcess


@pytest.fixture
def api(server: ServerProcess) -> Iterator[AdminClient]:
    client = server.api()
    yield client
    client.http.close()


def settle(server: ServerProcess, api: AdminClient, instance_id: str) -> None:
    """Wait until the data plane serves the instance's latest revision (its ETag)."""
    etag = api.request("GET", f"/v1/instances/{instance_id}").headers["etag"]
    server.wait_version(int(etag.strip('"')))


def _until(topo: Topology, who: str, path: str, want: int, *args: str) -> bytes:
    deadline = time.monotonic() + 10
    while True:
        status, body = curl(topo, who, path, *args)
        if status == want:
            return body
        assert time.monotonic() < deadline, f"{path} stayed {status}, wanted {want}"
        time.sleep(0.05)


def test_http_tokens_required_turns_plain_gets_into_403(topo: Topology, server: ServerProcess,
                                                        api: AdminClient) -> None:
    options = f"/v1/instances/{A}/metadata-options"
    assert curl(topo, "a", "/latest/meta-data/instance-id")[0] == 200
    api.json("PATCH", options, json={"HttpTokens": "required"})
    _until(topo, "a", "/latest/meta-data/instance-id", 403)
    status, tok = token(topo, "a")
    assert status == 200
    assert curl(topo, "a", "/latest/meta-data/instance-id",
                "-H", f"X-aliyun-ecs-metadata-token: {tok.decode()}") == (200, A.encode())
    api.json("PATCH", options, json={"HttpTokens": "optional"})
    _until(topo, "a", "/latest/meta-data/instance-id", 200)


def test_http_endpoint_disabled_refuses_everything(topo: Topology, server: ServerProcess,
                                                   api: AdminClient) -> None:
    options = f"/v1/instances/{C}/metadata-options"
    api.json("PATCH", options, json={"HttpEndpoint": "disabled"})
    _until(topo, "c", "/latest/meta-data/instance-id", 403)
    assert curl(topo, "c", "/")[0] == 403
    api.json("PATCH", options, json={"HttpEndpoint": "enabled"})
    _until(topo, "c", "/latest/meta-data/instance-id", 200)


def test_tags_appear_only_when_enabled(topo: Topology, server: ServerProcess,
                                       api: AdminClient) -> None:
    api.json("PUT", f"/v1/instances/{C}/tags",
             json={"Tags": {"env": "prod", "bad key": "x", "a/b": "y"}})
    settle(server, api, C)
    assert curl(topo, "c", "/latest/meta-data/tags/instance/")[0] == 404
    api.json("PATCH", f"/v1/instances/{C}/metadata-options",
             json={"InstanceMetadataTags": "enabled"})
    assert _until(topo, "c", "/latest/meta-data/tags/instance/", 200) == b"env"
    assert curl(topo, "c", "/latest/meta-data/tags/instance/env") == (200, b"prod")
    api.json("PATCH", f"/v1/instances/{C}/metadata-options",
             json={"InstanceMetadataTags": "disabled"})
    _until(topo, "c", "/latest/meta-data/tags/instance/", 404)


def test_attached_role_shows_credentials(topo: Topology, server: ServerProcess,
                                         api: AdminClient) -> None:
    listing = "/latest/meta-data/ram/security-credentials/"
    assert curl(topo, "c", listing)[0] == 404
    api.json("PUT", f"/v1/instances/{C}/ram-role", json={"RamRoleName": "c-role"})
    assert _until(topo, "c", listing, 200) == b"c-role"
    cred = json.loads(curl(topo, "c", listing + "c-role")[1])
    assert cred["Code"] == "Success" and cred["AccessKeyId"].startswith("STS.")
    verdict = api.json("POST", "/v1/credentials/verify",
                       json={"AccessKeyId": cred["AccessKeyId"],
                             "SecurityToken": cred["SecurityToken"]})
    assert verdict["InstanceId"] == C and verdict["RoleName"] == "c-role" and verdict["Valid"]
    api.json("DELETE", f"/v1/instances/{C}/ram-role")
    _until(topo, "c", listing, 404)
    assert curl(topo, "a", listing) == (200, ROLE.encode())


def test_scheduled_reclaim_shows_termination_time(topo: Topology, server: ServerProcess,
                                                  api: AdminClient) -> None:
    path = "/latest/meta-data/instance/spot/termination-time"
    api.json("PUT", f"/v1/instances/{C}/spot", json={"TerminationTime": "2026-12-24T08:00:00Z"})
    assert _until(topo, "c", path, 200) == b"2026-12-24T08:00:00Z"
    api.json("DELETE", f"/v1/instances/{C}/spot")
    _until(topo, "c", path, 404)


def test_user_data_through_the_api(topo: Topology, server: ServerProcess,
                                   api: AdminClient) -> None:
    import base64

    script = b"#!/bin/sh\necho from-api\n"
    api.json("PUT", f"/v1/instances/{C}/user-data",
             json={"UserData": base64.b64encode(script).decode()})
    assert _until(topo, "c", "/latest/user-data", 200) == script
    assert b"user-data" in curl(topo, "c", "/latest/")[1]
    api.json("DELETE", f"/v1/instances/{C}/user-data")
    _until(topo, "c", "/latest/user-data", 404)
