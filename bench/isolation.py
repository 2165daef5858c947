"""`make bench` (part): one hostile instance against the others, measured (issue 9, SPEC §8).

    python bench/isolation.py [--workers 1,2] [--quick] [--only WORDS] [--out BENCHMARKS.md]

A real server (SQLite, the default limits, `--workers N`) serves a fleet on loopback, its
instances told apart by their source address (tests/attacks.py). The victim, instance B,
reads its instance id at a fixed modest rate — on one kept-alive connection and on a new
connection per request — from a process of its own, so that the attacker's Python does not
slow the victim's; its p50, p99 and failures are recorded first quiet, then while instance A
runs each attack in turn, each bounded in count and in time:

- descriptors: A opens connections (each with a request begun) until refused, up to 2,000;
- slowloris: 1,000 connections from A, a byte on each every 3 s, those cut off reopened;
- endless lines: 32 connections each sending a header line that never ends, reopened;
- unread answers: 200 connections pipelining large answers and never reading, reopened;
- request flood: pipelined GETs far over A's rate limit, on connection after connection;
- stranger flood: the same from an address that is no instance's;
- slow broker: A asks for its RAM credentials on 20 connections at once, again and again,
  while its broker (`issuer: command`) sleeps 10 s and then fails.

Around each attack: the server's resident memory (every serving process) before, at its
peak, and whether it came back within 10 MB of before within 10 s of the attack's end; and
the lines its log grew by. Targets (issue 9): B has 0 failures and p99 ≤ max(2 x quiet p99,
quiet p99 + 5 ms); RSS grows ≤ 50 MB and returns within 10 s; the log grows ≤ 100 lines.

Everything goes to loopback. The table goes to stdout and into BENCHMARKS.md between its
`isolation:` markers (appended with them when they are missing).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import multiprocessing
import os
import resource
import select
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from attacks import Hostile, Net, one_answer, request, start  # noqa: E402

VICTIM, ATTACKER = "b", "slowa"  # i-slowa's broker sleeps, then fails (tests/attacks.py)
ID = "/latest/meta-data/instance-id"
CREDS = "/latest/meta-data/ram/security-credentials/hostile-role"
RATE = 50  # B's requests per second in each of its two ways (well under its rate limit)
BROKER_SLEEP = 10.0
BEGIN, END = "<!-- isolation:begin -->", "<!-- isolation:end -->"
MB = 1 << 20


# --- the victim -----------------------------------------------------------------------------
@dataclass
class Victim:
    """What B saw in one phase: latencies in ms, and the first few failures."""

    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    reasons: list[str] = field(default_factory=list)

    def fail(self, reason: str) -> None:
        self.failures += 1
        if len(self.reasons) < 3:
            self.reasons.append(reason)

    def p(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _paced(seconds: float, one: Callable[[], None]) -> None:
    """`one()` RATE times a second for `seconds`, on a fixed schedule (a late one is sent
    at once: the rate does not drop when the server is slow)."""
    began = time.monotonic()
    n = 0
    while (due := began + n / RATE) < began + seconds:
        time.sleep(max(0.0, due - time.monotonic()))
        one()
        n += 1


def _victim(net: Net, seconds: float, out: Connection) -> None:
    """B's two readers, in a process of its own; sends back the Victim."""
    seen = Victim()
    lock = threading.Lock()

    def record(began: float, status: int, body: bytes) -> None:
        with lock:
            if (status, body) == (200, b"i-" + VICTIM.encode()):
                seen.latencies.append((time.perf_counter() - began) * 1000)
            else:
                seen.fail(f"{status} {body[:40]!r}")

    kept: list[socket.socket] = []

    def kept_alive() -> None:
        began = time.perf_counter()
        try:
            if not kept:
                kept.append(net.connect(VICTIM, timeout=5))
            kept[0].sendall(request(ID, close=False))
            status, _, body = one_answer(kept[0])
            record(began, status, body)
        except (OSError, ValueError) as exc:
            with lock:
                seen.fail(f"kept-alive: {exc!r}")
            for sock in kept:
                sock.close()
            kept.clear()

    def new_connection() -> None:
        began = time.perf_counter()
        try:
            with net.connect(VICTIM, timeout=5) as sock:
                sock.sendall(request(ID))
                status, _, body = one_answer(sock)
            record(began, status, body)
        except (OSError, ValueError) as exc:
            with lock:
                seen.fail(f"new connection: {exc!r}")

    other = threading.Thread(target=_paced, args=(seconds, new_connection))
    other.start()
    _paced(seconds, kept_alive)
    other.join()
    out.send(seen)


