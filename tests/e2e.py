"""The shared end-to-end setup: one topology and one server for the whole session.

Server on 100.100.100.200:80 in its own namespace; instances `a` and `b` on the VPC's
subnet, `c` behind a router. Every client runs inside an instance namespace.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netns import SERVER_IP, Topology, require_root
from server import ServerProcess

VPC = "vpc-e2etest0001"
A, B, C = "i-e2eaaaa", "i-e2ebbbb", "i-e2ecccc"
ROLE = "e2e-role"
ENDPOINT = f"http://{SERVER_IP}"
DUAL_STACK_PORT = 8080
TTL = "X-aliyun-ecs-metadata-token-ttl-seconds"
# Clients in a namespace must never look for a proxy: the metadata address is ours there.
CLIENT_ENV = {"ECS_IMDS_ENDPOINT": ENDPOINT, "NO_PROXY": "*", "no_proxy": "*",
              "HTTP_PROXY": "", "http_proxy": "", "HTTPS_PROXY": "", "https_proxy": ""}


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


@pytest.fixture(scope="session")
def topo() -> Iterator[Topology]:
    require_root()
    with Topology({"a": "192.168.0.10", "b": "192.168.0.11"}, routed={"c": "10.99.0.2"}) as t:
        yield t


def serve_in(topo: Topology, workdir: Path, fleet: dict[str, Any]) -> ServerProcess:
    """A server for `fleet` in the topology's server namespace, on 100.100.100.200:80 and on
    a dual-stack IPv6 socket (`[::]:8080`, where IPv4 callers arrive as ::ffff:a.b.c.d),
    its control plane on a unix socket in `workdir`; started, and serving when this
    returns."""
    srv = ServerProcess(workdir, fleet, [{"bind": f"{SERVER_IP}:80", "vpc-id": VPC},
                                         {"bind": f"[::]:{DUAL_STACK_PORT}", "vpc-id": VPC}])
    srv.start(lambda argv, log: topo.server.popen(argv, stdout=log, stderr=subprocess.STDOUT))
    topo.server.wait_for_tcp(SERVER_IP, 80)
    return srv


@pytest.fixture(scope="session")
def server(topo: Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = serve_in(topo, tmp_path_factory.mktemp("e2e"), FLEET)
    yield srv
    srv.cleanup()


def curl(topo: Topology, who: str, path: str, *args: str, endpoint: str = ENDPOINT
         ) -> tuple[int, bytes]:
    """curl from inside instance `who`: (HTTP status, body); status 0 when nothing came."""
    result = subprocess.run(
        ["ip", "netns", "exec", topo[who].ns, "curl", "-s", "--noproxy", "*", "-m", "3",
         "-o", "-", "-w", "\n%{http_code}", *args, f"{endpoint}{path}"],
        capture_output=True, timeout=60)
    body, _, code = result.stdout.rpartition(b"\n")
    return int(code or 0), body


def token(topo: Topology, who: str, ttl: int = 300, *extra: str, endpoint: str = ENDPOINT
          ) -> tuple[int, bytes]:
    return curl(topo, who, "/latest/api/token", "-X", "PUT", "-H", f"{TTL}: {ttl}", *extra,
                endpoint=endpoint)


def in_ns(topo: Topology, who: str, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run Python `code` inside instance `who` with the project's interpreter."""
    return topo[who].run([sys.executable, "-c", code], env={**CLIENT_ENV, **env}, timeout=60)
