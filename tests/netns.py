"""Network-namespace harness for end-to-end tests of the metadata server.

The metadata service is only meaningful when clients reach it the way real
instances do: from their own private address, through a gateway, sometimes
across a router.  This module builds that network out of Linux network
namespaces so tests can exercise the real server over real TCP/IP without
touching the host's network:

* every link lives inside a namespace created here (veth pairs are created
  directly between namespaces), so nothing is added to the root namespace and
  nothing is ever sent from it;
* every namespace is named ``imds<pid>t<n>-<name>`` so parallel runs cannot
  collide (interface names are per-namespace, so they stay short), and
  :meth:`Topology.close` removes everything even when a test fails.

Topology::

    instance ns (192.168.0.x) --veth--+
                                       br0 192.168.0.1/24   server ns
    router ns (192.168.0.254) --veth--+  lo  100.100.100.200/32
      br1 10.99.0.1/24 --veth-- routed instance ns (10.99.0.x)

Requires root (CAP_NET_ADMIN and CAP_SYS_ADMIN for ``ip netns``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

import pytest

SERVER_IP = "100.100.100.200"
GATEWAY_IP = "192.168.0.1"
VPC_SUBNET = ipaddress.ip_network("192.168.0.0/24")
ROUTER_IP = "192.168.0.254"
ROUTED_GATEWAY_IP = "10.99.0.1"
ROUTED_SUBNET = ipaddress.ip_network("10.99.0.0/24")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_counter = itertools.count()

# Polls a TCP port from inside a namespace in one process (rather than one
# `ip netns exec` per attempt) so waiting is both cheap and bounded.
_WAIT_FOR_TCP = """
import socket, sys, time
host, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while True:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        sys.exit(0)
    except OSError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"{host}:{port} not reachable: {exc}")
        time.sleep(0.05)
"""


def _ip(*args: str) -> None:
    """Run an ``ip`` command, raising with its stderr so setup errors are legible."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


