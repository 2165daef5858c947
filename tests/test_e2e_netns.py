"""End to end, as instances see it: the server on 100.100.100.200:80 in its own namespace,
instances in theirs, one of them behind a router. Every client runs inside a namespace."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from netns import SERVER_IP, Topology, require_root
from server import ECS_IMDS, ServerProcess

VPC = "vpc-e2etest0001"
A, B, C = "i-e2eaaaa", "i-e2ebbbb", "i-e2ecccc"
ROLE = "e2e-role"
ENDPOINT = f"http://{SERVER_IP}"
TTL = "X-aliyun-ecs-metadata-token-ttl-seconds"


def nic(n: int, ip: str, subnet: str, vpc_cidr: str) -> dict[str, Any]:
    return {"mac": f"00:16:3e:e2:00:{n:02x}", "network-interface-id": f"eni-e2e{n:04d}",
            "vpc-id": VPC, "vswitch-id": f"vsw-{subnet.split('.')[0]}", "private-ipv4s": [ip],
            "vswitch-cidr-block": subnet, "vpc-cidr-block": vpc_cidr}


FLEET: dict[str, Any] = {
    "defaults": {"region-id": "cn-shanghai", "zone-id": "cn-shanghai-b",
                 "owner-account-id": "1234567890", "image-id": "ubuntu_22_04_x64",
                 "instance-type": "ecs.g7.large"},
    "instances": [
        {"instance-id": A, "ram-role": ROLE,
         "network-interfaces": [nic(1, "192.168.0.10", "192.168.0.0/24", "192.168.0.0/16")]},
        {"instance-id": B, "metadata-options": {"http-tokens": "required"}, "ram-role": ROLE,
         "network-interfaces": [nic(2, "192.168.0.11", "192.168.0.0/24", "192.168.0.0/16")]},
        {"instance-id": C,
         "network-interfaces": [nic(3, "10.99.0.2", "10.99.0.0/24", "10.0.0.0/8")]},
    ],
}


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    require_root()
    with Topology({"a": "192.168.0.10", "b": "192.168.0.11"}, routed={"c": "10.99.0.2"}) as t:
        yield t


@pytest.fixture(scope="module")
def server(topo: Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("e2e"), FLEET,
                        [{"bind": f"{SERVER_IP}:80", "vpc-id": VPC}])
    srv.start(lambda argv, log: topo.server.popen(argv, stdout=log, stderr=subprocess.STDOUT))
    topo.server.wait_for_tcp(SERVER_IP, 80)
    yield srv
    srv.cleanup()


def curl(topo: Topology, who: str, path: str, *args: str) -> tuple[int, bytes]:
    """curl from inside instance `who`: (HTTP status, body); status 0 when nothing came."""
    result = subprocess.run(
        ["ip", "netns", "exec", topo[who].ns, "curl", "-s", "--noproxy", "*", "-m", "3",
         "-o", "-", "-w", "\n%{http_code}", *args, f"{ENDPOINT}{path}"],
        capture_output=True, timeout=20)
    body, _, code = result.stdout.rpartition(b"\n")
    return int(code or 0), body


def token(topo: Topology, who: str, ttl: int = 300, *extra: str) -> tuple[int, bytes]:
    return curl(topo, who, "/latest/api/token", "-X", "PUT", "-H", f"{TTL}: {ttl}", *extra)


def in_ns(topo: Topology, who: str, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return topo[who].run([sys.executable, "-c", code],
                         env={"ECS_IMDS_ENDPOINT": ENDPOINT, **env}, timeout=60)


CRAWL = """
import json
from ecs_imds.client import MetadataClient
c = MetadataClient(use_token=True)
def crawl(path):
    if path.endswith("/"):
        out = {}
        for name in c.get(path).decode().split("\\n"):
            if path.endswith("ram/security-credentials/"):
                continue
            out[name.rstrip("/")] = crawl(path + name)
        return out
    return c.get(path).decode()
print(json.dumps({"crawl": crawl("/latest/meta-data/"),
                  "all": json.loads(c.get("/latest/meta-data/all"))}))
