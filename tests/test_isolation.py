"""One hostile instance cannot hurt the others (issue 9, points 2-7, SPEC §8), on the wire.

Each test attacks a real server from one instance's source address and checks what the
others get meanwhile. Nothing is timed: the tests assert orders and outcomes ("B was
answered while A was still waiting", "the connection was reset before it was answered"),
and wait for them with bounded polls. The server runs in each of the variants of
tests/attacks.py (one process on SQLite, `--workers 2`, an IPv6 listener, PostgreSQL);
the attacks that need a server of their own (descriptor limits, timeouts) run on the
variants where what they test differs.
"""

from __future__ import annotations

import contextlib
import re
import resource
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from attacks import VARIANTS, Hostile, Net, one_answer, request, responses_of, start
from ecs_imds.dataplane import proxy
from pg import wait_until

if TYPE_CHECKING:
    from pg import PostgresCluster

CREDS = "/latest/meta-data/ram/security-credentials/hostile-role"
ID = "/latest/meta-data/instance-id"
CAP = 64  # connections per source (per worker: 32 each with two)
LIMITS = {"rate": 100, "burst": 200, "idle-timeout": 60, "request-timeout": 60}
# Every instance a test of the shared server uses, each for one test only (b: the victim).
NAMES = ["b", "cap", "lines", "pipe", "paused", "slowq", "slowo", "slowh", "slowa", "slowr",
         "stale", "flood", "off1", "off2", "up", "proxied"]


# The variants, marked as conftest.py's markers say (namespaces need root).
MARKS = {"ipv6": pytest.mark.netns, "postgres": pytest.mark.postgres}


