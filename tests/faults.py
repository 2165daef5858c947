"""What the fault tests and the fault benchmark share: a network partition between servers
and their database, continuous readers of a server's data plane, and a count of the
database connections a server process holds (from the kernel's view of its sockets, so it
can be counted while the database hangs).

The partition is made of two network namespaces of the caller's own, joined by a veth pair
created directly between them (nothing is added to the machine's own namespace): the
database listens on TCP in one (10.251.0.1), the servers run in the other (10.251.0.2).
`cut()` sets the database's end of the link down: from the servers' side, packets go
nowhere and nothing says so, as behind a failed switch.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from server import get

DB_IP, SERVER_IP = "10.251.0.1", "10.251.0.2"
NETWORK = "10.251.0.0/24"
_CLONE_NEWNET = 0x40000000
_counter = itertools.count()
T = TypeVar("T")


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


def enter_netns(name: str) -> None:
    """Move the calling thread (only it) into network namespace `name`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name} failed")
    finally:
        os.close(fd)


def in_netns(name: str | None, call: Callable[[], T]) -> T:
    """`call()` on a thread of its own in network namespace `name` (None: here)."""
    if name is None:
        return call()
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            enter_netns(name)
            result.append(call())
        except BaseException as exc:  # handed to the caller
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=60)
    if errors:
        raise errors[0]
    return result[0]


class Partition:
    """The database's namespace (`db`) and the servers' (`srv`), and the link between."""

    def __init__(self) -> None:
        prefix = f"imds{os.getpid()}p{next(_counter)}"
        self.db, self.srv = f"{prefix}-db", f"{prefix}-srv"
        self._made: list[str] = []
        try:
            for ns in (self.db, self.srv):
                _ip("netns", "add", ns)
                self._made.append(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", self.db, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
                "netns", self.srv)
            for ns, dev, address in ((self.db, "v0", DB_IP), (self.srv, "v1", SERVER_IP)):
                _ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
        except BaseException:
            self.close()
            raise

    def launcher(self, argv: Sequence[str], log: Any) -> subprocess.Popen[str]:
        """For `ServerProcess.launch`: the server runs in the servers' namespace."""
        return subprocess.Popen(["ip", "netns", "exec", self.srv, *argv], stdout=log,
                                stderr=subprocess.STDOUT, text=True)

    def cut(self) -> None:
        _ip("-n", self.db, "link", "set", "v0", "down")

    def heal(self) -> None:
        _ip("-n", self.db, "link", "set", "v0", "up")

    def close(self) -> None:
        for ns in reversed(self._made):
            with contextlib.suppress(RuntimeError):
                _ip("netns", "delete", ns)
        self._made = []


class Reader:
    """Reads one path from a server's data plane, as instance `source`, without pause (in
    network namespace `netns` if given), counting the answers that were not 200 with the
    expected body (`expect(body)`), and when each body was first seen, until stopped."""

    def __init__(self, port: int, path: str, source: str, netns: str | None = None,
                 expect: Callable[[bytes], bool] = lambda body: True) -> None:
        self.port, self.path, self.source, self.netns = port, path, source, netns
        self.expect = expect
        self.ok = 0
        self.failed: list[str] = []
        self.first_seen: dict[bytes, float] = {}  # body → time.monotonic() of its first
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self.netns is not None:
            enter_netns(self.netns)
        while not self._stop.is_set():
            try:
                status, _, body = get(self.port, self.path, self.source)
                if status == 200 and self.expect(body):
                    self.ok += 1
                    self.first_seen.setdefault(body, time.monotonic())
                else:
                    self.failed.append(f"{status} {body[:80]!r}")
            except (OSError, ValueError, IndexError) as exc:
                self.failed.append(repr(exc))
                time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _ss(args: Sequence[str], netns: str | None = None) -> list[list[str]]:
    argv = ["ss", "-n", "-p", *args]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=20).stdout
    return [line.split() for line in out.splitlines()[1:] if line.strip()]


def db_connections(pid: int, socket_dir: Path) -> int:
    """The connections process `pid` holds to the PostgreSQL listening in `socket_dir`."""
    rows = _ss(["-x"])
    listening = str(socket_dir / ".s.PGSQL.5432")
    theirs = {row[7] for row in rows if len(row) > 7 and row[4] == listening}
    return sum(1 for row in rows if len(row) > 8 and row[5] in theirs
               and f"pid={pid}," in row[8])


def db_connections_tcp(pid: int, netns: str, port: int = 5432) -> int:
    """The TCP connections process `pid` (in namespace `netns`) holds to port `port`."""
    rows = _ss(["-t", "state", "established", f"( dport = :{port} )"], netns)
    return sum(1 for row in rows if any(f"pid={pid}," in cell for cell in row))