"""


def test_each_instance_gets_its_own_metadata(topo: Topology, server: ServerProcess) -> None:
    assert curl(topo, "a", "/latest/meta-data/instance-id") == (200, A.encode())
    assert curl(topo, "a", "/latest/meta-data/private-ipv4") == (200, b"192.168.0.10")
    assert curl(topo, "c", "/latest/meta-data/instance-id") == (200, C.encode())
    assert curl(topo, "a", "/") == (200, b"2016-01-01\nlatest")


def test_same_tree_and_all_equals_crawl(topo: Topology, server: ServerProcess) -> None:
    seen = {}
    for who in ("a", "b"):
        result = in_ns(topo, who, CRAWL)
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        assert out["all"] == out["crawl"]
        seen[who] = out["crawl"]
    assert seen["a"].keys() == seen["b"].keys()
    assert seen["a"]["instance-id"] == A and seen["b"]["instance-id"] == B


def test_hardened_instance_needs_a_token(topo: Topology, server: ServerProcess) -> None:
    assert curl(topo, "b", "/latest/meta-data/instance-id")[0] == 403
    status, tok = token(topo, "b")
    assert status == 200
    assert curl(topo, "b", "/latest/meta-data/instance-id",
                "-H", f"X-aliyun-ecs-metadata-token: {tok.decode()}") == (200, B.encode())


def test_token_of_one_instance_is_refused_on_another(topo: Topology,
                                                    server: ServerProcess) -> None:
    status, tok = token(topo, "a")
    assert status == 200
    assert curl(topo, "b", "/latest/meta-data/instance-id",
                "-H", f"x-aliyun-ecs-metadata-token: {tok.decode()}")[0] == 401


def test_token_put_through_a_proxy_is_refused(topo: Topology, server: ServerProcess) -> None:
    assert token(topo, "a", 60, "-H", "X-Forwarded-For: 192.168.0.10")[0] == 403


def test_ecs_imds_get_inside_an_instance(topo: Topology, server: ServerProcess) -> None:
    result = topo["b"].run([ECS_IMDS, "get", "--token", "meta-data/instance-id"],
                           env={"ECS_IMDS_ENDPOINT": ENDPOINT})
    assert (result.returncode, result.stdout) == (0, B)
    result = topo["b"].run([ECS_IMDS, "get", "meta-data/instance-id"],
                           env={"ECS_IMDS_ENDPOINT": ENDPOINT})
    assert result.returncode != 0 and "403" in result.stderr


def _set_hop_limit(server: ServerProcess, topo: Topology, hops: int) -> None:
    def change(doc: dict[str, Any]) -> None:
        doc["instances"][2]["metadata-options"] = {"http-put-response-hop-limit": hops}

    server.update_fleet(change)
    time.sleep(0.5)  # the server polls the store every 0.1 s


def test_hop_limit_keeps_tokens_from_crossing_a_router(topo: Topology,
                                                       server: ServerProcess) -> None:
    # A plain GET crosses the router: responses without a token use the normal TTL.
    assert curl(topo, "c", "/latest/meta-data/instance-id") == (200, C.encode())
    _set_hop_limit(server, topo, 1)
    assert token(topo, "c")[0] == 0  # the answer died at the router
    _set_hop_limit(server, topo, 2)
    status, tok = token(topo, "c")
    assert status == 200 and len(tok) > 0


CREDENTIALS = """
import json, os
from alibabacloud_credentials.provider.ecs_ram_role import EcsRamRoleCredentialsProvider
cred = EcsRamRoleCredentialsProvider().get_credentials()
print(json.dumps({"ak": cred.get_access_key_id(), "secret": cred.get_access_key_secret(),
                  "token": cred.get_security_token()}))
"""


@pytest.mark.parametrize("who", ["a", "b"])
def test_alibabacloud_credentials_reads_role_from_listing(topo: Topology, server: ServerProcess,
                                                          who: str) -> None:
    result = in_ns(topo, who, CREDENTIALS, ALIBABA_CLOUD_IMDSV1_DISABLED="true")
    assert result.returncode == 0, result.stderr
    cred = json.loads(result.stdout)
    assert cred["ak"].startswith("STS.") and cred["token"]
    verdict = server.admin("verify-credential", cred["ak"], cred["token"])
    assert {"a": A, "b": B}[who] in verdict.stdout and ROLE in verdict.stdout