# --- the attacks ------------------------------------------------------------------------------
def _reset(sock: socket.socket) -> None:
    """Close without lingering (the bench's own side of thousands of connections)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def _ended(socks: list[socket.socket]) -> set[socket.socket]:
    """The connections the server has ended (readable: an answer, the end or a reset)."""
    poller = select.poll()
    by_fd = {sock.fileno(): sock for sock in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    return {by_fd[fd] for fd, _ in poller.poll(0)}


def descriptors(net: Net, until: float) -> str:
    socks: list[socket.socket] = []
    refused = 0
    try:
        while time.monotonic() < until and len(socks) < 2000:
            try:
                sock = net.connect(ATTACKER, timeout=5)
                sock.sendall(b"GET " + ID.encode() + b" HTTP/1.1\r\n")
            except OSError:
                refused += 1
                continue
            socks.append(sock)
        time.sleep(0.5)
        refused += len(_ended(socks))
        time.sleep(max(0.0, until - time.monotonic()))
        return f"{len(socks):,} opened, {refused:,} refused at once"
    finally:
        for sock in socks:
            _reset(sock)


def slowloris(net: Net, until: float) -> str:
    socks: list[socket.socket] = []
    opened = ended = 0
    try:
        while time.monotonic() < until:
            gone = _ended(socks)
            for sock in gone:
                _reset(sock)
            ended += len(gone)
            socks = [s for s in socks if s not in gone]
            while len(socks) < 1000 and time.monotonic() < until:
                with contextlib.suppress(OSError):
                    sock = net.connect(ATTACKER, timeout=5)
                    sock.sendall(b"GET " + ID.encode() + b" HTTP/1.1\r\nX-a: ")
                    socks.append(sock)
                opened += 1
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(b"a")
            time.sleep(max(0.0, min(3.0, until - time.monotonic())))
        return f"{opened:,} opened, {ended:,} ended by the server"
    finally:
        for sock in socks:
            _reset(sock)


def _feeding(net: Net, until: float, count: int, begin: bytes, more: bytes,
             rcvbuf: int = 0) -> str:
    """`count` connections from A that send `begin`, then `more` again and again, and never
    read; those the server ends are replaced by new ones ten times a second."""
    socks: list[socket.socket] = []
    opened = ended = 0
    sent = 0
    refilled = 0.0
    try:
        while time.monotonic() < until:
            if len(socks) < count and time.monotonic() > refilled + 0.1:
                refilled = time.monotonic()
                for _ in range(count - len(socks)):
                    try:
                        sock = net.connect(ATTACKER, timeout=5, rcvbuf=rcvbuf)
                        sock.setblocking(False)
                        sock.send(begin)
                        socks.append(sock)
                    except OSError:
                        pass
                    opened += 1
            for sock in list(socks):
                try:
                    sent += sock.send(more)
                except BlockingIOError:
                    continue
                except OSError:
                    socks.remove(sock)
                    _reset(sock)
                    ended += 1
            time.sleep(0.01)
        return f"{opened:,} opened, {ended:,} ended by the server, {sent / MB:,.0f} MB sent"
    finally:
        for sock in socks:
            _reset(sock)


def endless_lines(net: Net, until: float) -> str:
    return _feeding(net, until, 32, b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ", b"a" * 1024)


def unread_answers(net: Net, until: float) -> str:
    big = request("/latest/user-data", close=False)
    return _feeding(net, until, 200, big * 20, big, rcvbuf=4096)


def _flood_from(net: Net, source: str, until: float, threads: int = 2) -> str:
    began = time.monotonic()
    counts = {"sent": 0, "answered": 0, "429": 0, "connections": 0}
    lock = threading.Lock()
    burst = request(ID, close=False) * 999 + request(ID)

    def one() -> None:
        while time.monotonic() < until:
            data = b""
            try:
                with net.connect(source, timeout=5) as sock:
                    sock.sendall(burst)
                    while chunk := sock.recv(1 << 16):
                        data += chunk
            except OSError:
                pass
            with lock:
                counts["sent"] += 1000
                counts["connections"] += 1
                counts["answered"] += data.count(b"HTTP/1.1 ")
                counts["429"] += data.count(b"HTTP/1.1 429 ")

    workers = [threading.Thread(target=one) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seconds = max(1.0, time.monotonic() - began)
    return (f"{counts['sent'] / seconds:,.0f} requests/s offered on {counts['connections']:,} "
            f"connections; {counts['answered']:,} answered, {counts['429']:,} of them 429")


def request_flood(net: Net, until: float) -> str:
    return _flood_from(net, ATTACKER, until)


def stranger_flood(net: Net, until: float) -> str:
    return _flood_from(net, net.unknown[0], until)


def slow_broker(net: Net, until: float) -> str:
    answers: dict[int, int] = {}
    lock = threading.Lock()

    def one() -> None:
        while time.monotonic() < until:
            status = 0
            try:
                with net.connect(ATTACKER, timeout=BROKER_SLEEP + 5) as sock:
                    sock.sendall(request(CREDS))
                    status = one_answer(sock)[0]
            except (OSError, ValueError):
                pass
            with lock:
                answers[status] = answers.get(status, 0) + 1
            time.sleep(0.1)

    workers = [threading.Thread(target=one) for _ in range(20)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return "answers " + ", ".join(f"{status or 'none'}: {n:,}"
                                  for status, n in sorted(answers.items()))


ATTACKS: list[tuple[str, Callable[[Net, float], str]]] = [
    ("descriptor flood (until refused, ≤ 2,000)", descriptors),
    ("slowloris (1,000 connections, a byte every 3 s)", slowloris),
    ("32 never-ending header lines", endless_lines),
    ("200 pipelining connections that never read", unread_answers),
    ("request flood (over A's rate limit)", request_flood),
    ("an unknown source flooding", stranger_flood),
    ("credential broker sleeping 10 s, then failing", slow_broker),
]


# --- one phase --------------------------------------------------------------------------------
@dataclass
class Row:
    name: str
    victim: Victim
    note: str = ""
    rss_before: int = 0
    rss_peak: int = 0
    rss_after: int = 0
    returned_s: float | None = 0.0  # seconds after the end until RSS came back; None: never
    log_lines: int = 0


def phase(h: Hostile, name: str, seconds: float,
          attack: Callable[[Net, float], str] | None) -> Row:
    """B measured for `seconds` while `attack` runs (None: quiet); then RSS's return."""
    lines = len(h.log_lines())
    before = h.rss()
    receiver, sender = multiprocessing.get_context("fork").Pipe(duplex=False)
    victim = multiprocessing.get_context("fork").Process(
        target=_victim, args=(h.net, seconds, sender))
    until = time.monotonic() + seconds
    victim.start()
    notes: list[str] = []
    worker = None
    if attack is not None:
        worker = threading.Thread(target=lambda: notes.append(attack(h.net, until)))
        worker.start()
    peak = before
    while (worker is not None and worker.is_alive()) or time.monotonic() < until:
        peak = max(peak, h.rss())
        time.sleep(0.2)
    seen: Victim = receiver.recv()
    victim.join()
    ended = time.monotonic()
    returned: float | None = None
    while time.monotonic() < ended + 10:
        after = h.rss()
        peak = max(peak, after)
        if after <= before + 10 * MB:
            returned = time.monotonic() - ended
            break
        time.sleep(0.25)
    row = Row(name, seen, notes[0] if notes else "", before, peak, after, returned,
              len(h.log_lines()) - lines)
    print(f"  {name}: B {len(seen.latencies):,} ok, {seen.failures} failed "
          f"{seen.reasons}, p50 {seen.p(0.5):.2f} ms, p99 {seen.p(0.99):.2f} ms; RSS "
          f"{before / MB:.0f} → peak {peak / MB:.0f} → {after / MB:.0f} MB; "
          f"log +{row.log_lines}; {row.note}", flush=True)
    return row