@pytest.fixture(scope="module", params=[pytest.param(v, marks=MARKS.get(v, ())) for v in VARIANTS])
def hostile(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Hostile]:
    variant = request.param
    pg: PostgresCluster | None = None
    url = None
    if variant == "postgres":
        pg = request.getfixturevalue("postgres")
        url = pg.create_database()
    workers = 2 if variant == "workers2" else 1
    h = start(variant, tmp_path_factory.mktemp(variant), NAMES, pg_url=url,
              limits={**LIMITS, "connections-per-source": CAP // workers})
    yield h
    h.close()
    if pg is not None and url is not None:
        pg.drop_database(url)


# --- helpers --------------------------------------------------------------------------------
def ended(socks: list[socket.socket]) -> list[socket.socket]:
    """The connections the server has ended (or answered): readable now."""
    if not socks:
        return []
    readable, _, _ = select.select(socks, [], [], 0)
    return readable


def held(net: Net, source: str, count: int) -> list[socket.socket]:
    """`count` connections from `source`, each with a request begun and never finished."""
    socks = []
    for _ in range(count):
        sock = net.connect(source)
        sock.sendall(b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n")
        socks.append(sock)
    return socks


def nothing_but_the_end(sock: socket.socket) -> bool:
    """The server ended the connection without a byte of an answer."""
    responses, how = responses_of(sock)
    return responses == [] and how in ("eof", "reset")


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def warnings_of(h: Hostile, pattern: str) -> list[int]:
    """Each logged warning matching `pattern`: how many it stands for (itself and those it
    says were left out)."""
    counts = []
    for line in h.log_lines():
        if "WARNING" in line and re.search(pattern, line):
            left_out = re.search(r"\((\d+) more like it left out", line)
            counts.append(1 + (int(left_out.group(1)) if left_out else 0))
    return counts


def statuses(responses: list[tuple[int, dict[str, str], bytes]]) -> list[int]:
    return [status for status, _, _ in responses]


def victim_is_served(net: Net, connections: int = 4) -> None:
    """B gets its own instance id on `connections` new connections (with two workers, new
    connections land on both)."""
    for _ in range(connections):
        assert net.get("b", ID)[:3:2] == (200, b"i-b")


# --- 2. connections -------------------------------------------------------------------------
def test_one_source_is_capped_and_the_others_are_still_served(hostile: Hostile) -> None:
    net, workers = hostile.net, hostile.workers
    most = CAP  # per source, in all workers together
    began = time.monotonic()
    socks = held(net, "cap", 100)
    wait_until(lambda: len(ended(socks)) >= 100 - most, timeout=20)
    refused = ended(socks)
    kept = [s for s in socks if s not in refused]
    if workers == 1:
        assert len(refused) == 100 - most
    else:  # each worker caps its own share; the kernel spreads connections unevenly
        assert 100 - most <= len(refused) < 100
    assert all(nothing_but_the_end(s) for s in refused)  # closed at once, never answered
    # Another instance and a stranger are served while `cap` holds its connections.
    victim_is_served(net)
    assert net.get(net.unknown[7], ID)[0] == 403
    assert ended(kept) == []  # the ones admitted are still open, their requests pending
    time.sleep(1.1)  # past the warning's once-a-second: the next refusal is logged with a count
    late = net.connect("cap")
    late.sendall(request(ID))
    if workers == 1:
        assert nothing_but_the_end(late)
        # Every refusal is accounted for in the log, in at most a line a second.
        counts = warnings_of(hostile, r"refused a connection from \S+: \d+ connections open "
                                      r"from it")
        assert sum(counts) == 100 - most + 1
        assert 2 <= len(counts) <= time.monotonic() - began + 1  # once a second at most
    close_all([late, *socks])
    # Once they are gone, `cap` is served again: its count went down as they closed.
    wait_until(lambda: _served(net, "cap"), timeout=20)


def _served(net: Net, source: str) -> bool:
    try:
        return net.get(source, ID)[0] == 200
    except (OSError, ValueError):
        return False


# --- 3. unfinished input --------------------------------------------------------------------
ENDLESS = {  # a line that never ends, and what it must get
    "request line": (b"GET /", 414),
    "header value": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ", 431),
    "header name": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless", 431),
    "trailer": (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
                b"X-Endless: ", 431),
    "chunk extension": (b"PUT /latest/api/token HTTP/1.1\r\nHost: x\r\n"
                        b"X-aliyun-ecs-metadata-token-ttl-seconds: 60\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n1;x=", 431),
}
GIVE_UP = 1 << 20  # bytes sent without an answer: the server is keeping the line


@pytest.mark.parametrize("kind", list(ENDLESS))
def test_a_line_that_never_ends_is_refused_as_it_grows(hostile: Hostile, kind: str) -> None:
    start_bytes, status = ENDLESS[kind]
    sock = hostile.net.connect("lines", timeout=20)
    sock.sendall(start_bytes)
    sent = len(start_bytes)
    try:
        while sent < GIVE_UP:  # small pieces, each given time to be read on its own
            sock.sendall(b"a" * 256)
            sent += 256
            if select.select([sock], [], [], 0.002)[0]:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed while we were still sending: the answer is read below
    assert sent < GIVE_UP, "the line was kept without limit"
    responses, how = responses_of(sock)
    assert statuses(responses) == [status]  # one answer, before the line ever ended
    assert responses[0][1]["connection"] == "close" and how in ("eof", "reset")
    victim_is_served(hostile.net, 1)


# --- 4. clients that never read ---------------------------------------------------------------
def flood_unread(sock: socket.socket, raw: bytes, limit: int = 64 << 20,
                 stall: float = 15.0) -> tuple[int, str]:
    """Send `raw` again and again and never read: (bytes sent, how it ended) — "reset" when
    the server cut the connection off, "stalled" when nothing more could be sent for
    `stall` seconds while it stayed open."""
    sock.setblocking(False)
    sent = 0
    last = time.monotonic()
    while sent < limit:
        try:
            sent += sock.send(raw)
            last = time.monotonic()
        except BlockingIOError:
            if time.monotonic() - last > stall:
                return sent, "stalled"
            select.select([], [sock], [], 0.1)
        except (ConnectionResetError, BrokenPipeError):
            return sent, "reset"
    return sent, "unbounded"


def test_pipelining_without_reading_is_cut_off_past_the_write_buffer(hostile: Hostile
                                                                      ) -> None:
    sock = hostile.net.connect("pipe", rcvbuf=4096)
    # Within the burst the rate limit allows, in one read: ~3 MB of answers at once.
    sock.sendall(request("/latest/user-data", close=False) * 190)
    _, how = flood_unread(sock, request("/latest/user-data", close=False))
    assert how == "reset"
    assert warnings_of(hostile, r"cut off a connection from \S+ on \S+: its answers are not "
                                r"read")
    victim_is_served(hostile.net)


def test_a_peer_whose_answers_back_up_in_its_first_read_is_read_no_further(hostile: Hostile
                                                                          ) -> None:
    """Its first read (the one taken with the connection) asks for more than the kernel
    takes, so that reading pauses, but for less than the write buffer's bound; then it
    sends one request at a time and reads nothing. Nothing more is read from it until it
    reads: a server that read on (uvloop starts reading after `connection_made`, undoing a
    pause made in it) answered each lone request with no look at the bound — it is checked
    where pipelined requests are parsed — and cut the connection off only when requests
    came together, long past it (the peer that never sends two at once: never)."""
    sock = hostile.net.connect("paused", rcvbuf=4096)
    one = request("/latest/user-data", close=False)
    sock.sendall(one * 16)  # ~240 KB of answers: a 128 KB send buffer, then ours
    select.select([sock], [], [], 10)  # it was answered: the server has that first read
    sock.sendall(one)  # a read that may still be taken, and answered
    time.sleep(0.3)
    for _ in range(8):  # each one alone (a read of its own, if the server reads on)
        sock.sendall(one)
        time.sleep(0.02)
    # 13 answers (195 KB) on top of the first read's, at least 104 KB not in the kernel:
    # past the bound as they are parsed, for a server that read on; cut off then.
    sock.sendall(one * 4)
    time.sleep(1)
    assert tcp_state(sock) == TCP_ESTABLISHED
    sock.settimeout(3)
    # Once it reads, the rest is read (12 requests at once, 180 KB: within the bound) and
    # every answer comes, in order.
    responses, how = responses_of(sock)
    assert how == "open"
    assert [(s, b[:11]) for s, _, b in responses] == [(200, b"#cloud-conf")] * 29
    sock.close()
    victim_is_served(hostile.net)


def test_answers_queued_behind_a_slow_one_count_against_the_write_buffer(hostile: Hostile
                                                                         ) -> None:
    """Behind a credential the broker is slow to give, a peer pipelines large answers and
    reads none: it is cut off at once, not when the credential comes."""
    broker = hostile.broker
    sock = hostile.net.connect("slowq", rcvbuf=4096, timeout=20)
    try:
        sock.sendall(request(CREDS, close=False)
                     + request("/latest/user-data", close=False) * 100)
        assert nothing_but_the_end(sock)  # not one answer: the first was still awaited
        wait_until(lambda: broker.runs("slowq") == 1)  # its broker runs on, for the next one
    finally:
        broker.open_gate("slowq")
        sock.close()
    victim_is_served(hostile.net)


def test_answers_keep_their_order_behind_one_that_waits(hostile: Hostile) -> None:
    """Pipelined: a credential the broker is slow to give, then two leaves. The leaves are
    ready first, but the answers go out in the order asked."""
    broker = hostile.broker
    with hostile.net.connect("slowo", timeout=20) as sock:
        sock.sendall(request(CREDS, close=False) + request(ID, close=False)
                     + request("/latest/meta-data/hostname"))
        try:
            wait_until(lambda: broker.runs("slowo") == 1, timeout=20)
            assert ended([sock]) == []  # nothing is sent before the first answer
        finally:
            broker.open_gate("slowo")
        responses, how = responses_of(sock)
    assert [(s, b) for s, _, b in responses] == [
        (500, b"Internal Server Error"), (200, b"i-slowo"), (200, b"host-slowo")]
    assert how == "eof"


# --- 5. a slow or failing credential broker -------------------------------------------------
def test_a_client_that_half_closes_still_gets_every_answer(hostile: Hostile) -> None:
    """Requests, then the end of what the client sends (as `nc -N` does), while the first
    answer waits for the broker: every answer comes, then the connection ends."""
    broker = hostile.broker
    with hostile.net.connect("slowh", timeout=20) as sock:
        sock.sendall(request(CREDS, close=False) + request(ID, close=False))
        sock.shutdown(socket.SHUT_WR)
        try:
            wait_until(lambda: broker.runs("slowh") == 1, timeout=20)
        finally:
            broker.open_gate("slowh")
        responses, how = responses_of(sock)
    assert [(s, b) for s, _, b in responses] == [(500, b"Internal Server Error"),
                                                 (200, b"i-slowh")]
    assert how == "eof"


def test_a_slow_broker_makes_only_its_own_requests_wait(hostile: Hostile) -> None:
    net, broker = hostile.net, hostile.broker
    keep = net.connect("b")  # B's credential, fetched once, then read from the cache
    keep.sendall(request(CREDS, close=False))
    first = one_answer(keep)
    assert first[0] == 200 and b'"STS.i-b.' in first[2]
    waiting = net.connect("slowa", timeout=20)
    try:
        waiting.sendall(request(CREDS))
        wait_until(lambda: broker.runs("slowa") == 1, timeout=20)  # its broker is running
        victim_is_served(net, 8)
        keep.sendall(request(CREDS, close=False))
        assert one_answer(keep)[::2] == first[::2]  # the cached one: no wait, no new run
        assert ended([waiting]) == []  # while A still waits for its broker
    finally:
        broker.open_gate("slowa")
    responses, _ = responses_of(waiting)
    assert [(s, body) for s, _, body in responses] == [(500, b"Internal Server Error")]
    waiting.close()
    keep.close()


def test_a_failing_broker_is_retried_with_backoff(hostile: Hostile) -> None:
    """Every request gets its 500 at once while the broker is backed off from: far fewer
    runs of the broker than requests, more than one (it is retried), each wait longer
    than the one before (as the log says)."""
    net, broker = hostile.net, hostile.broker
    broker.open_gate("slowr")  # its broker fails at once
    time.sleep(1.1)  # past the last warning of the kind (other tests' brokers): ours are logged
    sock = net.connect("slowr", timeout=20)  # one connection: one server process's backoff

    def failures() -> list[tuple[int, int]]:
        """(failure, seconds to the next try) of each warning logged about `slowr`."""
        return [(int(n), int(wait)) for n, wait in re.findall(
            r"instance i-slowr role \S+ \(failure (\d+), next try in (\d+) s\)",
            hostile.srv.log())]

    asked = 0
    while len(failures()) < 2 or failures()[-1][0] < 3:
        assert asked < 600, f"{broker.runs('slowr')} runs in {asked} requests"
        sock.sendall(request(CREDS, close=False))
        assert one_answer(sock)[0] == 500
        asked += 1
        time.sleep(0.05)  # a client polling, well below the rate limit
    runs = broker.runs("slowr")
    assert runs >= 3 and asked >= 4 * runs
    logged = failures()
    assert [n for n, _ in logged] == sorted({n for n, _ in logged})
    waits = [wait for _, wait in logged]
    assert waits == sorted(waits) and waits[-1] > waits[0]
    sock.close()


def test_a_credential_is_served_until_it_expires_while_its_refresh_fails(hostile: Hostile
                                                                         ) -> None:
    """`stale` got a credential inside its refresh window; the broker now hangs, then
    fails. Every read gets the credential at once, while one refresh runs at a time."""
    net, broker = hostile.net, hostile.broker
    sock = net.connect("stale", timeout=20)
    sock.sendall(request(CREDS, close=False))
    first = one_answer(sock)
    assert first[0] == 200 and b'"STS.i-stale.1"' in first[2]
    try:
        for _ in range(5):
            sock.sendall(request(CREDS, close=False))
            assert one_answer(sock)[::2] == first[::2]
        wait_until(lambda: broker.runs("stale") == 2, timeout=20)  # one refresh, hanging
    finally:
        broker.open_gate("stale")
    for _ in range(5):  # the refresh failed: still the credential that has not expired
        sock.sendall(request(CREDS, close=False))
        assert one_answer(sock)[::2] == first[::2]
    assert broker.runs("stale") <= 3  # backed off from, not retried on every read
    sock.close()


# --- 6. floods --------------------------------------------------------------------------------
def flood(net: Net, source: str, count: int = 600) -> list[tuple[int, dict[str, str], bytes]]:
    """`count` pipelined requests on one connection; the answers it got before it ended."""
    with net.connect(source, timeout=20) as sock:
        sock.sendall(request(ID, close=False) * count)
        responses, how = responses_of(sock)
    assert how in ("eof", "reset")
    return responses


def assert_refused_then_closed(responses: list[tuple[int, dict[str, str], bytes]],
                               served: int) -> None:
    """`served` answers first (the burst), then 429s with Retry-After — with a `served` one
    now and then as the bucket refills — until a 429 closes the connection, long before
    every request of the flood was answered."""
    codes = statuses(responses)
    first_429 = codes.index(429)
    burst = LIMITS["burst"]
    assert 0 < first_429 <= 2 * burst and set(codes[:first_429]) == {served}
    assert set(codes) == {served, 429} and codes.count(429) >= burst // 2
    assert len(codes) < 600 and codes[-1] == 429
    assert all(int(h["retry-after"]) >= 1 for s, h, _ in responses[first_429:-1] if s == 429)
    assert responses[-1][1].get("connection") == "close"


def test_a_flood_gets_429_and_then_its_connection_closed(hostile: Hostile) -> None:
    assert_refused_then_closed(flood(hostile.net, "flood"), 200)
    victim_is_served(hostile.net)


@pytest.mark.parametrize("who", ["stranger", "disabled"])
def test_callers_that_are_no_instance_are_limited_per_source(hostile: Hostile, who: str
                                                             ) -> None:
    net = hostile.net
    source, other = (net.unknown[0], net.unknown[1]) if who == "stranger" else ("off1", "off2")
    assert_refused_then_closed(flood(net, source), 403)
    # Another such source has a bucket of its own: refused as it is, not throttled.
    assert net.get(other, ID)[0] == 403
    victim_is_served(net)


def test_refused_proxy_headers_are_logged_once_a_second_with_a_count(hostile: Hostile
                                                                     ) -> None:
    """An instance sending PROXY protocol headers (claiming to be the per-host proxy) to
    a listener that speaks it: each connection closed unanswered, the log bounded."""
    net = hostile.net
    header = proxy.header(net.sources["b"]) + request(ID)
    began = time.monotonic()
    for n in range(101):
        if n == 100:
            time.sleep(1.1)  # the next warning is logged, with how many were left out
        with net.connect("proxied", port=net.proxy_port) as sock:
            sock.sendall(header)
            assert nothing_but_the_end(sock)
    seconds = time.monotonic() - began
    counts = warnings_of(hostile, r"PROXY protocol header from an untrusted peer")
    assert 1 <= len(counts) <= (seconds + 1) * hostile.workers  # once a second at most
    if hostile.workers == 1:
        assert sum(counts) == 101
    # Through that listener the instance is still served as itself, without a header.
    with net.connect("proxied", port=net.proxy_port) as sock:
        sock.sendall(request(ID))
        assert statuses(responses_of(sock)[0]) == [200]


# --- 7. one request, one answer ---------------------------------------------------------------
@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    b"CONNECT 100.100.100.200:443 HTTP/1.1\r\nHost: 100.100.100.200:443\r\n\r\n",
    b"CONNECT 100.100.100.200:80 HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x85abcdefghi"
    + b"GET / HTTP/1.1\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
], ids=["websocket", "h2c", "connect", "connect-pipelined", "websocket-frames", "h2-preface"])
def test_upgrade_and_connect_get_exactly_one_answer(hostile: Hostile, raw: bytes) -> None:
    with hostile.net.connect("up") as sock:
        sock.sendall(raw)
        responses, how = responses_of(sock)
    assert statuses(responses) == [400] and how in ("eof", "reset")
    assert responses[0][1]["connection"] == "close"


@pytest.mark.parametrize(("raw", "status"), [
    (b"HEAD /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"HEAD / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n", 431),
    (b"HEAD /latest/meta-data/\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"HEAD / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 400),
], ids=["414", "431", "400-target", "400-upgrade"])
def test_a_refused_head_gets_its_answer_without_a_body(hostile: Hostile, raw: bytes,
                                                       status: int) -> None:
    """A body after the answer to a HEAD would be read as the start of the next answer."""
    with hostile.net.connect("up") as sock:
        sock.sendall(raw)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status) and b"Content-Length: " in head
    assert body == b""


# --- descriptors: servers of their own ------------------------------------------------------
def open_descriptors(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


@pytest.mark.parametrize("variant", ["sqlite", "workers2"])
def test_out_of_descriptors_accepting_pauses_and_the_others_are_served(
        variant: str, tmp_path: Path) -> None:
    """The server believes it may take thousands of connections, but its processes are left
    a dozen descriptors (prlimit): a flood from a dozen instances runs it out (EMFILE). It
    stops accepting for a moment at a time, with a warning at most once a second, spends
    little CPU doing so, and goes on serving the connections it has."""
    names = [f"x{n}" for n in range(12)]
    h = start(variant, tmp_path, ["b", *names], limits={"idle-timeout": 60,
                                                         "request-timeout": 60})
    try:
        keep = h.net.connect("b")
        keep.sendall(request(ID, close=False))
        assert one_answer(keep)[0] == 200
        for pid in h.pids():
            room = open_descriptors(pid) + 12
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (room, room))
        before = len(h.log_lines())
        flood = [sock for name in names for sock in held(h.net, name, 20)]
        wait_until(lambda: any("accepting on" in line for line in h.log_lines()[before:]),
                   timeout=20)
        cpu, wall = h.cpu_seconds(), time.monotonic()
        for _ in range(20):  # B's connection is served all along
            keep.sendall(request(ID, close=False))
            assert one_answer(keep)[2] == b"i-b"
            time.sleep(0.1)
        time.sleep(1)
        cpu, wall = h.cpu_seconds() - cpu, time.monotonic() - wall
        assert cpu < 0.5 * wall, f"{cpu:.2f} s of CPU in {wall:.2f} s: a busy loop"
        lines = h.log_lines()[before:]
        assert all("WARNING" in line for line in lines)
        assert len(lines) <= 3 * (wall + 5) * h.workers  # once a second per kind, at most
        close_all(flood)
        wait_until(lambda: _served(h.net, "b"), timeout=30)  # accepting again
        keep.close()
    finally:
        h.close()


def test_with_few_descriptors_one_source_still_cannot_take_them_all(tmp_path: Path) -> None:
    """RLIMIT_NOFILE 300 leaves room for 44 connections (256 are kept for the rest): one
    source's cap is lowered to a quarter of that, so the others keep room."""

    def launcher(argv: list[str], log: object) -> subprocess.Popen[str]:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=lambda: resource.setrlimit(
                                    resource.RLIMIT_NOFILE, (300, 300)))

    h = start("sqlite", tmp_path, ["b", "a"], launcher=launcher,
              limits={"idle-timeout": 60, "request-timeout": 60})
    try:
        socks = held(h.net, "a", 30)
        wait_until(lambda: len(ended(socks)) >= 30 - 11, timeout=20)
        assert len(ended(socks)) == 30 - 11
        victim_is_served(h.net)
        assert warnings_of(h, r"limits.connections-per-source lowered to 11, a quarter of "
                              r"the 44 connections")
        close_all(socks)
    finally:
        h.close()


