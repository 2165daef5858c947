"""Real servers scoped to hosts, on one store (SQLite file or PostgreSQL): each serves only
the instances placed on its hosts; an instance moved to another host (ModifyInstanceDeployment
or a PATCH of `dedicated-host-id`) moves to that host's server; tokens and credentials are
the fleet's, whichever server answers.

The instances call from 127.0.0.x, their own addresses in the fleet: identity is found by
address as on a real host. Waits are bounded polls; durations are not asserted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from pg import PostgresCluster, wait_until
from server import ServerProcess, free_port, get

VPC = "vpc-scope0001"
TOKEN = "X-aliyun-ecs-metadata-token"
ROLE = "scope-role"


def placed(n: int, host: str | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"instance-id": f"i-scope{n}", "ram-role": ROLE, "network-interfaces": [{
        "mac": f"00:16:3e:5c:00:{n:02x}", "network-interface-id": f"eni-scope{n}",
        "vpc-id": VPC, "vswitch-id": "vsw-scope", "private-ipv4s": [f"127.0.0.{10 + n}"],
        "vswitch-cidr-block": "127.0.0.0/24", "vpc-cidr-block": "127.0.0.0/8"}]}
    if host:
        doc["dedicated-host-id"] = host
    return doc


FLEET = {"defaults": {"region-id": "cn-shanghai", "zone-id": "cn-shanghai-b",
                      "owner-account-id": "1234567890", "image-id": "ubuntu_22_04_x64",
                      "instance-type": "ecs.g7.large"},
         "instances": [placed(1, "h1"), placed(2, "h1"), placed(3, "h2"), placed(4, None)]}


def ip(n: int) -> str:
    return f"127.0.0.{10 + n}"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def servers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, ServerProcess]]:
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path_factory.mktemp('store')}/imds.db"
    else:
        pg: PostgresCluster = request.getfixturevalue("postgres")
        url = pg.create_database("scope")
    made: dict[str, ServerProcess] = {}
    try:
        for name, scope in (("all", None), ("h1", ["h1"]), ("h2", ["h2"])):
            port = free_port()
            settings: dict[str, Any] = {"store": url, "limits": {"rate": 0}}
            if scope:
                settings["scope"] = {"hosts": scope}
            srv = ServerProcess(tmp_path_factory.mktemp(name), FLEET,
                                [{"bind": f"127.0.0.1:{port}", "vpc-id": VPC}], **settings)
            srv.port = port
            if not made:
                srv.start()
            else:
                srv.launch()
            made[name] = srv
        version = made["all"].api().http.get("/readyz").json()["version"]
        for srv in made.values():
            srv.wait_version(version)
        yield made
    finally:
        for srv in made.values():
            srv.cleanup()
        if request.param == "postgresql":
            pg.drop_database(url)


def serves(srv: ServerProcess, n: int) -> bool:
    status, _, body = get(srv.port, "/latest/meta-data/instance-id", ip(n))
    assert status in (200, 403), status
    return status == 200 and body == f"i-scope{n}".encode()


def served(srv: ServerProcess) -> set[int]:
    return {n for n in range(1, 5) if serves(srv, n)}


def test_each_server_serves_its_hosts_instances(servers: dict[str, ServerProcess]) -> None:
    assert served(servers["all"]) == {1, 2, 3, 4}
    assert served(servers["h1"]) == {1, 2}
    assert served(servers["h2"]) == {3}
    counts = {name: s.api().http.get("/readyz").json()["instances"]
              for name, s in servers.items()}
    assert counts == {"all": 4, "h1": 2, "h2": 1}


def test_tokens_and_credentials_are_the_fleets(servers: dict[str, ServerProcess]) -> None:
    ttl = {"X-aliyun-ecs-metadata-token-ttl-seconds": "300"}
    status, _, tok = get(servers["h1"].port, "/latest/api/token", ip(1), ttl, method="PUT")
    assert status == 200
    assert get(servers["all"].port, "/latest/meta-data/instance-id", ip(1),
               {TOKEN: tok.decode()})[2] == b"i-scope1"
    path = f"/latest/meta-data/ram/security-credentials/{ROLE}"
    first, second = get(servers["h1"].port, path, ip(1)), get(servers["all"].port, path, ip(1))
    assert first[0] == 200 and first[2] == second[2]
    assert json.loads(first[2])["Code"] == "Success"


def test_a_moved_instance_moves_between_servers(servers: dict[str, ServerProcess]) -> None:
    api = servers["h2"].api()
    moved = api.http.put("/v1/instances/i-scope2/deployment", json={"DedicatedHostId": "h2"})
    assert moved.status_code == 200, moved.text
    assert moved.json() == {"InstanceId": "i-scope2", "DedicatedHostId": "h2"}
    wait_until(lambda: served(servers["h2"]) == {2, 3} and served(servers["h1"]) == {1})
    assert api.http.get("/v1/instances/i-scope2/deployment").json()["DedicatedHostId"] == "h2"
    # the same through a merge patch of the document
    patched = api.http.patch("/v1/instances/i-scope2", json={"dedicated-host-id": "h1"})
    assert patched.status_code == 200 and patched.json()["dedicated-host-id"] == "h1"
    wait_until(lambda: served(servers["h1"]) == {1, 2} and served(servers["h2"]) == {3})
    assert served(servers["all"]) == {1, 2, 3, 4}


def test_a_server_follows_changes_elsewhere_by_version(servers: dict[str, ServerProcess]
                                                       ) -> None:
    api = servers["all"].api()
    before = servers["h1"].api().http.get("/readyz").json()["version"]
    assert api.http.put("/v1/instances/i-scope3/tags", json={"Tags": {"k": "v"}}
                        ).status_code == 200
    wait_until(lambda: servers["h1"].api().http.get("/readyz").json()["version"] > before)
    assert served(servers["h1"]) == {1, 2}


def test_placement_is_never_shown_to_the_instance(servers: dict[str, ServerProcess]) -> None:
    _, _, everything = get(servers["h1"].port, "/latest/meta-data/all", ip(1))
    assert b"h1" not in everything and b"dedicated" not in everything


def test_a_bad_placement_is_refused_naming_the_field(servers: dict[str, ServerProcess]
                                                     ) -> None:
    api = servers["all"].api()
    for body in ({"DedicatedHostId": "no spaces"}, {"DedicatedHostId": "*"}, {}):
        resp = api.http.put("/v1/instances/i-scope1/deployment", json=body)
        assert resp.status_code == 400 and "DedicatedHostId" in resp.json()["Message"], body
    resp = api.http.put("/v1/instances/i-nosuch/deployment", json={"DedicatedHostId": "h1"})
    assert resp.status_code == 404

