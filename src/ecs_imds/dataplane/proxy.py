"""PROXY protocol version 2 (HAProxy's binary header), parsed without IO.

A per-host proxy in front of the data plane (one per VPC, in the VPC's network) opens its
own connection to a listener, so the peer address the listener sees is the proxy's. The
proxy's first bytes say who the instance really is: a 16-byte header, the address block,
then optional TLVs. Only a listener configured with the proxy's address as trusted reads
it; from anyone else it would be a way to claim any instance's identity.

`parse(data)` returns a `ProxyHeader` (how many bytes it took, and the source address, or
None for a LOCAL connection: the proxy's own health check), `Incomplete` (send more bytes)
or `Invalid` (close the connection). It never raises for any input.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ecs_imds.protocol.snapshot import normalise_ip

if TYPE_CHECKING:
    from ecs_imds.dataplane.connection import HttpConnection

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
HEADER_SIZE = 16  # signature, version/command, family/transport, length
MAX_LENGTH = 4096  # address block and TLVs; a real proxy sends a few hundred bytes at most

_LOCAL, _PROXY = 0x0, 0x1
_UNSPEC, _INET, _INET6, _UNIX = 0x0, 0x1, 0x2, 0x3
_STREAM = 0x1
_ADDRESS_SIZE = {_INET: 12, _INET6: 36, _UNIX: 216}


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    length: int  # bytes of the header: the request starts after them
    source: str | None  # the client's address; None: use the connection's own peer
    source_port: int | None = None


@dataclass(frozen=True, slots=True)
class Incomplete:
    """Not enough bytes yet to tell."""


@dataclass(frozen=True, slots=True)
class Invalid:
    reason: str  # for the operator's log; never sent to the peer


INCOMPLETE = Incomplete()


def looks_like_proxy(data: bytes) -> bool | None:
    """Whether `data` begins with the v2 signature: True, False, or None while `data` is
    still a prefix of it. A plain HTTP request differs from it at its first byte."""
    if data[:len(SIGNATURE)] == SIGNATURE[:len(data)]:
        return True if len(data) >= len(SIGNATURE) else None
    return False


def parse(data: bytes) -> ProxyHeader | Incomplete | Invalid:
    """The PROXY v2 header at the start of `data` (which may hold more: the request)."""
    seen = looks_like_proxy(data)
    if seen is False:
        return Invalid("no PROXY protocol v2 signature")
    if len(data) < HEADER_SIZE:
        return INCOMPLETE
    version, command = data[12] >> 4, data[12] & 0xF
    if version != 2:
        return Invalid(f"PROXY protocol version {version}, not 2")
    if command not in (_LOCAL, _PROXY):
        return Invalid(f"unknown PROXY command {command:#x}")
    family, transport = data[13] >> 4, data[13] & 0xF
    length = int.from_bytes(data[14:16], "big")
    if length > MAX_LENGTH:
        return Invalid(f"PROXY header of {length} bytes is too long")
    end = HEADER_SIZE + length
    if len(data) < end:
        return INCOMPLETE
    if command == _LOCAL:  # the proxy speaking for itself: the peer is who it is
        return ProxyHeader(end, None)
    if family == _UNSPEC:
        return ProxyHeader(end, None)
    if family not in _ADDRESS_SIZE:
        return Invalid(f"unknown address family {family:#x}")
    size = _ADDRESS_SIZE[family]
    if length < size:
        return Invalid(f"address block of {length} bytes, {size} needed")
    if family == _UNIX:
        return Invalid("a unix socket address identifies no instance")
    if transport != _STREAM:
        return Invalid(f"transport {transport:#x} is not a stream")
    problem = _check_tlvs(data[HEADER_SIZE + size:end])
    if problem:
        return Invalid(problem)
    block = data[HEADER_SIZE:HEADER_SIZE + size]
    if family == _INET:
        source = str(ipaddress.IPv4Address(block[0:4]))
        port = int.from_bytes(block[8:10], "big")
    else:
        source = str(ipaddress.IPv6Address(block[0:16]))
        port = int.from_bytes(block[32:34], "big")
    return ProxyHeader(end, source, port)


def _check_tlvs(tlvs: bytes) -> str | None:
    """TLVs carry extras (ALPN, TLS details, a cloud's own ids) that we ignore, but they
    must at least fit: a header whose parts do not add up is not one we trust."""
    at = 0
    while at < len(tlvs):
        if len(tlvs) - at < 3:
            return "truncated TLV"
        at += 3 + int.from_bytes(tlvs[at + 1:at + 3], "big")
        if at > len(tlvs):
            return "TLV longer than the header"
    return None


def header(source: str | None, destination: str | None = None, source_port: int = 0,
           destination_port: int = 0, tlvs: bytes = b"") -> bytes:
    """A v2 header as a proxy sends it (PROXY for an address, LOCAL for None): for tests
    and for the tools that stand in for a per-host proxy."""
    if source is None:
        return SIGNATURE + bytes([0x20, 0x00]) + len(tlvs).to_bytes(2, "big") + tlvs
    src = ipaddress.ip_address(source)
    dst = ipaddress.ip_address(destination or ("0.0.0.0" if src.version == 4 else "::"))
    family = _INET if src.version == 4 else _INET6
    block = (src.packed + dst.packed + source_port.to_bytes(2, "big")
             + destination_port.to_bytes(2, "big"))
    return (SIGNATURE + bytes([0x21, family << 4 | _STREAM])
            + (len(block) + len(tlvs)).to_bytes(2, "big") + block + tlvs)


class ProxyFront:
    """The start of a connection on a listener that speaks PROXY protocol v2.

    From a trusted peer (the per-host proxy) the header is required: its source address
    becomes the connection's peer address, the one that identifies the instance; without a
    valid header the connection is closed. From any other peer, a connection that starts
    with the v2 signature is closed (someone claiming to be a proxy), and plain HTTP is served
    with the real peer address. Once the start is settled the front steps aside: every later
    read goes straight to the connection.
    """

    __slots__ = ("_pending", "trusted")

    def __init__(self, trusted: bool) -> None:
        self.trusted = trusted
        self._pending = b""

    def read(self, conn: HttpConnection, data: bytes) -> bytes:
        """The request bytes that follow the header; b"" while the header is incomplete or
        after the connection was refused."""
        data = self._pending + data
        if self.trusted:
            parsed = parse(data)
            if isinstance(parsed, Incomplete):
                self._pending = data
                return b""
            if isinstance(parsed, Invalid):
                conn.refuse(parsed.reason)
                return b""
            if parsed.source is not None:
                conn.peer_ip = normalise_ip(parsed.source)
            data = data[parsed.length:]
        else:
            looks = looks_like_proxy(data)
            if looks is None:
                self._pending = data
                return b""
            if looks:
                conn.refuse("PROXY protocol header from an untrusted peer")
                return b""
        conn.settled()
        return data