def run(workers: int, seconds: float, work: Path, only: str = "") -> list[Row]:
    names = [VICTIM, ATTACKER]
    h = start("workers2" if workers == 2 else "sqlite", work, names,
              broker_sleep=BROKER_SLEEP, unknown=2)
    try:
        with contextlib.suppress(OSError):  # warm up: B's answer rendered, caches filled
            for _ in range(50):
                h.net.get(VICTIM, ID)
        rows = [phase(h, "quiet", seconds, None)]
        for name, attack in ATTACKS:
            if only and not any(words in name for words in only.split(",")):
                continue
            # The broker's first answer takes its 10 s: the phase lasts past it.
            length = max(seconds, BROKER_SLEEP + 3) if attack is slow_broker else seconds
            rows.append(phase(h, name, length, attack))
            time.sleep(1)  # A's connections gone, its rate limit's bucket refilling
        return rows
    finally:
        h.close()


# --- the report -------------------------------------------------------------------------------
def table(workers: int, rows: list[Row]) -> list[str]:
    quiet = rows[0].victim
    target = max(2 * quiet.p(0.99), quiet.p(0.99) + 5)
    out = [f"**`--workers {workers}`** — quiet: B {len(quiet.latencies):,} requests, "
           f"{quiet.failures} failed, p50 {quiet.p(0.5):.2f} ms, p99 {quiet.p(0.99):.2f} ms "
           f"(target during attacks: p99 ≤ {target:.2f} ms)", "",
           "| attack by A | B ok / failed (target 0) | B p50 | B p99 (≤ target) "
           "| RSS growth, peak (≤ 50 MB) | back within 10 MB | log lines (≤ 100) | verdict "
           "| what A did |",
           "|---|---|---|---|---|---|---|---|---|"]
    for row in rows[1:]:
        v = row.victim
        growth = (row.rss_peak - row.rss_before) / MB
        back = "never (10 s)" if row.returned_s is None else f"{row.returned_s:.1f} s"
        checks = [v.failures == 0, v.p(0.99) <= target, growth <= 50,
                  row.returned_s is not None, row.log_lines <= 100]
        out.append(f"| {row.name} | {len(v.latencies):,} / {v.failures} | {v.p(0.5):.2f} ms | "
                   f"{v.p(0.99):.2f} ms | {growth:+.1f} MB | {back} | {row.log_lines} | "
                   f"{'PASS' if all(checks) else 'FAIL'} | {row.note} |")
    return out


