"""The data plane's fast path reads exactly what the parser would.

Two claims, each checked against the reference it short-cuts:
- `simple_request` accepts only requests that httptools reads as the same one GET or token
  PUT (target, token, TTL, keep-alive) with nothing else that matters, and builds the same
  `Request` the parser path builds;
- a connection writes the same bytes whether a request took the fast path or the parser.
(There is one decision, `decide`, whichever way a request came in.)
"""

from __future__ import annotations

from typing import Any

import httptools
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ecs_imds.config import Limits
from ecs_imds.dataplane import connection
from ecs_imds.dataplane.connection import HttpConnection
from ecs_imds.dataplane.fastpath import SimpleRequests, simple_request
from ecs_imds.dataplane.fulfil import Fulfiller
from ecs_imds.dataplane.plane import DataPlane, ListenerState
from ecs_imds.demo import DEMO_VPC, demo_fleet
from ecs_imds.protocol import tokens
from ecs_imds.protocol.catalogue import JSON, OCTET, TEXT, Leaf
from ecs_imds.protocol.decide import Request
from ecs_imds.protocol.identity import IdentitySigner, generate_signing_identity
from ecs_imds.protocol.response import date_line, write, write_error, write_leaf
from fleets import NOW, snapshot_of

TOKEN_HEADER = "x-aliyun-ecs-metadata-token"
TTL_HEADER = "x-aliyun-ecs-metadata-token-ttl-seconds"
HARDENED_DEMO = "i-bp1demo0000000000002"
MAX_LINE, MAX_HEADERS = 2048, 8192


# --- simple_request against httptools -----------------------------------------------------
class Recorder:
    """What HttpConnection takes from httptools: url, headers (lower-cased, last wins)."""

    def __init__(self) -> None:
        self.begun = 0
        self.complete: list[tuple[bytes, bytes, dict[str, str], bool, int]] = []
        self.url = b""
        self.headers: dict[str, str] = {}
        self.header_size = 0
        self.body = b""
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self.begun += 1
        self.url, self.headers, self.header_size, self.body = b"", {}, 0, b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_size += len(name) + len(value) + 4
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete.append((self.parser.get_method(), self.url, self.headers,
                              self.parser.should_keep_alive(), self.header_size))


def assert_same_as_httptools(data: bytes) -> None:
    found = simple_request(data, MAX_LINE, MAX_HEADERS)
    if found is None:
        return
    req, keep_alive = found
    method, target, token, ttl = req.method, req.path, req.token, req.ttl
    rec = Recorder()
    rec.parser.feed_data(data)  # raises on anything httptools refuses
    assert rec.begun == 1 and len(rec.complete) == 1 and rec.body == b""
    parsed_method, url, headers, parser_keep_alive, header_size = rec.complete[0]
    assert parsed_method == method.encode() and url == target.encode()
    parsed = httptools.parse_url(url)
    assert parsed.path == url and parsed.query is None and parsed.fragment is None
    assert headers.get(TOKEN_HEADER) == token and headers.get(TTL_HEADER) == ttl
    assert headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers
    if method == "PUT":
        assert target == "/latest/api/token"
    else:
        assert method == "GET"
    assert parser_keep_alive == keep_alive
    assert len(url) <= MAX_LINE and header_size <= MAX_HEADERS
    assert req == Request.of(method, target, "", headers)  # what the parser path builds


GOOD_NAMES = ["Host", "User-Agent", "Accept", "Connection", "connection", "CONNECTION",
              "X-aliyun-ecs-metadata-token", "x-aliyun-ecs-metadata-token",
              "X-aliyun-ecs-metadata-token-ttl-seconds", "X-Forwarded-For", "Forwarded",
              "Expect", "X-Token", "Accept-Encoding", "Content-Length"]
BAD_NAMES = ["Transfer-Encoding", "Upgrade", "Proxy-Connection",
             "X-aliyun-ecs-metadata-token-x", "Bad Name", "", "Host:", "Hé"]
GOOD_VALUES = ["x", "close", "Close", "keep-alive", "Keep-Alive", "0", "100-continue",
               "a" * 64, "AAAA-_zz09", "127.0.0.1:8080", "*/*", "gzip, deflate"]