# --- deadlines: idle-timeout and request-timeout, each alone ----------------------------------
TCP_ESTABLISHED, TCP_CLOSE = 1, 7


def tcp_state(sock: socket.socket) -> int:
    """The connection's state as the kernel has it (tcp_info's first byte), read without
    reading any data: a reset moves it to CLOSE, a FIN to CLOSE_WAIT."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


@pytest.fixture(scope="module")
def idle_deadline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    """idle-timeout 1 s; requests may take a minute; a write buffer no peer fills."""
    h = start("sqlite", tmp_path_factory.mktemp("idle"), ["b", "zero"],
              limits={"idle-timeout": 1, "request-timeout": 60, "write-buffer": 64 << 20})
    yield h
    h.close()


@pytest.fixture(scope="module")
def request_deadline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    """request-timeout 1 s; connections may idle a minute."""
    h = start("sqlite", tmp_path_factory.mktemp("request"), ["b"],
              limits={"idle-timeout": 60, "request-timeout": 1})
    yield h
    h.close()


def test_idle_timeout_closes_idle_connections_not_requests_in_progress(
        idle_deadline: Hostile) -> None:
    net = idle_deadline.net
    slow = net.connect("b", timeout=30)
    slow.sendall(b"GET /latest/meta-data/instance-id HTTP/1.1\r\n")  # begun, not finished
    idle = net.connect("b", timeout=30)
    idle.sendall(request(ID, close=False))
    assert one_answer(idle)[0] == 200
    assert idle.recv(1) == b""  # closed once it idled a second, politely
    assert ended([slow]) == []  # the request begun before is not idle: still open
    slow.sendall(b"Host: x\r\nConnection: close\r\n\r\n")
    assert [(s, b) for s, _, b in responses_of(slow)[0]] == [(200, b"i-b")]
    slow.close()
    idle.close()


def test_a_reader_with_a_closed_window_is_cut_off_at_the_idle_deadline(
        idle_deadline: Hostile) -> None:
    """It asks for 1.5 MB and reads nothing (a receive buffer of 1 KB): far below the write
    buffer's bound, so the idle deadline ends it — with a reset, so that the kernel does
    not keep the answers for it."""
    sock = idle_deadline.net.connect("zero", rcvbuf=1024, timeout=30)
    sock.sendall(request("/latest/user-data", close=False) * 100)
    wait_until(lambda: tcp_state(sock) != TCP_ESTABLISHED, timeout=30)
    assert tcp_state(sock) == TCP_CLOSE
    assert warnings_of(idle_deadline, r"cut off a connection from \S+ on \S+: deadline passed")
    sock.close()
    victim_is_served(idle_deadline.net, 1)


def test_request_timeout_closes_slow_requests_not_idle_connections(
        request_deadline: Hostile) -> None:
    net = request_deadline.net
    idle = net.connect("b", timeout=30)
    idle.sendall(request(ID, close=False))
    assert one_answer(idle)[0] == 200
    slow = net.connect("b", timeout=30)
    slow.sendall(b"GET /latest/meta-data/instance-id HTTP/1.1\r\n")  # and no more
    assert nothing_but_the_end(slow)  # closed a second after its first byte, unanswered
    assert ended([idle]) == []  # the idle connection, older, is still open
    idle.sendall(request(ID))
    assert [(s, b) for s, _, b in responses_of(idle)[0]] == [(200, b"i-b")]
    slow.close()
    idle.close()