def report(results: dict[int, list[Row]], seconds: float, command: str, load: float
           ) -> str:
    day = datetime.date.today().isoformat()
    lines = [BEGIN, "", f"`{command}` on {day}: {os.cpu_count()} cores, shared by the server, "
             f"the attacker and the victim (load average {load:.1f} at the start: the "
             f"machine may be shared with other work); each phase {seconds:g} s (the "
             f"broker's at least 13 s), "
             f"B at {RATE}/s kept alive + {RATE}/s on new connections.", ""]
    for workers, rows in results.items():
        lines += [*table(workers, rows), ""]
    return "\n".join([*lines, END])


def write(path: Path, text: str) -> None:
    """Between the markers of `path`, or appended with them."""
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        path.write_text(head + text + rest.split(END, 1)[1])
    else:
        path.write_text(old.rstrip("\n") + "\n\n## Isolation (issue 9)\n\n" + text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to run, e.g. 1,2")
    parser.add_argument("--quick", action="store_true", help="6 s phases instead of 15 s")
    parser.add_argument("--only", default="", metavar="WORDS",
                        help="only the attacks whose name has WORDS (or one of several, "
                             "comma-separated), e.g. 'never read,request flood' (the quiet "
                             "phase is always run; BENCHMARKS.md is left alone)")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    opts = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/isolation.py runs as root (it raises its descriptor limit)")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # thousands of connections
    seconds = 6.0 if opts.quick else 15.0
    command = "make bench" if os.environ.get("MAKELEVEL") else "python " + " ".join(
        [os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    results: dict[int, list[Row]] = {}
    load = os.getloadavg()[0]
    for workers in (int(w) for w in opts.workers.split(",")):
        print(f"--workers {workers}", flush=True)
        work = Path(tempfile.mkdtemp(prefix="ecs-imds-isolation-"))
        try:
            results[workers] = run(workers, seconds, work, opts.only)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    text = report(results, seconds, command, load)
    print(text)
    if not opts.only:  # a table of some attacks only is no table for BENCHMARKS.md
        write(opts.out, text)
        print(f"written to {opts.out}")


if __name__ == "__main__":
    main()