BAD_VALUES = ["upgrade", "close, keep-alive", "chunked", " x", "x ", "\tx", "a\tb", "é",
              "a\x00b", "", "  two spaces", "a\rb", "a\nb"]
WELL_KNOWN = ["X-aliyun-ecs-metadata-token-ttl-seconds: 21600", "Content-Length: 0",
              "content-length:0", "Connection: close", "Connection: keep-alive",
              "X-aliyun-ecs-metadata-token: AAAAAQ-_x", "Host: 100.100.100.200",
              "X-Forwarded-For: 10.0.0.1"]
SEPARATORS = [": ", ": ", ": ", ":", ":", ":  ", " : ", ":\t"]
SAFE_TARGET = st.from_regex(r"/[A-Za-z0-9._~!$&'()*+,;=:@/-]{0,20}", fullmatch=True)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` nine times out of ten: most requests are near the fast path's edge."""
    return st.integers(0, 9).flatmap(lambda n: bad if n == 0 else good)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(mostly(st.sampled_from(["GET", "GET", "PUT"]),
                         st.sampled_from(["HEAD", "POST", "get", "GETX", ""])))
    target = draw(mostly(st.one_of(SAFE_TARGET, st.just("/latest/api/token")), st.one_of(
        st.sampled_from(["/latest/meta-data/tags/instance/a?b", "/x#y", "/a%2Fb", "*", "",
                         "http://100.100.100.200/latest/", "/a b"]),
        st.text(max_size=12).map(lambda t: "/" + t))))
    version = draw(mostly(st.just("HTTP/1.1"), st.sampled_from(
        ["HTTP/1.0", "HTTP/2.0", "http/1.1", "HTTP/1.1 ", "HTTP/1.10"])))
    eol = draw(mostly(st.just("\r\n"), st.just("\n")))
    lines = [f"{method} {target} {version}"]
    lines += draw(st.lists(st.sampled_from(WELL_KNOWN), max_size=3))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(mostly(st.one_of(st.sampled_from(GOOD_NAMES),
                                     st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,8}",
                                                   fullmatch=True)),
                           st.one_of(st.sampled_from(BAD_NAMES), st.text(max_size=8))))
        value = draw(mostly(st.one_of(st.sampled_from(GOOD_VALUES),
                                      st.from_regex(r"[!-~]([ -~]{0,10}[!-~])?", fullmatch=True)),
                            st.one_of(st.sampled_from(BAD_VALUES), st.text(max_size=8))))
        lines.append(name + draw(st.sampled_from(SEPARATORS)) + value)
    tail = draw(mostly(st.just(""), st.sampled_from(["hello", "GET / HTTP/1.1\r\n\r\n", "G"])))
    return (eol.join(lines) + eol + eol + tail).encode("utf-8", "surrogatepass")


@settings(max_examples=3000)
@given(requests())
@example(b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n")
@example(b"GET / HTTP/1.1\r\nX-aliyun-ecs-metadata-token:  t\r\n\r\n")
def test_simple_request_agrees_with_httptools(data: bytes) -> None:
    try:
        assert_same_as_httptools(data)
    except httptools.HttpParserError as exc:
        raise AssertionError(f"simple_request accepted what httptools refuses: {exc}") from None


TOKEN = "AAAAAQBpzRq8" + "x" * 52
COMMON = [
    # wrk, curl, python-requests (cloud-init), urllib (Alibaba SDKs), a token, closing
    b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 100.100.100.200\r\nUser-Agent: curl/7.88.1\r\n"
    b"Accept: */*\r\n\r\n",
    b"GET /2016-01-01/meta-data/hostname HTTP/1.1\r\nHost: 100.100.100.200\r\n"
    b"User-Agent: Cloud-Init/23.1\r\nAccept-Encoding: gzip, deflate\r\nAccept: */*\r\n"
    b"Connection: keep-alive\r\nX-aliyun-ecs-metadata-token: " + TOKEN.encode() + b"\r\n\r\n",
    b"GET /latest/meta-data/ram/security-credentials/role HTTP/1.1\r\n"
    b"Accept-Encoding: identity\r\nHost: 100.100.100.200\r\nUser-Agent: Python-urllib/3.11\r\n"
    b"Connection: close\r\n\r\n",
    b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n"
    b"x-aliyun-ecs-metadata-token:" + TOKEN.encode() + b"\r\n\r\n",
    # token PUTs: curl, python-requests (Content-Length: 0), the Node SDK (lower case)
    b"PUT /latest/api/token HTTP/1.1\r\nHost: 100.100.100.200\r\nUser-Agent: curl/7.88.1\r\n"
    b"Accept: */*\r\nX-aliyun-ecs-metadata-token-ttl-seconds: 21600\r\n\r\n",
    b"PUT /latest/api/token HTTP/1.1\r\nHost: 100.100.100.200\r\nUser-Agent: Cloud-Init/23.1\r\n"
    b"Accept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\n"
    b"X-aliyun-ecs-metadata-token-ttl-seconds: 21600\r\nContent-Length: 0\r\n\r\n",
    b"PUT /latest/api/token HTTP/1.1\r\nx-aliyun-ecs-metadata-token-ttl-seconds: 21600\r\n"
    b"host: 100.100.100.200\r\nConnection: close\r\n\r\n",
]


@pytest.mark.parametrize("data", COMMON)
def test_common_requests_take_the_fast_path(data: bytes) -> None:
    assert simple_request(data, MAX_LINE, MAX_HEADERS) is not None
    assert_same_as_httptools(data)


@pytest.mark.parametrize("data", [
    b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n",  # not finished
    b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n",  # pipelined
    b"GET / HTTP/1.0\r\n\r\n",
    b"HEAD / HTTP/1.1\r\n\r\n",
    b"PUT /latest/api/token/ HTTP/1.1\r\n\r\n",
    b"PUT /latest/meta-data/ HTTP/1.1\r\n\r\n",
    b"PUT /latest/api/token HTTP/1.1\r\nContent-Length: 2\r\n\r\nab",
    b"PUT /latest/api/token HTTP/1.1\r\nContent-Length: 00\r\n\r\n",
    b"PUT /latest/api/token HTTP/1.1\r\nX-aliyun-ecs-metadata-token-ttl: 5\r\n\r\n",
    b"GET /latest/meta-data/?x=1 HTTP/1.1\r\n\r\n",
    b"GET /latest/meta-data/%69nstance-id HTTP/1.1\r\n\r\n",
    b"GET http://100.100.100.200/latest/ HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-aliyun-ecs-metadata-token: a\r\nX-aliyun-ecs-metadata-token: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-aliyun-ecs-metadata-token: a \r\n\r\n",
    b"GET / HTTP/1.1\r\nHost:\tx\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    b"GET / HTTP/1.1\nHost: x\n\n",
])
def test_everything_else_goes_to_the_parser(data: bytes) -> None:
    assert simple_request(data, MAX_LINE, MAX_HEADERS) is None


def test_limits_send_requests_to_the_parser() -> None:
    data = COMMON[1]
    assert simple_request(data, len("/latest/meta-data/"), MAX_HEADERS) is not None
    assert simple_request(data, len("/latest/meta-data/") - 1, MAX_HEADERS) is None
    assert simple_request(data, MAX_LINE, 64) is None


def test_simple_requests_are_remembered_within_bounds() -> None:
    known = SimpleRequests(MAX_LINE, MAX_HEADERS)
    for data in [*COMMON, b"HEAD / HTTP/1.1\r\n\r\n"]:
        assert known[data] == simple_request(data, MAX_LINE, MAX_HEADERS)
        assert data in known and known[data] == simple_request(data, MAX_LINE, MAX_HEADERS)
    long = b"GET /" + b"a" * SimpleRequests.LONGEST + b" HTTP/1.1\r\n\r\n"
    assert known[long] is not None and long not in known
    for n in range(SimpleRequests.SIZE + 10):
        assert known[b"GET /%d HTTP/1.1\r\n\r\n" % n] is not None
    assert len(known) <= SimpleRequests.SIZE


# --- a connection writes the same bytes either way ----------------------------------------
SNAP = snapshot_of(demo_fleet())


class Transport:
    """What a connection uses of an asyncio transport, recording what it writes."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def close(self) -> None:
        self.closed = True

    abort = close

    def get_extra_info(self, name: str) -> Any:
        return None

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


SIGNER = IdentitySigner(*generate_signing_identity())


def plane_of(limits: Limits | None = None) -> DataPlane:
    """A data plane serving the demo fleet (not listening: connections are fed by hand)."""
    return DataPlane(SNAP, limits or Limits(rate=0), Fulfiller(None, SIGNER))


def exchange(chunks: list[bytes], monkeypatch: pytest.MonkeyPatch,
             who: str = HARDENED_DEMO) -> tuple[bytes, bool]:
    """What a connection from `who` writes for `chunks`, read one after another."""
    monkeypatch.setattr(connection.time, "time", lambda: float(NOW))
    conn = HttpConnection(plane_of(), ListenerState(DEMO_VPC, {"127.0.0.1": who}), "127.0.0.1")
    transport = Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    for chunk in chunks:
        conn.data_received(chunk)
    return b"".join(transport.out), transport.closed


@pytest.mark.parametrize("with_token", [False, True])
@pytest.mark.parametrize("path", ["/latest/meta-data/instance-id", "/latest/meta-data/",
                                  "/latest/meta-data/all", "/latest/meta-data/nope",
                                  "/latest/api/token", "/2016-01-01/user-data"])
@pytest.mark.parametrize("close", [False, True])
def test_fast_and_parsed_requests_write_the_same_bytes(
        path: str, with_token: bool, close: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    token = SNAP.key_ring.mint(HARDENED_DEMO, NOW, 60)
    data = (f"GET {path} HTTP/1.1\r\nHost: 100.100.100.200\r\n"
            + (f"X-aliyun-ecs-metadata-token: {token}\r\n" if with_token else "")
            + ("Connection: close\r\n" if close else "") + "\r\n").encode()
    assert simple_request(data, MAX_LINE, MAX_HEADERS) is not None
    fast = exchange([data], monkeypatch)
    parsed = exchange([data[:7], data[7:]], monkeypatch)  # split: the parser's
    assert fast == parsed
    assert fast[0].startswith(b"HTTP/1.1 ") and fast[1] == close


@pytest.mark.parametrize("ttl", ["21600", "1", "0", "21601", "x", None])
@pytest.mark.parametrize("length", [False, True])
@pytest.mark.parametrize("close", [False, True])
def test_fast_and_parsed_token_puts_write_the_same_bytes(
        ttl: str | None, length: bool, close: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens.os, "urandom", lambda n: b"\x01" * n)  # the same token twice
    data = ("PUT /latest/api/token HTTP/1.1\r\nHost: 100.100.100.200\r\n"
            + (f"X-aliyun-ecs-metadata-token-ttl-seconds: {ttl}\r\n" if ttl else "")
            + ("Content-Length: 0\r\n" if length else "")
            + ("Connection: close\r\n" if close else "") + "\r\n").encode()
    assert simple_request(data, MAX_LINE, MAX_HEADERS) is not None
    fast = exchange([data], monkeypatch)
    parsed = exchange([data[:7], data[7:]], monkeypatch)
    assert fast == parsed
    assert fast[0].startswith(b"HTTP/1.1 200 " if ttl in ("21600", "1") else b"HTTP/1.1 400 ")


# --- the one writer -------------------------------------------------------------------------
def test_the_writer_lays_out_an_answer() -> None:
    date = date_line(NOW)
    assert date == b"Date: Fri, 15 Jan 2027 08:00:00 GMT\r\n"
    assert write_leaf(Leaf(b"i-x", TEXT), NOW) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 3\r\n" + date + b"\r\ni-x")
    assert write_leaf(Leaf(b"{}", JSON), NOW, keep_alive=False, head_only=True) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
        + date + b"Connection: close\r\n\r\n")
    assert write_error(429, NOW, True, ((b"Retry-After", b"3"),)) == (
        b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 17\r\n" + date + b"Retry-After: 3\r\n\r\nToo Many Requests")
    assert write(200, OCTET, b"\x00\xff", NOW + 1) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 2"
        b"\r\n" + date_line(NOW + 1) + b"\r\n\x00\xff")
