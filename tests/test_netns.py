"""Prove the namespace harness builds the network the e2e tests rely on.

If these fail, e2e failures of the real server mean nothing: the harness must
deliver instance traffic to 100.100.100.200 with the instance's own source
address, and honour IP TTL across the router.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from netns import SERVER_IP, Namespace, Topology, require_root, topology_fixture

# Echoes the peer address; for /ttl/<n> sets IP_TTL=<n> on the accepted
# socket first, so every byte of the reply carries that TTL.
SERVER = """
import socket, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        ttl = self.path.removeprefix("/ttl/")
        if ttl.isdigit():
            self.connection.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, int(ttl))
        body = self.client_address[0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
"""

# Minimal client (no proxy handling, no curl dependency); exit 3 on timeout.
CLIENT = """
import http.client, sys
conn = http.client.HTTPConnection(sys.argv[1], timeout=float(sys.argv[3]))
try:
    conn.request("GET", sys.argv[2])
    resp = conn.getresponse()
    print(resp.status, resp.read().decode(), end="")
except TimeoutError:
    sys.exit(3)
"""
CLIENT_TIMEOUT = 2.0
TIMED_OUT = 3

topo = topology_fixture(
    {"a": "192.168.0.10", "b": "192.168.0.11"},
    routed={"c": "10.99.0.2"},
    name="topo",
    scope="module",
)


@pytest.fixture(scope="module")
def server(topo: Topology) -> Iterator[subprocess.Popen[str]]:
    """The echo server, listening on the metadata address in the server ns."""
    proc = topo.server.popen([sys.executable, "-c", SERVER, SERVER_IP, "80"])
    topo.server.wait_for_tcp(SERVER_IP, 80)
    yield proc
    assert proc.poll() is None, "echo server died during the tests"


def get(instance: Namespace, path: str) -> subprocess.CompletedProcess[str]:
    """GET http://100.100.100.200<path> from inside ``instance``."""
    return instance.run(
        [sys.executable, "-c", CLIENT, SERVER_IP, path, str(CLIENT_TIMEOUT)],
        timeout=CLIENT_TIMEOUT + 10,
    )


@pytest.mark.parametrize("name", ["a", "b"])
@pytest.mark.usefixtures("server")
def test_instance_reaches_server_with_own_address(topo: Topology, name: str) -> None:
    result = get(topo[name], "/")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"200 {topo[name].ip}"


@pytest.mark.parametrize("name", ["a", "b"])
@pytest.mark.usefixtures("server")
def test_direct_instance_gets_ttl1_reply(topo: Topology, name: str) -> None:
    result = get(topo[name], "/ttl/1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"200 {topo[name].ip}"


@pytest.mark.usefixtures("server")
def test_routed_instance_gets_ttl2_reply_unnatted(topo: Topology) -> None:
    result = get(topo["c"], "/ttl/2")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "200 10.99.0.2"


@pytest.mark.usefixtures("server")
def test_routed_instance_misses_ttl1_reply(topo: Topology) -> None:
    result = get(topo["c"], "/ttl/1")
    assert result.returncode == TIMED_OUT, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""


def _root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    return {line.split(":")[1].strip() for line in out.stdout.splitlines()}


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_teardown_removes_everything_even_on_error() -> None:
    require_root()
    links_before = _root_links()
    topology = Topology({"x": "192.168.0.20"}, routed={"y": "10.99.0.20"})

    with pytest.raises(RuntimeError, match="boom"), topology:
        assert topology.router is not None
        expected = {topology.server.ns, topology.router.ns, topology["x"].ns, topology["y"].ns}
        assert {n for n in _netns_names() if n.startswith(topology.prefix)} == expected
        sleeper = topology["x"].popen(["sleep", "300"])
        raise RuntimeError("boom")

    assert sleeper.poll() is not None
    assert not {n for n in _netns_names() if n.startswith(topology.prefix)}
    assert _root_links() == links_before


@pytest.mark.parametrize(
    ("direct", "routed"),
    [
        ({"a": "10.0.0.5"}, {}),  # outside the VPC subnet
        ({"a": "192.168.0.1"}, {}),  # the gateway
        ({"a": "192.168.0.10"}, {"a": "10.99.0.2"}),  # name used twice
        ({"A B": "192.168.0.10"}, {}),  # not a safe namespace name
    ],
)
def test_rejects_bad_specs_before_creating_anything(
    direct: dict[str, str], routed: dict[str, str]
) -> None:
    with pytest.raises(ValueError):
        Topology(direct, routed)
