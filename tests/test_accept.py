"""dataplane.accept: a one-request connection answered at accept time says what the
connection handler would have said, and a large answer still arrives whole."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from ecs_imds.dataplane import accept
from ecs_imds.dataplane.connection import HttpConnection
from ecs_imds.dataplane.plane import DataPlane, ListenerState
from ecs_imds.demo import DEMO_VPC, demo_fleet
from fleets import NOW
from server import ServerProcess, free_port, get, split_responses
from test_fastpath import HARDENED_DEMO, SNAP, Transport, exchange, plane_of

WEB = "i-bp1demo0000000000001"


class Sock:
    """What `answered` uses of an accepted socket; sends at most `room` bytes."""

    def __init__(self, room: int = 1 << 20) -> None:
        self.sent = b""
        self.closed = False
        self.room = room

    def send(self, data: bytes, flags: int) -> int:
        assert flags & socket.MSG_DONTWAIT
        n = min(len(data), self.room)
        self.sent += data[:n]
        return n

    def close(self) -> None:
        self.closed = True


def request(path: str, token: str | None = None, close: bool = True) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 100.100.100.200\r\n"
            + (f"X-aliyun-ecs-metadata-token: {token}\r\n" if token else "")
            + ("Connection: close\r\n" if close else "") + "\r\n").encode()


@pytest.mark.parametrize("who", [WEB, HARDENED_DEMO, "i-unknown"])
@pytest.mark.parametrize("path", ["/latest/meta-data/instance-id", "/latest/meta-data/",
                                  "/latest/meta-data/all", "/latest/meta-data/nope", "/",
                                  "/latest/api/token", "/latest/user-data",
                                  "/latest/meta-data/ram/security-credentials/"])
@pytest.mark.parametrize("with_token", [False, True])
def test_answered_at_accept_as_the_connection_would(
        who: str, path: str, with_token: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    token = SNAP.key_ring.mint(HARDENED_DEMO, NOW, 60) if with_token else None
    data = request(path, token)
    expected, closed = exchange([data[:5], data[5:]], monkeypatch, who)
    assert closed
    sock = Sock()
    listener = ListenerState(DEMO_VPC, {"127.0.0.1": who})
    monkeypatch.setattr(accept.time, "time", lambda: float(NOW))
    assert accept.answered(plane_of(), listener, sock, "127.0.0.1", data, None)  # type: ignore[arg-type]
    assert (sock.sent, sock.closed) == (expected, True)


@pytest.mark.parametrize("data", [
    request("/latest/meta-data/instance-id", close=False),  # keep-alive: the loop's
    b"PUT /latest/api/token HTTP/1.1\r\nX-aliyun-ecs-metadata-token-ttl-seconds: 60\r\n"
    b"Connection: close\r\n\r\n",
    b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n",  # not complete yet
    b"GET /latest/meta-data/instance-id HTTP/1.0\r\n\r\n",
])
def test_anything_else_is_left_to_the_event_loop(data: bytes) -> None:
    sock = Sock()
    listener = ListenerState(DEMO_VPC, {"127.0.0.1": WEB})
    assert not accept.answered(plane_of(), listener, sock,  # type: ignore[arg-type]
                               "127.0.0.1", data, None)
    assert (sock.sent, sock.closed) == (b"", False)


def test_an_answer_that_does_not_fit_is_finished_by_the_event_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = request("/latest/meta-data/all")
    expected, _ = exchange([data[:5], data[5:]], monkeypatch, WEB)
    handed: list[tuple[Any, ...]] = []

    def hand_over(plane: DataPlane, listener: ListenerState, sock: Any, peer: str,
                  first: bytes, loop: Any) -> HttpConnection:
        conn = plane.connection(listener, peer, first)
        handed.append((sock, first, conn))
        return conn

    monkeypatch.setattr(accept, "hand_over", hand_over)
    monkeypatch.setattr(accept.time, "time", lambda: float(NOW))
    sock = Sock(room=100)
    listener = ListenerState(DEMO_VPC, {"127.0.0.1": WEB})
    assert accept.answered(plane_of(), listener, sock, "127.0.0.1", data, None)  # type: ignore[arg-type]
    assert sock.sent == expected[:100] and not sock.closed
    ((handed_sock, first, conn),) = handed
    assert handed_sock is sock and first == b""
    transport = Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    assert sock.sent + b"".join(transport.out) == expected and transport.closed


def test_bytes_already_read_are_answered_first(monkeypatch: pytest.MonkeyPatch) -> None:
    first = request("/latest/meta-data/instance-id", close=False)
    expected, _ = exchange([first], monkeypatch, WEB)
    conn = HttpConnection(plane_of(), ListenerState(DEMO_VPC, {"127.0.0.1": WEB}),
                          "127.0.0.1", first=first)
    transport = Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    assert b"".join(transport.out) == expected and not transport.closed


# --- for real ---------------------------------------------------------------------------
def test_large_answers_on_closing_connections(tmp_path: Path) -> None:
    fleet = demo_fleet()
    big = os.urandom(12 * 1024).hex()[:16 * 1024]  # user data at its 16 KiB limit
    fleet["instances"][0]["user-data"] = big
    port = free_port()
    srv = ServerProcess(tmp_path, fleet, [{"bind": f"127.0.0.1:{port}", "vpc-id": DEMO_VPC,
                                           "aliases": {"127.0.0.1": WEB}}],
                        limits={"rate": 0})
    srv.start()
    try:
        srv.wait_ready("127.0.0.1", port)
        for _ in range(20):
            status, headers, body = get(port, "/latest/user-data")
            assert (status, body) == (200, big.encode())
            assert headers["connection"] == "close"
        # many at once, each on its own connection
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(50)]
        for s in socks:
            s.sendall(request("/latest/user-data"))
        for s in socks:
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
            s.close()
            ((status, _, body),) = split_responses(b"".join(chunks))
            assert (status, body) == (200, big.encode())
    finally:
        srv.cleanup()
