"""What a hostile instance needs to attack a real server, for tests/test_isolation.py,
tests/test_fuzz.py and bench/isolation.py.

- A fleet of instances told apart by their source address (listener aliases): 127.0.0.x on
  loopback, or fd00::x on the loopback of a network namespace made here for IPv6 (a
  namespace's loopback may hold any address; the machine's own holds only ::1 for IPv6).
- A server in one of the variants issue 9 asks for (`VARIANTS`): one process on SQLite,
  `--workers 2`, an IPv6 listener, the PostgreSQL store.
- A credential broker (`issuer: command`) whose behaviour depends on the instance asking:
  `i-slow…` sleeps, then fails; `i-stale…` gives one credential close to its refresh, then
  behaves like `i-slow…`; every other instance gets a credential at once. Each run is
  recorded in a file, so a test counts the broker's runs.
- Raw connections from a given source (optionally with a tiny receive buffer), one answer
  read from a kept-alive one, and what a server costs, read from /proc: CPU time, resident
  memory, log lines.

Everything goes to loopback or to the namespace made here; nothing else.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netns import Topology
from server import ServerProcess, free_port, read_all, split_responses

VPC = "vpc-attack0001"
USER_DATA = 15000  # bytes of padding in each instance's user data: a large answer
ROLE = "hostile-role"
# The server's variants: (name, workers, IPv6 listener in a namespace, PostgreSQL store).
VARIANTS = ("sqlite", "workers2", "ipv6", "postgres")
BROKER_SLEEP = 8.0  # seconds an `i-slow…` instance's broker waits before it fails
# (below the command issuer's own limit of 10 s)


def instance_id(name: str) -> str:
    """`i-<name>`: names are lower-case letters and digits, none a prefix of another's id."""
    return f"i-{name}"


def instance(n: int, name: str, **extra: Any) -> dict[str, Any]:
    """An instance of its own subnet (its address is not what identifies it: aliases do)."""
    doc: dict[str, Any] = {
        "instance-id": instance_id(name), "instance-name": f"hostile-{name}",
        "hostname": f"host-{name}", "ram-role": ROLE,
        "user-data": f"#cloud-config\nhostname: {name}\n" + "#" * USER_DATA,
        "tags": {"who": name}, "metadata-options": {"instance-metadata-tags": "enabled"},
        "network-interfaces": [{
            "mac": f"00:16:3e:aa:{n // 256:02x}:{n % 256:02x}",
            "network-interface-id": f"eni-hostile{n:04d}", "vpc-id": VPC,
            "vswitch-id": "vsw-hostile0001", "private-ipv4s": [f"10.{n // 250}.{n % 250}.10"],
            "vswitch-cidr-block": f"10.{n // 250}.{n % 250}.0/24",
            "vpc-cidr-block": "10.0.0.0/8"}],
    }
    doc.update(extra)
    return doc


def fleet(names: Sequence[str]) -> dict[str, Any]:
    """Instances named `names`; `hard…` ones require tokens, `off…` ones are disabled."""
    instances = []
    for n, name in enumerate(names):
        options: dict[str, str] = {"instance-metadata-tags": "enabled"}
        if name.startswith("hard"):
            options["http-tokens"] = "required"
        if name.startswith("off"):
            options["http-endpoint"] = "disabled"
        instances.append(instance(n, name, **{"metadata-options": options}))
    return {"defaults": {"region-id": "cn-hangzhou", "zone-id": "cn-hangzhou-i",
                         "owner-account-id": "1609000000000001",
                         "image-id": "aliyun_3_x64_20G_alibase_20210425.vhd",
                         "instance-type": "ecs.g6e.large"},
            "instances": instances}


# --- the credential broker --------------------------------------------------------------
BROKER = r'''
import json, os, sys, time
runs, slow = sys.argv[1], float(sys.argv[2])
who = os.environ["ECS_IMDS_INSTANCE_ID"]
with open(runs, "a") as f:
    f.write(who + "\n")
with open(runs) as f:
    mine = sum(1 for line in f if line.strip() == who)
now = time.time()
if who.startswith("i-slow") or (who.startswith("i-stale") and mine > 1):
    gate = f"{runs}.{who}.open"  # a test opens it to end the wait early
    while time.time() < now + slow and not os.path.exists(gate):
        time.sleep(0.02)
    print("broker unavailable", file=sys.stderr)
    sys.exit(1)
# A stale one's first credential is within its refresh window (30 min before it expires).
life = 20 * 60 if who.startswith("i-stale") else 6 * 3600
stamp = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
print(json.dumps({"AccessKeyId": f"STS.{who}.{mine}", "AccessKeySecret": "secret-" + who,
                  "SecurityToken": "CAIS" + who, "Expiration": stamp(now + life),
                  "LastUpdated": stamp(now), "Code": "Success"}))
'''


