"""PROXY protocol v2 parsing: every field, every truncation, every way to be wrong."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecs_imds.dataplane.proxy import (
    INCOMPLETE,
    MAX_LENGTH,
    SIGNATURE,
    Incomplete,
    Invalid,
    ProxyHeader,
    header,
    looks_like_proxy,
    parse,
)

REQUEST = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n\r\n"


def raw(ver_cmd: int = 0x21, fam: int = 0x11, block: bytes | None = None,
        length: int | None = None) -> bytes:
    """A header built field by field, to break one field at a time."""
    if block is None:
        block = bytes([192, 168, 0, 10, 100, 100, 100, 200, 0x9c, 0x40, 0, 80])
    size = len(block) if length is None else length
    return SIGNATURE + bytes([ver_cmd, fam]) + size.to_bytes(2, "big") + block


# --- what a proxy sends -----------------------------------------------------------------------
def test_ipv4_source() -> None:
    data = raw() + REQUEST
    assert parse(data) == ProxyHeader(28, "192.168.0.10", 40000)
    assert data[28:] == REQUEST


def test_ipv6_source() -> None:
    data = header("fd00::10", "fd00::1", 5555, 80) + REQUEST
    assert parse(data) == ProxyHeader(52, "fd00::10", 5555)


def test_ipv4_mapped_source_is_left_to_the_caller_to_normalise() -> None:
    parsed = parse(header("::ffff:192.168.0.10", "::1", 1, 80))
    assert isinstance(parsed, ProxyHeader)
    assert ipaddress.ip_address(parsed.source).ipv4_mapped == ipaddress.ip_address(  # type: ignore
        "192.168.0.10")


def test_local_is_the_proxy_speaking_for_itself() -> None:
    assert parse(header(None) + REQUEST) == ProxyHeader(16, None)
    # LOCAL may carry an address block: it is skipped, not used
    assert parse(raw(ver_cmd=0x20) + REQUEST) == ProxyHeader(28, None)
    # ... whatever family it claims
    assert parse(raw(ver_cmd=0x20, fam=0xF2, block=b"\x00" * 5)) == ProxyHeader(21, None)


def test_unspecified_family_means_the_real_peer() -> None:
    assert parse(raw(fam=0x00, block=b"")) == ProxyHeader(16, None)
    assert parse(raw(fam=0x00, block=b"\x01\x02\x03")) == ProxyHeader(19, None)


def test_tlvs_are_skipped() -> None:
    tlvs = (b"\x01\x00\x02h2"           # ALPN
            + b"\x04\x00\x00"           # NOOP, empty
            + b"\xea\x00\x05vpc-1")     # a custom one
    data = header("10.0.0.1", "10.0.0.2", 1, 2, tlvs) + REQUEST
    assert parse(data) == ProxyHeader(28 + len(tlvs), "10.0.0.1", 1)


def test_header_builder_matches_the_field_by_field_layout() -> None:
    assert header("192.168.0.10", "100.100.100.200", 40000, 80) == raw()


# --- not enough yet ----------------------------------------------------------------------------
@pytest.mark.parametrize("full", [raw(), header("fd00::10", "fd00::1", 1, 2),
                                  header(None), header("10.0.0.1", tlvs=b"\x04\x00\x01x")])
def test_every_prefix_is_incomplete(full: bytes) -> None:
    for cut in range(len(full)):
        assert parse(full[:cut]) is INCOMPLETE, cut
    assert isinstance(parse(full), ProxyHeader)


def test_length_over_the_limit_is_refused_before_it_arrives() -> None:
    assert isinstance(parse(raw(length=MAX_LENGTH + 1)[:16]), Invalid)
    assert parse(raw(length=MAX_LENGTH)[:16]) is INCOMPLETE


# --- wrong ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("position", range(len(SIGNATURE)))
def test_any_signature_byte_wrong(position: int) -> None:
    data = bytearray(raw())
    data[position] ^= 0x40
    assert isinstance(parse(bytes(data)), Invalid)
    # and it is refused as soon as the wrong byte is there, without waiting for more
    assert isinstance(parse(bytes(data[:position + 1])), Invalid)


@pytest.mark.parametrize("version", [0, 1, 3, 0xF])
def test_other_versions(version: int) -> None:
    parsed = parse(raw(ver_cmd=version << 4 | 1))
    assert isinstance(parsed, Invalid) and "version" in parsed.reason


@pytest.mark.parametrize("command", range(2, 16))
def test_unknown_commands(command: int) -> None:
    assert isinstance(parse(raw(ver_cmd=0x20 | command)), Invalid)


@pytest.mark.parametrize("family", range(4, 16))
def test_unknown_families(family: int) -> None:
    assert isinstance(parse(raw(fam=family << 4 | 1)), Invalid)


def test_unix_addresses_identify_no_instance() -> None:
    parsed = parse(raw(fam=0x31, block=b"/run/x".ljust(216, b"\x00") * 1))
    assert isinstance(parsed, Invalid) and "unix" in parsed.reason


@pytest.mark.parametrize("transport", [0x0, 0x2, 0x3, 0xF])
def test_only_streams(transport: int) -> None:
    assert isinstance(parse(raw(fam=0x10 | transport)), Invalid)
    block = header("fd00::1")[16:]
    assert isinstance(parse(raw(fam=0x20 | transport, block=block)), Invalid)


@pytest.mark.parametrize(("fam", "size"), [(0x11, 12), (0x21, 36)])
def test_address_block_too_short(fam: int, size: int) -> None:
    for short in range(size):
        parsed = parse(raw(fam=fam, block=b"\x01" * short))
        assert isinstance(parsed, Invalid) and "address block" in parsed.reason, short


@pytest.mark.parametrize("tlvs", [b"\x01", b"\x01\x00", b"\x01\x00\x05abcd",
                                  b"\x04\x00\x00\x01\x00\x09x"])
def test_broken_tlvs(tlvs: bytes) -> None:
    parsed = parse(header("10.0.0.1", tlvs=tlvs))
    assert isinstance(parsed, Invalid) and "TLV" in parsed.reason


@pytest.mark.parametrize("data", [
    REQUEST,
    b"PROXY TCP4 192.168.0.10 100.100.100.200 40000 80\r\n" + REQUEST,  # version 1, text
    b"\r\n" + REQUEST,
    b"\x00" * 32,
])
def test_not_a_v2_header(data: bytes) -> None:
    assert isinstance(parse(data), Invalid)
    assert looks_like_proxy(data) is False


# --- telling PROXY traffic from plain HTTP ------------------------------------------------
def test_looks_like_proxy() -> None:
    assert looks_like_proxy(b"") is None
    assert looks_like_proxy(b"\r\n") is None
    assert looks_like_proxy(SIGNATURE[:11]) is None
    assert looks_like_proxy(SIGNATURE) is True
    assert looks_like_proxy(raw() + REQUEST) is True
    assert looks_like_proxy(b"\r\n\r\nGET") is False
    assert looks_like_proxy(b"G") is False


# --- properties -----------------------------------------------------------------------------
@given(st.binary(max_size=300))
def test_never_raises(data: bytes) -> None:
    result = parse(data)
    assert isinstance(result, ProxyHeader | Incomplete | Invalid)
    if isinstance(result, ProxyHeader):
        assert 16 <= result.length <= len(data)


@given(st.binary(max_size=300))
def test_never_raises_after_a_signature(rest: bytes) -> None:
    result = parse(SIGNATURE + rest)
    assert isinstance(result, ProxyHeader | Incomplete | Invalid)


addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)


@given(addresses, st.integers(0, 65535), st.binary(max_size=40))
def test_round_trip(source: str, port: int, request: bytes) -> None:
    data = header(source, None, port, 80) + request
    parsed = parse(data)
    assert isinstance(parsed, ProxyHeader)
    assert (parsed.source, parsed.source_port) == (source, port)
    assert data[parsed.length:] == request