class Namespace:
    """One network namespace of a :class:`Topology` and its primary address.

    Processes are started through ``ip netns exec`` so they see exactly the
    network a real instance (or the real server) would see.
    """

    def __init__(self, topology: Topology, ns: str, ip: str) -> None:
        self.ns = ns
        self.ip = ip
        self._topology = topology

    def __repr__(self) -> str:
        return f"Namespace(ns={self.ns!r}, ip={self.ip!r})"

    def _argv(self, cmd: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *cmd]

    @staticmethod
    def _env(env: Mapping[str, str] | None) -> dict[str, str] | None:
        # Merge rather than replace: `ip` itself and most tools need PATH etc.
        return None if env is None else {**os.environ, **env}

    def run(
        self,
        cmd: Sequence[str],
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        *,
        check: bool = False,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` to completion inside the namespace, capturing text output.

        ``env`` is merged over the current environment.  ``timeout`` bounds
        every call so a broken network fails a test instead of hanging CI.
        """
        return subprocess.run(
            self._argv(cmd),
            env=self._env(env),
            timeout=timeout,
            check=check,
            input=input,
            capture_output=True,
            text=True,
        )

    def popen(
        self,
        cmd: Sequence[str],
        env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> subprocess.Popen[str]:
        """Start a background process (e.g. the server) inside the namespace.

        The process gets its own session so teardown can kill it together with
        any children; it is always killed when the topology closes.  By default
        it inherits stdout/stderr, which lets pytest capture and show its
        output when a test fails.  Extra ``kwargs`` go to :class:`subprocess.Popen`.
        """
        proc: subprocess.Popen[str] = subprocess.Popen(
            self._argv(cmd),
            env=self._env(env),
            start_new_session=True,
            **{"text": True, **kwargs},
        )
        self._topology._processes.append(proc)
        return proc

    def wait_for_tcp(self, host: str, port: int, timeout: float = 10.0) -> None:
        """Block until ``host:port`` accepts TCP connections from this namespace.

        Servers start asynchronously; connecting before they listen would make
        tests flaky.  Raises :class:`TimeoutError` after ``timeout`` seconds.
        """
        result = self.run(
            [sys.executable, "-c", _WAIT_FOR_TCP, host, str(port), str(timeout)],
            timeout=timeout + 10.0,
        )
        if result.returncode != 0:
            raise TimeoutError(f"[{self.ns}] {result.stderr.strip()}")


class Topology:
    """Server, VPC bridge, instances and an optional router, as namespaces.

    ``instances`` maps a short name to a private address on 192.168.0.0/24;
    those namespaces sit directly on the server's bridge.  ``routed`` maps
    names to addresses on 10.99.0.0/24 behind a forwarding (no NAT) router, so
    replies reach them only with an IP TTL of at least 2.  The router exists
    only if ``routed`` is non-empty.

    Use as a context manager; everything is removed on exit, even on error.
    """

    def __init__(
        self,
        instances: Mapping[str, str],
        routed: Mapping[str, str] | None = None,
    ) -> None:
        routed = dict(routed or {})
        _validate(instances, VPC_SUBNET, reserved={GATEWAY_IP, ROUTER_IP})
        _validate(routed, ROUTED_SUBNET, reserved={ROUTED_GATEWAY_IP})
        if overlap := set(instances) & set(routed):
            raise ValueError(f"names used twice: {sorted(overlap)}")
        self.prefix = f"imds{os.getpid()}t{next(_counter)}"
        self._specs = (dict(instances), routed)
        self._namespaces: list[str] = []
        self._processes: list[subprocess.Popen[str]] = []
        self.server = Namespace(self, f"{self.prefix}-srv", SERVER_IP)
        self.router: Namespace | None = (
            Namespace(self, f"{self.prefix}-rtr", ROUTER_IP) if routed else None
        )
        self.instances: dict[str, Namespace] = {
            name: Namespace(self, f"{self.prefix}-{name}", ip)
            for name, ip in {**instances, **routed}.items()
        }

    def __getitem__(self, name: str) -> Namespace:
        """Return the instance namespace called ``name``."""
        return self.instances[name]

    def __enter__(self) -> Topology:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- setup ---------------------------------------------------------------

    def start(self) -> None:
        """Create all namespaces and links; on any failure, undo what was done."""
        if os.geteuid() != 0:
            raise PermissionError("network namespace tests must run as root")
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        direct, routed = self._specs
        srv = self.server.ns
        self._add_ns(srv)
        _ip("-n", srv, "addr", "add", f"{SERVER_IP}/32", "dev", "lo")
        self._add_bridge(srv, "br0", f"{GATEWAY_IP}/24")

        for index, name in enumerate(direct):
            self._add_host(self.instances[name], srv, f"v{index}", "br0", GATEWAY_IP)

        if self.router is None:
            return
        rtr = self.router.ns
        self._add_host(self.router, srv, "vrtr", "br0", GATEWAY_IP)
        self._sysctl(rtr, "net.ipv4.ip_forward", "1")
        self._add_bridge(rtr, "br1", f"{ROUTED_GATEWAY_IP}/24")
        _ip("-n", srv, "route", "add", str(ROUTED_SUBNET), "via", ROUTER_IP)
        for index, name in enumerate(routed):
            inst = self.instances[name]
            self._add_host(inst, rtr, f"v{index}", "br1", ROUTED_GATEWAY_IP)

    def _add_ns(self, ns: str) -> None:
        """Create a namespace with lo up and no IPv6 DAD (which delays links)."""
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        self._sysctl(ns, "net.ipv6.conf.all.accept_dad", "0")
        self._sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")
        _ip("-n", ns, "link", "set", "lo", "up")

    @staticmethod
    def _add_bridge(ns: str, bridge: str, cidr: str) -> None:
        # forward_delay 0: ports forward immediately instead of after ~15 s.
        _ip("-n", ns, "link", "add", bridge, "type", "bridge", "forward_delay", "0")
        _ip("-n", ns, "addr", "add", cidr, "dev", bridge)
        _ip("-n", ns, "link", "set", bridge, "up")

    def _add_host(
        self,
        host: Namespace,
        bridge_ns: str,
        port: str,
        bridge: str,
        gateway: str,
    ) -> None:
        """Create ``host``'s namespace and plug its eth0 into ``bridge``.

        The veth pair is created inside ``bridge_ns`` with its peer moved
        straight into the host namespace, so no link ever exists in the root
        namespace and interface names cannot clash with the host's.
        """
        self._add_ns(host.ns)
        _ip("-n", bridge_ns, "link", "add", port, "type", "veth",
            "peer", "name", "eth0", "netns", host.ns)  # fmt: skip
        _ip("-n", bridge_ns, "link", "set", port, "master", bridge, "up")
        _ip("-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")  # both subnets are /24
        _ip("-n", host.ns, "link", "set", "eth0", "up")
        _ip("-n", host.ns, "route", "add", "default", "via", gateway)

    @staticmethod
    def _sysctl(ns: str, key: str, value: str) -> None:
        """Write a per-namespace sysctl via /proc, so procps need not be installed."""
        path = "/proc/sys/" + key.replace(".", "/")
        _ip("netns", "exec", ns, "sh", "-c", 'printf %s "$1" > "$2"', "sh", value, path)

    # -- teardown ------------------------------------------------------------

    def close(self) -> None:
        """Kill started processes, then delete every namespace (and so every link).

        Idempotent and best-effort: it keeps going after individual failures so
        one stuck resource never leaks the rest.
        """
        for proc in self._processes:
            _kill(proc)
        self._processes.clear()
        for ns in reversed(self._namespaces):
            # Stray processes (e.g. grandchildren that escaped their session)
            # would keep a deleted namespace alive; they are ours, so kill them.
            pids = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self._namespaces.clear()


def _validate(hosts: Mapping[str, str], subnet: ipaddress.IPv4Network, reserved: set[str]) -> None:
    """Reject bad names/addresses early, before anything is created."""
    for name, ip in hosts.items():
        if not _NAME_RE.match(name) or name in {"srv", "rtr"}:
            raise ValueError(f"bad instance name {name!r} (lowercase, digits, - or _)")
        addr = ipaddress.ip_address(ip)
        if (
            addr not in subnet
            or ip in reserved
            or addr in {subnet.network_address, subnet.broadcast_address}
        ):
            raise ValueError(f"{name}: {ip} is not a free host address in {subnet}")
    if len(set(hosts.values())) != len(hosts):
        raise ValueError(f"duplicate addresses in {dict(hosts)}")


def _kill(proc: subprocess.Popen[str]) -> None:
    """Terminate a process group politely, then forcibly; never raise."""
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def topology_fixture(
    instances: Mapping[str, str],
    routed: Mapping[str, str] | None = None,
    *,
    name: str = "topology",
    scope: Literal["function", "class", "module", "package", "session"] = "function",
) -> Any:
    """Build a pytest fixture yielding a started :class:`Topology`.

    Assign the result at module level in a test file, e.g.
    ``topo = topology_fixture({"a": "192.168.0.10"}, name="topo")``; the
    fixture is registered under ``name`` (pytest does not use the variable
    name).  Without root the fixture fails rather than skips, so the suite can
    never silently stop testing the network.
    """

    def _fixture() -> Iterator[Topology]:
        require_root()
        with Topology(instances, routed) as topology:
            yield topology

    return pytest.fixture(scope=scope, name=name)(_fixture)


def require_root() -> None:
    """Fail, never skip, without root: a skipped network suite looks green in CI."""
    if os.geteuid() != 0:
        pytest.fail("network-namespace tests must run as root (ip netns, veth)", pytrace=False)
