"""End to end, as instances see it: the server on 100.100.100.200:80 in its own namespace,
instances in theirs, one of them behind a router. Every client runs inside a namespace."""

from __future__ import annotations

import json
from typing import Any

from e2e import CLIENT_ENV, DUAL_STACK_PORT, SERVER_IP, A, B, C, curl, in_ns, token
from netns import Topology
from server import ECS_IMDS, ServerProcess

CRAWL = """
import json
from ecs_imds.clients.metadata import MetadataClient
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
                           env=CLIENT_ENV)
    assert (result.returncode, result.stdout) == (0, B)
    result = topo["b"].run([ECS_IMDS, "get", "meta-data/instance-id"],
                           env=CLIENT_ENV)
    assert result.returncode != 0 and "403" in result.stderr


def _set_hop_limit(server: ServerProcess, topo: Topology, hops: int) -> None:
    def change(doc: dict[str, Any]) -> None:
        doc["instances"][2]["metadata-options"] = {"http-put-response-hop-limit": hops}

    server.update_fleet(change)  # returns once the data plane serves the change


def test_hop_limit_keeps_tokens_from_crossing_a_router(topo: Topology,
                                                       server: ServerProcess) -> None:
    # A plain GET crosses the router: responses without a token use the normal TTL.
    assert curl(topo, "c", "/latest/meta-data/instance-id") == (200, C.encode())
    _set_hop_limit(server, topo, 1)
    assert token(topo, "c")[0] == 0  # the answer died at the router
    _set_hop_limit(server, topo, 2)
    status, tok = token(topo, "c")
    assert status == 200 and len(tok) > 0


def test_a_dual_stack_listener_knows_ipv4_callers_and_keeps_their_hop_limit(
        topo: Topology, server: ServerProcess) -> None:
    """On an IPv6 socket an IPv4 caller is ::ffff:a.b.c.d: the peer is normalised (at
    accept) to find the instance, and a token's hop limit must be set as an IPv4 TTL too,
    or the token would cross the router."""
    dual = f"http://{SERVER_IP}:{DUAL_STACK_PORT}"
    assert curl(topo, "a", "/latest/meta-data/instance-id", endpoint=dual) == (200, A.encode())
    assert curl(topo, "c", "/latest/meta-data/instance-id", endpoint=dual) == (200, C.encode())
    _set_hop_limit(server, topo, 1)
    assert token(topo, "c", endpoint=dual)[0] == 0  # the answer died at the router
    assert token(topo, "a", endpoint=dual)[0] == 200  # one hop is enough next door
    _set_hop_limit(server, topo, 2)
    assert token(topo, "c", endpoint=dual)[0] == 200