@dataclass
class Broker:
    """The script and the file that records each of its runs (one line: the instance).

    `i-slow…` instances wait `sleep` seconds, or until `open_gate(name)`, then fail."""

    script: Path
    runs_file: Path
    sleep: float = BROKER_SLEEP

    @classmethod
    def write(cls, workdir: Path, sleep: float = BROKER_SLEEP) -> Broker:
        script = workdir / "broker.py"
        script.write_text(BROKER)
        runs = workdir / "broker-runs"
        runs.write_text("")
        return cls(script, runs, sleep)

    def settings(self) -> dict[str, Any]:
        return {"issuer": "command",
                "command": [sys.executable, str(self.script), str(self.runs_file),
                            str(self.sleep)]}

    def runs(self, name: str) -> int:
        return self.runs_file.read_text().split().count(instance_id(name))

    def open_gate(self, name: str) -> None:
        """From now on `name`'s runs fail at once (a waiting one ends its wait)."""
        Path(f"{self.runs_file}.{instance_id(name)}.open").write_text("")


# --- how a test reaches the server -----------------------------------------------------------
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def entered(netns: str | None) -> Iterator[None]:
    """This thread in network namespace `netns` (None: where it is). A socket belongs to
    the namespace it was made in, whichever thread uses it later."""
    if netns is None:
        yield
        return
    with open("/proc/thread-self/ns/net") as own, open(f"/run/netns/{netns}") as target:
        if _libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
        try:
            yield
        finally:
            _libc.setns(own.fileno(), CLONE_NEWNET)


