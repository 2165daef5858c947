"""A request fuzzer for the data plane: many connections, each a pipeline of requests sent
in random pieces, against a real server whose instances are told apart by their source
address (tests/attacks.py). tests/test_fuzz.py runs it briefly, bench/fuzz.py (`make fuzz`)
for a million requests.

Every connection is a *prefix* of requests that are valid however they are dressed (header
names in any case, extra headers, a space or none after the colon, absolute-form targets,
HTTP/1.0 with keep-alive, a Host or none), and sometimes a *tail* that is not: random
bytes, a request with bytes flipped, inserted or cut, a line too long, a body where none may
be, Upgrade or CONNECT. What a prefix request must get is what the server answers to the
same request asked alone, plainly, on a connection of its own (asked once per kind of
request and remembered): the fuzzer checks

- every request of the prefix is answered exactly once, in order, with that answer
  (status, type and body; a token PUT and a signature by status only: they differ each time);
- a tail gets at most one answer per request head it holds (and one for what follows
  them), and the connection ends;
- no answer is a 5xx, and none names another instance (its id, hostname or document);
- afterwards, the server's log holds no traceback.

Everything is derived from one seed, printed with every failure, so that a run can be
repeated exactly (bar the machine's timing).
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from attacks import Hostile, instance_id, request

NAMES = ["fuzz0", "fuzz1", "fuzz2", "hard3", "hard4", "off5"]
ROLE = "hostile-role"
TTL = "X-aliyun-ecs-metadata-token-ttl-seconds"
TOKEN = "X-aliyun-ecs-metadata-token"
PATHS = [
    "/", "/latest", "/latest/", "/2016-01-01/", "/2016-01-01/meta-data/", "/2017-01-01/",
    "/latest/meta-data", "/latest/meta-data/", "/latest/meta-data/instance-id",
    "/latest/meta-data/instance-id/", "/latest/meta-data/hostname", "/latest/meta-data/all",
    "/latest/meta-data/instance/instance-name", "/latest/meta-data/network/interfaces/macs/",
    "/latest/meta-data/tags/instance/", "/latest/meta-data/tags/instance/who",
    "/latest/meta-data/ram/security-credentials/",
    f"/latest/meta-data/ram/security-credentials/{ROLE}",
    "/latest/meta-data/ram/security-credentials/other-role", "/latest/user-data",
    "/latest/vendor-data", "/latest/dynamic/instance-identity/document",
    "/latest/dynamic/instance-identity/pkcs7",
    "/latest/dynamic/instance-identity/pkcs7?audience=fuzz",
    "/latest/dynamic/instance-identity/pkcs7?audience=", "/latest/maintenance/",
    "/latest/meta-data/nope", "/latest/meta-data/../meta-data/instance-id",
    "/latest//meta-data/instance-id", "/latest/meta-data/instance%2did",
    "/latest/meta-data/instance-id?x=1&y", "/latest/api/token", "/2016-01-01/api/token",
    "/latest/meta-data/instance-id#frag", "/%00", "/latest/meta-data/\u00e9".encode(
        "utf-8").decode("latin-1"),
]
METHODS = ["GET"] * 14 + ["HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"]
TOKEN_KINDS = ["none"] * 5 + ["own", "own", "other", "garbage", "empty"]
TTLS = ["21600", "60", "1", "0", "21601", "abc", " 60 ", None]


@dataclass(frozen=True)
class Kind:
    """What a request means: the answer depends on this and on nothing else."""

    source: str  # instance name, or an address that is no instance
    method: str
    target: str
    token: str = "none"  # none | own | other | garbage | empty
    ttl: str | None = None
    proxied: bool = False

    @property
    def varies(self) -> bool:
        """Answers that differ each time (a new token, a signature): compared by status."""
        return "pkcs7" in self.target or (self.method == "PUT" and "api/token" in self.target)


@dataclass
class Request:
    kind: Kind
    raw: bytes


@dataclass
class Connection:
    source: str
    prefix: list[Request]
    tail: bytes = b""
    pieces: list[int] = field(default_factory=list)  # where the bytes are split
    pause: bool = False  # a pause between pieces: each is read on its own


Answer = tuple[int, bytes, bytes]  # status, content type, body
PROBE = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True)
class Expected:
    answer: Answer
    closes: bool  # the connection ends after it: later requests are not answered


class Failure(AssertionError):
    pass


class Fuzzer:
    """One run: `run(requests)` against `hostile`; `stats` says what happened."""

    def __init__(self, hostile: Hostile, seed: int, threads: int = 8) -> None:
        self.hostile = hostile
        self.seed = seed
        self.threads = threads
        self.net = hostile.net
        self.tokens: dict[str, str] = {}
        self.oracle: dict[Kind, Expected] = {}
        self._oracle_lock = threading.Lock()
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self.failures: list[str] = []
        others = {name: [instance_id(n).encode() for n in NAMES if n != name]
                  + [f"host-{n}".encode() for n in NAMES if n != name] for name in NAMES}
        self._foreign = {name: re.compile(b"|".join(re.escape(x) for x in names))
                         for name, names in others.items()}

    # -- setup -------------------------------------------------------------------------------
    def mint_tokens(self) -> None:
        for name in NAMES:
            status, _, body = self.net.get(name, "/latest/api/token", {TTL: "21600"}, "PUT")
            if status == 200:
                self.tokens[name] = body.decode()

    # -- generating --------------------------------------------------------------------------
    def sources(self) -> list[str]:
        return [*NAMES, *NAMES, self.net.unknown[0]]

    def kind(self, rng: random.Random, source: str) -> Kind:
        method = rng.choice(METHODS)
        target = rng.choice(PATHS)
        ttl = None
        if method == "PUT" and rng.random() < 0.8:
            target = rng.choice(["/latest/api/token"] * 4 + ["/2016-01-01/api/token",
                                                             "/latest/meta-data/"])
            ttl = rng.choice(TTLS)
        token = rng.choice(TOKEN_KINDS)
        return Kind(source, method, target, token, ttl, rng.random() < 0.05)

    def headers(self, kind: Kind) -> list[tuple[str, str]]:
        """The headers that carry `kind`'s meaning."""
        out = []
        if kind.token != "none":
            value = {"own": self.tokens.get(kind.source, "x"),
                     "other": self.tokens[NAMES[0] if kind.source != NAMES[0] else NAMES[1]],
                     "garbage": "AAAAAQ-not-a-token", "empty": ""}[kind.token]
            out.append((TOKEN, value))
        if kind.ttl is not None:
            out.append((TTL, kind.ttl))
        if kind.proxied:
            out.append(("X-Forwarded-For", "10.1.2.3"))
        return out

    def dress(self, rng: random.Random, kind: Kind, close: bool) -> bytes:
        """`kind` as one of the many ways of writing it."""
        target = kind.target
        if rng.random() < 0.1:
            target = "http://100.100.100.200" + target
        http10 = rng.random() < 0.05
        headers = self.headers(kind)
        if rng.random() < 0.8:
            headers.append(("Host", "100.100.100.200"))
        for n in range(rng.choice([0, 0, 0, 1, 2, 5])):
            headers.append((f"X-Fuzz-{n}", "".join(rng.choice("abcXYZ019 -_.:/")
                                                   for _ in range(rng.randint(1, 30))).strip()
                            or "v"))
        if kind.method in ("PUT", "POST", "PATCH") and rng.random() < 0.5:
            headers.append(("Content-Length", "0"))
        if close:
            if not http10:
                headers.append(("Connection", rng.choice(["close", "Close", "close"])))
        elif http10 or rng.random() < 0.1:
            headers.append(("Connection", rng.choice(["keep-alive", "Keep-Alive"])))
        rng.shuffle(headers)
        lines = [f"{kind.method} {target} HTTP/1.{0 if http10 else 1}"]
        for name, value in headers:
            name = "".join(c.upper() if rng.random() < 0.3 else c.lower() for c in name) \
                if rng.random() < 0.3 else name
            sep = rng.choice([": ", ": ", ":", ":  ", ":\t"])
            lines.append(f"{name}{sep}{value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def tail(self, rng: random.Random, source: str) -> bytes:
        """Bytes that are not a valid request, of one of several shapes."""
        base = self.dress(rng, self.kind(rng, source), close=False)
        shape = rng.randrange(9)
        if shape == 0:
            return rng.randbytes(rng.randint(1, 300))
        if shape in (1, 2):  # bytes flipped, inserted, cut
            data = bytearray(base)
            for _ in range(rng.randint(1, 6)):
                at = rng.randrange(len(data))
                op = rng.randrange(3)
                if op == 0:
                    data[at] = rng.randrange(256)
                elif op == 1:
                    data[at:at] = rng.randbytes(rng.randint(1, 4))
                else:
                    del data[at:at + rng.randint(1, 4)]
            return bytes(data)
        if shape == 3:
            return base[:rng.randrange(1, len(base))]
        if shape == 4:
            return b"GET /" + b"a" * rng.randint(2040, 4000) + b" HTTP/1.1\r\n\r\n"
        if shape == 5:
            return base[:-2] + b"".join(b"X-Big-%d: %s\r\n" % (n, b"v" * 900)
                                        for n in range(rng.randint(8, 12))) + b"\r\n"
        if shape == 6:
            return base[:-2] + b"Content-Length: %d\r\n\r\n" % rng.randint(1, 99) + b"x" * 99
        if shape == 7:
            return rng.choice([b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade"
                               b"\r\n\r\n", b"CONNECT 100.100.100.200:80 HTTP/1.1\r\n\r\n",
                               b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"])
        return base[:-2] + b"Transfer-Encoding: chunked\r\n\r\n" + rng.choice(
            [b"0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\n", b"1\r\nx\r\n0\r\nT: v\r\n\r\n"])

    def connection(self, rng: random.Random) -> Connection:
        source = rng.choice(self.sources())
        size = rng.choice([1, 1, 1, 2, 2, 3, 4, 8, 16])
        has_tail = rng.random() < 0.2
        prefix = []
        for n in range(size):
            kind = self.kind(rng, source)
            last = n == size - 1 and not has_tail
            prefix.append(Request(kind, self.dress(rng, kind, close=last)))
        conn = Connection(source, prefix, self.tail(rng, source) if has_tail else b"")
        total = sum(len(r.raw) for r in prefix) + len(conn.tail)
        if rng.random() < 0.5:
            conn.pieces = sorted(rng.sample(range(1, total), min(total - 1, rng.randint(1, 8))))
            conn.pause = rng.random() < 0.1
        return conn

    # -- the oracle --------------------------------------------------------------------------
    def expected(self, kind: Kind) -> Expected:
        """`kind` asked plainly on a connection of its own, then a second request: its
        answer, and whether the connection ended after it."""
        with self._oracle_lock:
            found = self.oracle.get(kind)
        if found is not None:
            return found
        headers = dict(self.headers(kind))
        if kind.method in ("PUT", "POST", "PATCH"):
            headers["Content-Length"] = "0"
        raw = request(kind.target, headers, close=False, method=kind.method)
        responses = read_responses(self.exchange(kind.source, raw + PROBE),
                                   [kind.method, "GET"])
        if len(responses) not in (1, 2):
            raise Failure(f"asked alone, {kind} got {len(responses)} answers")
        found = Expected(responses[0], len(responses) == 1)
        with self._oracle_lock:
            self.oracle[kind] = found
        return found

    def exchange(self, source: str, raw: bytes) -> bytes:
        with self.net.connect(source, timeout=20) as sock:
            sock.sendall(raw)
            return read_until_end(sock)

    # -- running -----------------------------------------------------------------------------
    def run(self, requests: int, progress: Callable[[int], None] | None = None) -> Counter[str]:
        """Send about `requests` requests; raises Failure naming the seed at the first
        thing found wrong."""
        self.mint_tokens()
        rng = random.Random(self.seed)
        batch: list[tuple[int, Connection]] = []
        sent = number = 0
        with ThreadPoolExecutor(self.threads) as pool:
            while sent < requests:
                conn = self.connection(rng)
                batch.append((number, conn))
                number += 1
                sent += len(conn.prefix) + (1 if conn.tail else 0)
                if len(batch) >= 200 or sent >= requests:
                    for _ in pool.map(lambda job: self.check(*job), batch):
                        pass
                    batch.clear()
                    if self.failures:
                        raise Failure(f"seed {self.seed}: " + "\n".join(self.failures[:5]))
                    if progress is not None:
                        progress(sent)
        return self.stats

    def check(self, number: int, conn: Connection) -> None:
        try:
            self._check(conn)
        except Failure as exc:
            self.failures.append(f"connection {number} from {conn.source}: {exc}")
        except OSError as exc:
            self.failures.append(f"connection {number} from {conn.source}: {exc!r}")

    def _check(self, conn: Connection) -> None:
        wanted = [self.expected(r.kind) for r in conn.prefix]
        data = b"".join(r.raw for r in conn.prefix) + conn.tail
        with self.net.connect(conn.source, timeout=20) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            at = 0
            try:
                for cut in [*conn.pieces, len(data)]:
                    sock.sendall(data[at:cut])
                    at = cut
                    if conn.pause:
                        time.sleep(0.002)
                if conn.tail:
                    sock.shutdown(socket.SHUT_WR)  # a tail may be unfinished: the end says so
            except OSError:  # reset, broken pipe, not connected: it ended the connection
                pass  # while we sent; what it answered is read below
            got = read_until_end(sock)
        # The requests answered: up to the first whose answer ends the connection.
        answered = next((n + 1 for n, want in enumerate(wanted) if want.closes), len(wanted))
        tail = conn.tail if answered == len(wanted) else b""
        methods = [r.kind.method for r in conn.prefix[:answered]]
        answers = read_responses(got, methods, rest=bool(tail))
        prefix = answers[:answered]
        if len(prefix) < answered:
            raise Failure(f"{len(prefix)} answers to {answered} requests: "
                          f"{data[:300]!r} got {got[:300]!r}")
        for req, want, answer in zip(conn.prefix, wanted, prefix, strict=False):
            same = answer[0] == want.answer[0] if req.kind.varies else answer == want.answer
            if not same:
                raise Failure(f"{req.raw!r} got {answer[:2]} {answer[2][:80]!r}, asked alone "
                              f"{want.answer[:2]} {want.answer[2][:80]!r}")
        extra = answers[answered:]
        if not tail and extra:
            raise Failure(f"{len(extra)} answers more than requests: {got[-300:]!r}")
        heads = tail.count(b"\r\n\r\n")
        if len(extra) > heads + 1:  # each request it holds, and garbage after them
            raise Failure(f"a tail of {heads} heads got {len(extra)} answers: "
                          f"{conn.tail[:200]!r}")
        foreign = self._foreign.get(conn.source)
        with self._stats_lock:
            self.stats["connections"] += 1
            self.stats["requests"] += len(conn.prefix) + (1 if conn.tail else 0)
            for status, _, body in answers:
                self.stats[f"status {status}"] += 1
                if status >= 500:
                    raise Failure(f"a {status}: {data[:300]!r}")
                if foreign is not None and foreign.search(body):
                    raise Failure(f"another instance's answer: {body[:200]!r}")


def read_until_end(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise Failure(f"the connection stayed open after {b''.join(chunks)[-200:]!r}") from None
    return b"".join(chunks)


_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) [A-Za-z ]+\r\n")


def read_responses(data: bytes, methods: list[str], rest: bool = False) -> list[Answer]:
    """Answers framed by Content-Length (none for a HEAD's), in order; with `rest`, what
    follows the answers to `methods` may answer HEAD or not (a tail's)."""
    out: list[Answer] = []
    at = 0
    while at < len(data):
        match = _STATUS.match(data, at)
        if match is None:
            raise Failure(f"not an answer at byte {at}: {data[at:at + 200]!r} in {data[:400]!r}")
        end = data.find(b"\r\n\r\n", at)
        if end < 0:
            raise Failure(f"an answer cut short: {data[at:at + 200]!r}")
        head = data[match.end():end].decode("latin-1")
        fields = dict(line.split(": ", 1) for line in head.split("\r\n") if line)
        if "Content-Length" not in fields or "Content-Type" not in fields:
            raise Failure(f"an answer without Content-Length or Content-Type: {head!r}")
        length = int(fields["Content-Length"])
        body_at = end + 4
        n = len(out)
        if n < len(methods):
            head_only = methods[n] == "HEAD"
        else:  # a tail's: a HEAD's when what follows is the end or the next answer
            head_only = rest and length > 0 and (
                body_at == len(data) or _STATUS.match(data, body_at) is not None)
        body = b"" if head_only else data[body_at:body_at + length]
        if len(body) < (0 if head_only else length):
            raise Failure(f"a body cut short: {data[at:at + 200]!r}")
        out.append((int(match.group(1)), fields["Content-Type"].encode(), body))
        at = body_at + len(body)
    return out
