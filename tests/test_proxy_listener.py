"""PROXY protocol v2 on a real listener (loopback): 127.0.0.1 is the trusted per-host proxy,
127.0.0.2 is anyone else. The fleet is the demo's, whose instances are 192.168.0.10, .11 (which
requires tokens) and .12."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecs_imds.config import load
from ecs_imds.dataplane.proxy import header
from ecs_imds.demo import DEMO_VPC, demo_fleet
from ecs_imds.errors import ValidationError
from server import ServerProcess, free_port, http, read_all, split_responses

WEB, HARDENED, SPOT = (f"i-bp1demo000000000000{n}" for n in (1, 2, 3))
GET_ID = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n\r\n"
GET_ID_CLOSE = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
PROXY, OTHER = "127.0.0.1", "127.0.0.2"


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    number = free_port()
    srv = ServerProcess(tmp_path_factory.mktemp("proxy"), demo_fleet(), [{
        "bind": f"127.0.0.1:{number}", "vpc-id": DEMO_VPC,
        "aliases": {OTHER: SPOT},  # so that a plain request from OTHER is someone
        "proxy-protocol": {"trusted": [f"{PROXY}/32"]}}])
    srv.start()
    yield number
    srv.cleanup()


def answers(port: int, raw: bytes, source: str) -> list[tuple[int, bytes]]:
    return [(status, body) for status, _, body in split_responses(http(port, raw, source))]


def test_the_proxy_names_the_instance(port: int) -> None:
    assert answers(port, header("192.168.0.10", "100.100.100.200", 40000, 80) + GET_ID_CLOSE,
                   PROXY) == [(200, WEB.encode())]
    # the hardened instance, by its own address: it needs a token, and gets one
    hardened = header("192.168.0.11", "100.100.100.200", 40000, 80)
    assert answers(port, hardened + GET_ID_CLOSE, PROXY) == [(403, b"Forbidden")]
    ((status, token),) = answers(port, hardened + b"PUT /latest/api/token HTTP/1.1\r\nHost: x"
                                 b"\r\nX-aliyun-ecs-metadata-token-ttl-seconds: 60\r\n"
                                 b"Connection: close\r\n\r\n", PROXY)
    assert status == 200
    with_token = GET_ID_CLOSE.replace(b"Host: x", b"Host: x\r\nX-aliyun-ecs-metadata-token: "
                                      + token)
    assert answers(port, hardened + with_token, PROXY) == [(200, HARDENED.encode())]
    assert answers(port, header("::ffff:192.168.0.12", "::1", 1, 80) + GET_ID_CLOSE,
                   PROXY) == [(200, SPOT.encode())]


def test_one_header_then_keep_alive_requests(port: int) -> None:
    raw = header("192.168.0.10", "100.100.100.200", 1, 80) + GET_ID + GET_ID + GET_ID_CLOSE
    assert answers(port, raw, PROXY) == [(200, WEB.encode())] * 3


def test_header_in_pieces(port: int) -> None:
    raw = header("192.168.0.12", "100.100.100.200", 1, 80) + GET_ID_CLOSE
    with socket.create_connection(("127.0.0.1", port), timeout=5,
                                  source_address=(PROXY, 0)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, 40):
            s.sendall(raw[i:i + 1])
            time.sleep(0.002)
        s.sendall(raw[40:])
        (resp,) = split_responses(read_all(s))
    assert (resp[0], resp[2]) == (200, SPOT.encode())


def test_local_is_the_proxy_itself(port: int) -> None:
    # the proxy's own health check: the peer is 127.0.0.1, which is no instance
    assert answers(port, header(None) + GET_ID_CLOSE, PROXY) == [(403, b"Forbidden")]


def test_the_proxy_must_send_a_header(port: int) -> None:
    assert http(port, GET_ID_CLOSE, PROXY) == b""
    assert http(port, b"PROXY TCP4 192.168.0.10 1.1.1.1 1 80\r\n" + GET_ID_CLOSE, PROXY) == b""


def test_anyone_else_claiming_to_be_a_proxy_is_refused(port: int) -> None:
    assert http(port, header("192.168.0.10", "100.100.100.200", 1, 80) + GET_ID_CLOSE,
                OTHER) == b""
    # even a bare signature, sent a byte at a time
    with socket.create_connection(("127.0.0.1", port), timeout=5,
                                  source_address=(OTHER, 0)) as s:
        for byte in header("192.168.0.10")[:12]:
            s.sendall(bytes([byte]))
        assert read_all(s) == b""


def test_anyone_else_is_served_as_who_they_are(port: int) -> None:
    assert answers(port, GET_ID_CLOSE, OTHER) == [(200, SPOT.encode())]
    assert answers(port, GET_ID + GET_ID_CLOSE, OTHER) == [(200, SPOT.encode())] * 2
    assert answers(port, GET_ID_CLOSE, "127.0.0.3")[0][0] == 403


def test_a_header_then_garbage_is_a_bad_request(port: int) -> None:
    raw = header("192.168.0.10") + b"\x00\x01 nonsense\r\n\r\n"
    assert answers(port, raw, PROXY)[0][0] == 400


# --- configuration --------------------------------------------------------------------------
def _config(tmp_path: Path, proxy: object) -> object:
    path = tmp_path / "c.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"listeners": [
        {"bind": "10.0.0.1:80", "vpc-id": "vpc-a", "proxy-protocol": proxy}]}))
    return load(path).listeners[0].proxy_trusted


def test_config(tmp_path: Path) -> None:
    assert _config(tmp_path, {"trusted": ["10.1.0.5", "10.2.0.0/16", "fd00::1", "10.3.0.9/8"]}
                   ) == ("10.1.0.5/32", "10.2.0.0/16", "fd00::1/128", "10.0.0.0/8")
    for bad in ({}, {"trusted": []}, {"trusted": "10.0.0.1"}, {"trusted": ["x"]},
                {"trusted": ["10.0.0.1"], "other": 1}, True, None):
        with pytest.raises(ValidationError, match="proxy-protocol"):
            _config(tmp_path, bad)


def test_listeners_without_it_stay_plain(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("listeners: [{bind: '10.0.0.1:80', vpc-id: vpc-a}]\n")
    assert load(path).listeners[0].proxy_trusted is None
