"""Fleet mode end to end: two hosts, one PostgreSQL, instances behind each.

Host 1 serves VPC 1 on 100.100.100.200:80 (instance `a`, 192.168.0.10) and VPC 2 through a
per-host proxy speaking PROXY protocol v2 (instance `z`, also 192.168.0.10). Host 2 serves
VPC 1 (instance `a` again, the same instance after a live migration, and `b`). The database
is a real PostgreSQL reached over a unix socket, stopped and started by the last test.

Every test runs twice: with each server holding the whole fleet, and with each scoped to
its hosts (`a` and `z` are placed on h1, `b` on h2; host 1 serves h1, host 2 serves h1 and
h2), so every guarantee holds with scoping on and off.

Waits are bounded polls; the durations they measure are printed (pytest -s), not asserted.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from e2e import curl, token
from ecs_imds.dataplane.proxy import header
from ecs_imds.store.postgres import PostgresStore
from fleet_netns import PROXY_IP, SERVER_TRANSIT_IP, FleetHost
from netns import SERVER_IP, require_root
from pg import PostgresCluster, cluster
from server import ServerProcess

VPC1, VPC2 = "vpc-fleet0001", "vpc-fleet0002"
A, B, Z = "i-fleetaaaa", "i-fleetbbbb", "i-fleetzzzz"
ROLE = "fleet-role"
TOKEN = "X-aliyun-ecs-metadata-token"


def nic(n: int, ip: str, vpc: str) -> dict[str, Any]:
    return {"mac": f"00:16:3e:f1:00:{n:02x}", "network-interface-id": f"eni-fleet{n:04d}",
            "vpc-id": vpc, "vswitch-id": f"vsw-{vpc[-4:]}", "private-ipv4s": [ip],
            "vswitch-cidr-block": "192.168.0.0/24", "vpc-cidr-block": "192.168.0.0/16"}


FLEET: dict[str, Any] = {
    "defaults": {"region-id": "cn-shanghai", "zone-id": "cn-shanghai-b",
                 "owner-account-id": "1234567890", "image-id": "ubuntu_22_04_x64",
                 "instance-type": "ecs.g7.large"},
    "instances": [
        {"instance-id": A, "ram-role": ROLE, "dedicated-host-id": "h1",
         "network-interfaces": [nic(1, "192.168.0.10", VPC1)]},
        {"instance-id": B, "metadata-options": {"http-tokens": "required"},
         "dedicated-host-id": "h2", "network-interfaces": [nic(2, "192.168.0.11", VPC1)]},
        {"instance-id": Z, "dedicated-host-id": "h1",
         "network-interfaces": [nic(3, "192.168.0.10", VPC2)]},
    ],
}


@pytest.fixture(scope="module")
def db() -> Iterator[tuple[PostgresCluster, str]]:
    require_root()
    with cluster() as pg:
        yield pg, pg.create_database("fleet")


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[FleetHost, FleetHost]]:
    require_root()
    with FleetHost({"a": "192.168.0.10"}, proxied={"z": "192.168.0.10"}) as one, \
            FleetHost({"a": "192.168.0.10", "b": "192.168.0.11"}) as two:
        yield one, two


@pytest.fixture(scope="module", params=["whole fleet", "scoped"])
def scoped(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "scoped")


@pytest.fixture(scope="module")
def servers(db: tuple[PostgresCluster, str], hosts: tuple[FleetHost, FleetHost], scoped: bool,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess,
                                                                        ServerProcess]]:
    _, url = db
    one, two = hosts
    proxied = {"proxy-protocol": {"trusted": [PROXY_IP]}}
    scope1 = {"scope": {"hosts": ["h1"]}} if scoped else {}
    scope2 = {"scope": {"hosts": ["h1", "h2"]}} if scoped else {}
    s1 = ServerProcess(tmp_path_factory.mktemp("host1"), FLEET, [
        {"bind": f"{SERVER_IP}:80", "vpc-id": VPC1, **proxied},  # instances here are untrusted
        {"bind": f"{SERVER_TRANSIT_IP}:80", "vpc-id": VPC2, **proxied}], store=url, **scope1)
    s2 = ServerProcess(tmp_path_factory.mktemp("host2"), FLEET,
                       [{"bind": f"{SERVER_IP}:80", "vpc-id": VPC1}], store=url, **scope2)
    try:
        s1.start(lambda argv, log: one.server.popen(argv, stdout=log, stderr=subprocess.STDOUT))
        s2.launch(lambda argv, log: two.server.popen(argv, stdout=log,
                                                     stderr=subprocess.STDOUT))
        s2.wait_version(ready(s1)["version"])
        one.server.wait_for_tcp(SERVER_IP, 80)
        two.server.wait_for_tcp(SERVER_IP, 80)
        one.start_proxy()
        yield s1, s2
    finally:
        s1.cleanup()
        s2.cleanup()


def ready(server: ServerProcess) -> dict[str, Any]:
    response = server.api().http.get("/readyz")
    body: dict[str, Any] = response.json()
    body["status"] = response.status_code
    return body


def stale_metric(server: ServerProcess) -> str:
    text = server.api().http.get("/metrics").text
    return next(line.split()[-1] for line in text.splitlines()
                if line.startswith("ecs_imds_snapshot_stale "))


def wait_for(what: Callable[[], bool], timeout: float = 10.0) -> float:
    """Poll until true; the seconds it took. Bounded; the time is reported, not asserted."""
    start = time.monotonic()
    while not what():
        assert time.monotonic() - start < timeout, "not within the bounded wait"
        time.sleep(0.02)
    return time.monotonic() - start


def kid(tok: bytes) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(tok)[:4], "big")


SEND_RAW = """
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=3)
s.sendall(bytes.fromhex(sys.argv[2]))
out = b""
try:
    while chunk := s.recv(65536):
        out += chunk
