"""The HTTP shell for real: a running server on loopback, raw sockets as clients."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecs_imds.demo import DEMO_VPC, demo_fleet
from server import ServerProcess, free_port, get, http, read_all, split_responses

WEB, HARDENED, SPOT = (f"i-bp1demo000000000000{n}" for n in (1, 2, 3))
ALIASES = {"127.0.0.1": WEB, "127.0.0.2": HARDENED, "127.0.0.3": SPOT}
TTL = "X-aliyun-ecs-metadata-token-ttl-seconds"


def _server(tmp: Path, **settings: object) -> ServerProcess:
    port = free_port()
    srv = ServerProcess(tmp, demo_fleet(),
                        [{"bind": f"127.0.0.1:{port}", "vpc-id": DEMO_VPC, "aliases": ALIASES}],
                        **settings)
    srv.port = port  # type: ignore[attr-defined]
    srv.start()
    srv.wait_ready("127.0.0.1", port)
    return srv


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = _server(tmp_path_factory.mktemp("dp"),
                  limits={"idle-timeout": 1, "request-timeout": 1, "rate": 0})
    yield srv
    srv.cleanup()


@pytest.fixture
def port(server: ServerProcess) -> int:
    return server.port  # type: ignore[attr-defined,no-any-return]


def test_leaf_and_headers(port: int) -> None:
    status, headers, body = get(port, "/latest/meta-data/instance-id")
    assert (status, body) == (200, WEB.encode())
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["content-length"] == str(len(body))
    assert headers["connection"] == "close"
    assert "date" in headers


def test_caller_is_told_apart_by_source_address(port: int) -> None:
    assert get(port, "/latest/meta-data/instance-id", source="127.0.0.3")[2] == SPOT.encode()
    assert get(port, "/latest/meta-data/instance-id", source="127.0.0.9")[0] == 403


def test_header_cannot_change_identity(port: int) -> None:
    for header in ("X-Forwarded-For", "X-Real-IP", "Forwarded"):
        resp = get(port, "/latest/meta-data/instance-id", source="127.0.0.3",
                   headers={header: "127.0.0.1"})
        assert resp[2] == SPOT.encode()


def test_keep_alive_and_pipelining_answer_in_order(port: int) -> None:
    paths = ["/latest/meta-data/instance-id", "/latest/meta-data/region-id",
             "/latest/meta-data/nope", "/2016-01-01/meta-data/hostname"]
    raw = b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for p in paths)
    raw += b"GET /latest/meta-data/zone-id HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    responses = split_responses(http(port, raw))
    assert [(s, b) for s, _, b in responses] == [
        (200, WEB.encode()), (200, b"cn-hangzhou"), (404, b"Not Found"),
        (200, b"iZbp1demo0000000000001Z"), (200, b"cn-hangzhou-i")]
    assert all("connection" not in h for _, h, _ in responses[:-1])


def test_requests_split_across_packets(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for piece in (b"GET /latest/meta", b"-data/region-id HT", b"TP/1.1\r\nHo",
                      b"st: x\r\nConnection: close\r\n", b"\r\n"):
            s.sendall(piece)
            time.sleep(0.01)
        (resp,) = split_responses(read_all(s))
    assert resp[0] == 200 and resp[2] == b"cn-hangzhou"


def test_http10_closes_unless_keep_alive(port: int) -> None:
    data = http(port, b"GET /latest/meta-data/region-id HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"cn-hangzhou")
    raw = (b"GET /latest/meta-data/region-id HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
           b"GET /latest/meta-data/zone-id HTTP/1.0\r\n\r\n")
    assert [b for _, _, b in split_responses(http(port, raw))] == [b"cn-hangzhou",
                                                                   b"cn-hangzhou-i"]


def test_head_has_length_but_no_body(port: int) -> None:
    data = http(port, b"HEAD /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n"
                      b"Connection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert f"Content-Length: {len(WEB)}".encode() in head
    assert body == b""


def test_absolute_form_target(port: int) -> None:
    raw = (b"GET http://100.100.100.200/latest/meta-data/instance-id HTTP/1.1\r\n"
           b"Host: 100.100.100.200\r\nConnection: close\r\n\r\n")
    (resp,) = split_responses(http(port, raw))
    assert resp[0] == 200 and resp[2] == WEB.encode()


def test_query_string_is_not_part_of_the_path(port: int) -> None:
    assert get(port, "/latest/meta-data/region-id?x=1")[2] == b"cn-hangzhou"


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100)
                                      for i in range(100)) + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 413),
    (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
     413),
    (b"PUT /latest/api/token HTTP/1.1\r\nHost: x\r\n" + TTL.encode() + b": 60\r\n"
     b"Content-Length: 1000\r\n\r\n" + b"x" * 1000, 413),
    (b"BREW /coffee HTCPCP/1.0\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
])
def test_limits_and_garbage(port: int, raw: bytes, status: int) -> None:
    data = http(port, raw)
    assert data.startswith(b"HTTP/1.1 %d " % status)
    assert b"Connection: close" in data


def test_token_over_the_wire_and_header_case(port: int) -> None:
    data = http(port, b"PUT /latest/api/token HTTP/1.1\r\nHost: x\r\n"
                      b"x-aliyun-ecs-metadata-token-ttl-seconds: 60\r\n"
                      b"Content-Length: 0\r\nConnection: close\r\n\r\n", source="127.0.0.2")
    ((status, headers, token),) = split_responses(data)
    assert status == 200 and headers[TTL.lower()] == "60" and len(token) <= 128
    assert get(port, "/latest/meta-data/instance-id", "127.0.0.2")[0] == 403
    resp = get(port, "/latest/meta-data/instance-id", "127.0.0.2",
               {"X-ALIYUN-ECS-METADATA-TOKEN": token.decode()})
    assert resp[0] == 200 and resp[2] == HARDENED.encode()
    # the same token from another instance is refused, and never echoed back
    resp = get(port, "/latest/meta-data/instance-id", "127.0.0.1",
               {"X-aliyun-ecs-metadata-token": token.decode()})
    assert resp[0] == 401 and token not in resp[2]


def _closed_by_server(s: socket.socket) -> bool:
    """Whether the server closed `s` (end of stream or reset) before the socket's timeout."""
    try:
        while s.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_idle_connection_is_closed(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert _closed_by_server(s)


def test_slow_request_is_closed(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n")
        assert _closed_by_server(s)


def test_idle_timeout_alone_closes_a_silent_connection(tmp_path: Path) -> None:
    """idle-timeout 1 s, request-timeout 60 s: the silent connection goes after the first."""
    srv = _server(tmp_path, limits={"idle-timeout": 1, "request-timeout": 60, "rate": 0})
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:  # type: ignore[attr-defined]
            assert _closed_by_server(s)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:  # type: ignore[attr-defined]
            s.sendall(b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            assert _closed_by_server(s)  # kept alive, then idle
    finally:
        srv.cleanup()


def test_request_timeout_alone_cuts_off_a_trickle(tmp_path: Path) -> None:
    """idle-timeout 60 s, request-timeout 1 s: a request trickled a byte at a time (each
    byte well within the idle timeout) is cut off once it has taken a second."""
    srv = _server(tmp_path, limits={"idle-timeout": 60, "request-timeout": 1, "rate": 0})
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=0.25) as s:  # type: ignore[attr-defined]
            s.sendall(b"GET /latest/meta-data/ HTTP/1.1\r\n")
            closed = False
            for _ in range(40):  # ten seconds of one byte every quarter second
                try:
                    s.sendall(b"X")
                    closed = s.recv(65536) == b""
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                if closed:
                    break
            assert closed, "a trickled request outlived request-timeout"
    finally:
        srv.cleanup()


def test_change_in_store_is_served_without_restart(server: ServerProcess, port: int) -> None:
    before = server.proc.pid  # type: ignore[union-attr]

    def rename(doc: dict) -> None:
        doc["instances"][2]["instance-name"] = "renamed-live"

    server.update_fleet(rename)
    deadline = time.monotonic() + 10
    while get(port, "/latest/meta-data/instance/instance-name", "127.0.0.3")[2] != \
            b"renamed-live":
        assert time.monotonic() < deadline, "change never served"
        time.sleep(0.05)
    assert server.proc.pid == before  # type: ignore[union-attr]


def test_rate_limit(tmp_path: Path) -> None:
    srv = _server(tmp_path, limits={"rate": 1, "burst": 3})
    try:
        port = srv.port  # type: ignore[attr-defined]
        raw = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n\r\n" * 5
        responses = split_responses(http(port, raw, timeout=1))
        assert [s for s, _, _ in responses[:4]] == [200, 200, 200, 429]
        assert int(responses[3][1]["retry-after"]) >= 1
        # another instance is not slowed by the noisy one
        assert get(port, "/latest/meta-data/instance-id", "127.0.0.3")[0] == 200
    finally:
        srv.cleanup()



def test_access_log_has_each_request_and_no_token(tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    srv = _server(tmp_path, **{"access-log": str(log_path), "limits": {"rate": 0}})
    try:
        port = srv.port  # type: ignore[attr-defined]
        _, _, token = get(port, "/latest/api/token", "127.0.0.2",
                          {"X-aliyun-ecs-metadata-token-ttl-seconds": "60"}, method="PUT")
        hdr = {"X-aliyun-ecs-metadata-token": token.decode()}
        assert get(port, "/latest/meta-data/instance-id", "127.0.0.2", hdr)[0] == 200
        assert get(port, "/latest/meta-data/nope?audience=x", "127.0.0.3")[0] == 404
        raw = b"GET /latest/meta-data/region-id HTTP/1.1\r\nHost: x\r\n\r\n" * 2
        assert [s for s, _, _ in split_responses(http(port, raw, timeout=1))] == [200, 200]
        deadline = time.monotonic() + 10
        while len(log_path.read_text().splitlines()) < 5:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        lines = [json.loads(line) for line in log_path.read_text().splitlines()]
        assert [(e["method"], e["path"], e["status"], e["instance-id"]) for e in lines] == [
            ("PUT", "/latest/api/token", 200, HARDENED),
            ("GET", "/latest/meta-data/instance-id", 200, HARDENED),
            ("GET", "/latest/meta-data/nope", 404, SPOT),
            ("GET", "/latest/meta-data/region-id", 200, WEB),
            ("GET", "/latest/meta-data/region-id", 200, WEB)]
        assert lines[1]["bytes"] == len(HARDENED) and lines[0]["peer"] == "127.0.0.2"
        assert token.decode() not in log_path.read_text()
    finally:
        srv.cleanup()