@dataclass
class Net:
    """The data plane's address and each caller's source address."""

    host: str
    port: int
    sources: dict[str, str]  # instance name → source address
    unknown: list[str]  # addresses that are no instance
    netns: str | None = None
    proxy_port: int = 0  # a listener that speaks PROXY protocol (trusting `proxy_peer`)
    proxy_peer: str = ""

    def connect(self, source: str, timeout: float = 10.0, rcvbuf: int = 0,
                port: int = 0) -> socket.socket:
        """A connection from `source` (an instance name or an address)."""
        address = self.sources.get(source, source)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with entered(self.netns):
            sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(timeout)
            sock.bind((address, 0))
            sock.connect((self.host, port or self.port))
        except OSError:
            sock.close()
            raise
        return sock

    def exchange(self, source: str, raw: bytes, timeout: float = 10.0
                 ) -> list[tuple[int, dict[str, str], bytes]]:
        """Send `raw`, read until the server closes; the responses."""
        with self.connect(source, timeout) as sock:
            sock.sendall(raw)
            return split_responses(read_all(sock))

    def get(self, source: str, path: str, headers: dict[str, str] | None = None,
            method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        (response,) = self.exchange(source, request(path, headers, method=method))
        return response

    def wait_ready(self, srv: ServerProcess, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if srv.proc is not None and srv.proc.poll() is not None:
                raise AssertionError(f"server exited: {srv.log()}")
            try:
                with entered(self.netns):
                    probe = socket.socket(socket.AF_INET6 if ":" in self.host
                                          else socket.AF_INET)
                with probe:
                    probe.settimeout(0.5)
                    probe.connect((self.host, self.port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"server not ready: {srv.log()}") from None
                time.sleep(0.05)


def request(path: str, headers: dict[str, str] | None = None, close: bool = True,
            method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 100.100.100.200"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --- servers -------------------------------------------------------------------------------
@dataclass
class Hostile:
    """A running server, how to reach it, and where its broker records its runs."""

    srv: ServerProcess
    net: Net
    broker: Broker
    workers: int
    topology: Topology | None = None
    names: list[str] = field(default_factory=list)

    def close(self) -> None:
        self.srv.cleanup()
        if self.topology is not None:
            self.topology.close()

    def pids(self) -> list[int]:
        """The processes that serve: the workers, or the one server process."""
        assert self.srv.proc is not None
        pid = self.srv.proc.pid
        kids = Path(f"/proc/{pid}/task/{pid}/children")
        found = [int(p) for p in kids.read_text().split()] if kids.exists() else []
        return found or [pid]

    def cpu_seconds(self) -> float:
        """User + system CPU time of every serving process (and the server's parent)."""
        assert self.srv.proc is not None
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in {self.srv.proc.pid, *self.pids()}:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def rss(self) -> int:
        """Resident bytes of every serving process."""
        page = os.sysconf("SC_PAGE_SIZE")
        return sum(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
                   for pid in self.pids())

    def log_lines(self) -> list[str]:
        return self.srv.log().splitlines()


def start(variant: str, workdir: Path, names: Sequence[str], pg_url: str | None = None,
          limits: dict[str, Any] | None = None, unknown: int = 8,
          broker_sleep: float = BROKER_SLEEP, launcher: Any = None,
          credentials: dict[str, Any] | None = None, **settings: Any) -> Hostile:
    """A server for `fleet(names)` in `variant`, its instances on their source addresses, a
    PROXY protocol listener beside the plain one; serving when this returns. RAM
    credentials come from the broker unless `credentials` says otherwise."""
    workers = 2 if variant == "workers2" else 1
    topology = None
    if variant == "ipv6":
        topology = Topology({})
        topology.start()
        ns = topology.server.ns
        sources = {name: f"fd00::{n + 10:x}" for n, name in enumerate(names)}
        strangers = [f"fd00::{n + 0x200:x}" for n in range(unknown)]
        proxy_peer = "fd00::1:1"
        for address in [*sources.values(), *strangers, proxy_peer]:
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{address}/128", "dev", "lo",
                            "nodad"], check=True, capture_output=True)
        host, port, proxy_port, netns = "::1", 80, 81, ns
    else:
        sources = {name: f"127.0.0.{n + 10}" for n, name in enumerate(names)}
        strangers = [f"127.0.0.{n + 200}" for n in range(unknown)]
        proxy_peer = "127.0.0.254"
        host, port, proxy_port, netns = "127.0.0.1", free_port(), free_port(), None
    assert len(sources) <= 180 and unknown <= 50
    net = Net(host, port, sources, strangers, netns, proxy_port, proxy_peer)
    aliases = {address: instance_id(name) for name, address in sources.items()}
    bind = f"[{host}]" if ":" in host else host
    listeners = [{"bind": f"{bind}:{port}", "vpc-id": VPC, "aliases": aliases},
                 {"bind": f"{bind}:{proxy_port}", "vpc-id": VPC, "aliases": aliases,
                  "proxy-protocol": {"trusted": [proxy_peer]}}]
    broker = Broker.write(workdir, broker_sleep)
    if pg_url is not None:
        settings["store"] = pg_url
    if workers > 1:
        settings["workers"] = workers
    srv = ServerProcess(workdir, fleet(names), listeners, limits=limits or {},
                        credentials=credentials or broker.settings(), **settings)
    if topology is not None and launcher is None:
        server_ns = topology.server

        def launcher(argv: list[str], log: Any) -> subprocess.Popen[str]:
            return server_ns.popen(argv, stdout=log, stderr=subprocess.STDOUT)

    hostile = Hostile(srv, net, broker, workers, topology, list(names))
    try:
        srv.start(launcher)
        net.wait_ready(srv)
    except BaseException:
        hostile.close()
        raise
    return hostile


def responses_of(sock: socket.socket) -> tuple[list[tuple[int, dict[str, str], bytes]], str]:
    """Read until the server ends the connection: the responses, and how it ended — "eof"
    (closed politely), "reset" (cut off) or "open" (still open when the socket's timeout
    passed)."""
    chunks = []
    how = "eof"
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        how = "reset"
    except TimeoutError:
        how = "open"
    return split_responses(b"".join(chunks)), how


def one_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one answer from a keep-alive connection (ConnectionError if it ends first)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += _more(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    ((status, headers, _),) = split_responses(head + b"\r\n\r\n")
    while len(body) < int(headers["content-length"]):
        body += _more(sock)
    return status, headers, body


def _more(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("the connection ended before an answer")
    return chunk