except (TimeoutError, ConnectionResetError):
    pass
sys.stdout.write(out.hex())
"""


def send_raw(host: FleetHost, who: str, data: bytes) -> bytes:
    """Raw bytes from inside instance `who` to 100.100.100.200:80; all that comes back."""
    result = host[who].run([sys.executable, "-c", SEND_RAW, SERVER_IP, data.hex()])
    assert result.returncode == 0, result.stderr
    return bytes.fromhex(result.stdout)


GET_ID = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
NAME = "/latest/meta-data/instance/instance-name"


# -- scoping --------------------------------------------------------------------------------
def test_a_scoped_server_holds_its_hosts_instances(servers: tuple[ServerProcess, ServerProcess],
                                                   scoped: bool) -> None:
    s1, s2 = servers
    assert (ready(s1)["instances"], ready(s2)["instances"]) == ((2, 3) if scoped else (3, 3))


# -- many VPCs on one host ------------------------------------------------------------------
def test_the_same_address_in_two_vpcs_is_two_instances(hosts: tuple[FleetHost, FleetHost],
                                                       servers: Any) -> None:
    one, two = hosts
    assert curl(one, "a", "/latest/meta-data/instance-id") == (200, A.encode())
    assert curl(one, "z", "/latest/meta-data/instance-id") == (200, Z.encode())  # via proxy
    assert curl(one, "z", "/latest/meta-data/vpc-id") == (200, VPC2.encode())
    assert curl(two, "a", "/latest/meta-data/instance-id") == (200, A.encode())


def test_an_instance_cannot_speak_proxy_protocol(hosts: tuple[FleetHost, FleetHost],
                                                 servers: Any) -> None:
    one, _ = hosts
    # `a` is not the trusted proxy: claiming to be b (192.168.0.11) gets the door closed
    forged = header("192.168.0.11", SERVER_IP, 1234, 80) + GET_ID
    assert send_raw(one, "a", forged) == b""
    # ... while its plain requests are its own
    assert send_raw(one, "a", GET_ID).endswith(A.encode())


# -- one fleet, many servers ------------------------------------------------------------------
def test_a_token_from_one_server_verifies_on_the_other(hosts: tuple[FleetHost, FleetHost],
                                                       servers: Any) -> None:
    one, two = hosts
    status, tok = token(one, "a")
    assert status == 200
    assert curl(two, "a", "/latest/meta-data/instance-id", "-H", f"{TOKEN}: {tok.decode()}"
                ) == (200, A.encode())
    status, tok2 = token(two, "b")
    assert status == 200
    assert curl(two, "b", "/latest/meta-data/instance-id", "-H", f"{TOKEN}: {tok2.decode()}"
                ) == (200, B.encode())
    # b's token is b's only, on either server
    assert curl(one, "a", "/latest/meta-data/instance-id",
                "-H", f"{TOKEN}: {tok2.decode()}")[0] == 401


def test_every_server_serves_the_same_credential(hosts: tuple[FleetHost, FleetHost],
                                                 servers: Any) -> None:
    one, two = hosts
    path = f"/latest/meta-data/ram/security-credentials/{ROLE}"
    first, second = curl(one, "a", path), curl(two, "a", path)
    assert first[0] == 200 and first == second
    assert json.loads(first[1])["Code"] == "Success"


def test_a_change_reaches_both_servers(db: tuple[PostgresCluster, str],
                                       hosts: tuple[FleetHost, FleetHost], servers: Any) -> None:
    _, url = db
    one, two = hosts
    store = PostgresStore(url)
    times = []
    try:
        for n in range(3):
            name = f"renamed-{n}".encode()
            (current,) = store.load_instances([A])
            store.put_instance(current.doc | {"instance-name": name.decode()}, None)
            written = time.monotonic()
            wait_for(lambda name=name: curl(one, "a", NAME) == (200, name))
            wait_for(lambda name=name: curl(two, "a", NAME) == (200, name))
            times.append(time.monotonic() - written)
    finally:
        store.close()
    print(f"\nchange → served by both servers: {', '.join(f'{t * 1000:.0f}' for t in times)} ms"
          " (each includes a few curl runs in namespaces)")


def test_a_key_rotation_reaches_every_server(hosts: tuple[FleetHost, FleetHost],
                                             servers: tuple[ServerProcess, ServerProcess]
                                             ) -> None:
    one, two = hosts
    s1, _ = servers
    _, before = token(two, "a")
    s1.admin("rotate", "token-key")
    wait_for(lambda: kid(token(two, "a")[1]) == kid(before) + 1)
    wait_for(lambda: kid(token(one, "a")[1]) == kid(before) + 1)
    # tokens minted with the old key stay valid everywhere
    assert curl(one, "a", "/latest/meta-data/instance-id",
                "-H", f"{TOKEN}: {before.decode()}") == (200, A.encode())


# -- surviving the database ----------------------------------------------------------------------
def test_servers_survive_the_database_and_catch_up(
        db: tuple[PostgresCluster, str], hosts: tuple[FleetHost, FleetHost],
        servers: tuple[ServerProcess, ServerProcess]) -> None:
    pg, _ = db
    one, two = hosts
    s1, s2 = servers
    creds = f"/latest/meta-data/ram/security-credentials/{ROLE}"
    _, old_token = token(one, "a")
    credential = curl(one, "a", creds)
    assert ready(s1)["status"] == ready(s2)["status"] == 200

    pg.stop()
    try:
        went = wait_for(lambda: ready(s1)["stale"] and ready(s2)["stale"])
        for server in (s1, s2):
            status = ready(server)
            assert status["status"] == 503 and not status["ready"]
            assert stale_metric(server) == "1.0"
        # everything keeps being served from the last snapshot
        assert curl(one, "a", "/latest/meta-data/instance-id") == (200, A.encode())
        assert curl(one, "z", "/latest/meta-data/instance-id") == (200, Z.encode())
        assert curl(two, "a", "/latest/meta-data/instance-id",
                    "-H", f"{TOKEN}: {old_token.decode()}") == (200, A.encode())
        status, new_token = token(two, "b")
        assert status == 200
        assert curl(two, "b", "/latest/meta-data/instance-id",
                    "-H", f"{TOKEN}: {new_token.decode()}") == (200, B.encode())
        assert curl(one, "a", creds) == curl(two, "a", creds) == credential
        status, signature = curl(two, "a", "/latest/dynamic/instance-identity/pkcs7")
        assert status == 200 and len(signature) > 100
    finally:
        restarted = time.monotonic()
        pg.start()
    wait_for(lambda: not ready(s1)["stale"] and not ready(s2)["stale"], timeout=20)
    back = time.monotonic() - restarted
    assert stale_metric(s1) == stale_metric(s2) == "0.0"

    # a change made now reaches both, without restarting either
    def rename(doc: dict[str, Any]) -> None:
        doc["instances"][0]["instance-name"] = "after-the-outage"

    s2.update_fleet(rename)  # through server 2's API
    changed = time.monotonic()
    wait_for(lambda: curl(one, "a", NAME) == (200, b"after-the-outage"))
    wait_for(lambda: curl(two, "a", NAME) == (200, b"after-the-outage"))
    print(f"\nstale on both {went * 1000:.0f} ms after pg_ctl stop returned; fresh on both "
          f"{back * 1000:.0f} ms after pg_ctl start was called; a change after it served by "
          f"both in {(time.monotonic() - changed) * 1000:.0f} ms")
