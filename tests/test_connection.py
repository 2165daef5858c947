"""dataplane.connection: a read of many pipelined requests is parsed a slice per turn of the
event loop, so that the other connections on the loop are answered in between — and every
request of the read is still answered, in order, once."""

from __future__ import annotations

import asyncio

from ecs_imds.config import Limits
from ecs_imds.dataplane.connection import PARSE_SLICE, HttpConnection
from ecs_imds.dataplane.plane import DataPlane, ListenerState
from ecs_imds.demo import DEMO_VPC
from test_fastpath import Transport, plane_of

WEB, SPOT = "i-bp1demo0000000000001", "i-bp1demo0000000000003"
ID = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 100.100.100.200\r\n\r\n"
MANY = 1500  # pipelined in one read: 100 KB, 25 slices


class Wire(Transport):
    """A transport that writes into one log shared by every connection (who, answer), and
    says whether it is reading."""

    def __init__(self, log: list[tuple[str, bytes]], who: str) -> None:
        super().__init__()
        self.log, self.who, self.reading = log, who, True

    def write(self, data: bytes) -> None:
        super().write(data)
        self.log.append((self.who, data))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def connected(plane: DataPlane, who: str, log: list[tuple[str, bytes]]
              ) -> tuple[HttpConnection, Wire]:
    address = {WEB: "127.0.0.1", SPOT: "127.0.0.3"}[who]
    conn = HttpConnection(plane, ListenerState(DEMO_VPC, {address: who}), address)
    wire = Wire(log, who)
    conn.connection_made(wire)  # type: ignore[arg-type]
    return conn, wire


async def settled() -> None:
    """Let the loop run until no slice is left (each takes one turn)."""
    for _ in range(4 * MANY):
        await asyncio.sleep(0)


def answers(log: list[tuple[str, bytes]], who: str) -> list[bytes]:
    return [data for w, data in log if w == who]


def test_the_others_are_answered_between_the_slices_of_a_long_read() -> None:
    log: list[tuple[str, bytes]] = []

    async def run() -> None:
        plane = plane_of(Limits(rate=0))
        flooding, wire = connected(plane, WEB, log)
        other, _ = connected(plane, SPOT, log)
        flooding.data_received(ID * MANY)
        assert not wire.reading  # until its read is parsed
        asyncio.get_running_loop().call_soon(other.data_received, ID)  # read meanwhile
        await settled()
        assert wire.reading and not wire.closed

    asyncio.run(run())
    mine = answers(log, WEB)
    assert len(mine) == MANY and all(a.endswith(b"\r\n\r\n" + WEB.encode()) for a in mine)
    assert [a[-len(SPOT):] for a in answers(log, SPOT)] == [SPOT.encode()]
    # Answered after a slice or two of the long read, not after all of it.
    assert [w for w, _ in log].index(SPOT) <= 2 * (PARSE_SLICE // len(ID) + 1)


def test_a_read_that_comes_while_one_is_parsed_is_answered_after_it() -> None:
    """(uvloop starts reading after connection_made, whatever was paused in it.)"""
    log: list[tuple[str, bytes]] = []
    late = ID.replace(b"instance-id", b"hostname")

    async def run() -> None:
        conn, _ = connected(plane_of(Limits(rate=0)), WEB, log)
        conn.data_received(ID * MANY)
        conn.data_received(late)
        await settled()

    asyncio.run(run())
    mine = answers(log, WEB)
    assert len(mine) == MANY + 1
    assert all(a.endswith(WEB.encode()) for a in mine[:-1])
    assert not mine[-1].endswith(WEB.encode())  # the hostname's answer, last


def test_a_half_close_during_a_long_read_ends_the_connection_after_every_answer() -> None:
    log: list[tuple[str, bytes]] = []

    async def run() -> None:
        conn, wire = connected(plane_of(Limits(rate=0)), WEB, log)
        conn.data_received(ID * MANY)
        assert conn.eof_received()  # kept open: its requests are still being answered
        assert not wire.closed
        await settled()
        assert wire.closed

    asyncio.run(run())
    assert len(answers(log, WEB)) == MANY


def test_behind_a_request_that_closes_nothing_more_is_answered_but_one_refusal() -> None:
    """An answer that waits (a signature, made off the loop) holds the queue; behind it, a
    request that closes, and more requests in later slices of the read: the first of those
    gets the one 400, the rest nothing (the parser stops at its first error)."""
    log: list[tuple[str, bytes]] = []
    pkcs7 = ID.replace(b"meta-data/instance-id", b"dynamic/instance-identity/pkcs7")
    closing = ID.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")

    async def run() -> None:
        plane = plane_of(Limits(rate=0))
        conn, wire = connected(plane, WEB, log)
        conn.data_received(pkcs7 + ID * 100 + closing + ID * 200)
        for _ in range(500):
            await asyncio.sleep(0.01)
            if wire.closed:
                break
        assert wire.closed

    asyncio.run(run())
    statuses = [int(a[9:12]) for a in answers(log, WEB)]
    assert statuses == [200] * 102 + [400]
