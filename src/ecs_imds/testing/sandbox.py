"""A sandbox: a network namespace in which 100.100.100.200:80 is ecs-imds, serving as one
instance of a fleet, so any program (any SDK, curl, cloud-init) runs there unmodified.

Inside, the instance's private address is the program's own, and the only address that
answers is 100.100.100.200: there is no route anywhere else.

- As root (`ip netns`, veth): the server has a namespace of its own, the program another
  whose `eth0` carries the instance's MAC and address, a veth pair between them: what the
  program sees is what an instance sees, its token responses' hop limit included.
- As an ordinary user: one user + network namespace (`unshare`), where the server and the
  program share a loopback device holding both addresses; the program runs as root of that
  user namespace (your own user outside). Where the kernel forbids unprivileged user
  namespaces, `SandboxUnavailable` says why and what to do.

Nothing outlives the sandbox: every namespace is held only by processes of the sandbox
(which die with it, `PR_SET_PDEATHSIG`), never by a name left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ecs_imds.testing.server import Fleet, end, fleet_document

METADATA_IP = "100.100.100.200"
START_TIMEOUT = 30.0
MODES = ("normal", "hardened")
_PR_SET_PDEATHSIG = 1
_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000
_libc = ctypes.CDLL(None, use_errno=True)
_counter = iter(range(1 << 30))


class SandboxUnavailable(RuntimeError):
    """This host cannot make a sandbox for this user; the message says why and what to do."""


def die_with_parent() -> None:
    """In a child before exec: be killed when the sandbox's process goes, however it goes."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")


def unprivileged_refusal() -> str | None:
    """Why this user cannot have a user + network namespace here (None: it can)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return ("the sandbox needs unshare (Debian package util-linux) and ip (iproute2); "
                "install them")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--net", "true"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode == 0:
        return None
    knobs = [("/proc/sys/kernel/unprivileged_userns_clone", "0",
              "kernel.unprivileged_userns_clone is 0", "sysctl -w "
              "kernel.unprivileged_userns_clone=1"),
             ("/proc/sys/user/max_user_namespaces", "0", "user.max_user_namespaces is 0",
              "sysctl -w user.max_user_namespaces=15000"),
             ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1",
              "AppArmor restricts unprivileged user namespaces (kernel."
              "apparmor_restrict_unprivileged_userns is 1)",
              "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0")]
    for path, bad, why, fix in knobs:
        with contextlib.suppress(OSError):
            if Path(path).read_text().strip() == bad:
                return (f"this kernel does not let ordinary users create user namespaces "
                        f"({why}); run the sandbox as root, or as root run: {fix}")
    return (f"this kernel refused an unprivileged user namespace "
            f"({probe.stderr.strip() or 'unshare failed'}); run the sandbox as root")


class Sandbox:
    """`start()`, then `run(argv)`, `popen(argv)` or `call(fn)` inside; `close()` at the
    end (or use it as a context manager).

    `instance` (default: the fleet's first) is who the program is; `mode` overrides its
    `http-tokens`: `hardened` requires tokens, `normal` makes them optional."""

    def __init__(self, fleet: Fleet = None, instance: str | None = None,
                 mode: str | None = None, privileged: bool | None = None) -> None:
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.fleet = fleet_document(fleet)
        instances = self.fleet.get("instances") or []
        if not instances:
            raise ValueError("the fleet has no instances")
        ids = [doc.get("instance-id") for doc in instances]
        self.instance_id = instance or str(ids[0])
        if self.instance_id not in ids:
            raise ValueError(f"{self.instance_id} is not in the fleet (it has "
                             f"{', '.join(map(str, ids[:5]))}{'…' if len(ids) > 5 else ''})")
        self.instance = instances[ids.index(self.instance_id)]
        if mode is not None:
            options = self.instance.setdefault("metadata-options", {})
            options["http-tokens"] = "required" if mode == "hardened" else "optional"
        self.privileged = os.geteuid() == 0 if privileged is None else privileged
        self.workdir = Path(tempfile.mkdtemp(prefix="ecs-imds-sandbox-"))
        self._procs: list[subprocess.Popen[bytes]] = []
        self._server: subprocess.Popen[bytes] | None = None
        self._holder = 0  # a process in the program's namespaces: how others join them

    # -- the instance's network -------------------------------------------------------------
    @property
    def _nic(self) -> dict[str, Any]:
        nics = self.instance.get("network-interfaces") or [{}]
        nic: dict[str, Any] = nics[0]
        return nic

    @property
    def address(self) -> str:
        """The program's own address: the instance's primary private IPv4."""
        return str(self._nic["private-ipv4s"][0])

    def _config(self) -> Path:
        config = {"data-dir": str(self.workdir / "data"), "poll-interval": 0.05,
                  "listeners": [{"bind": f"{METADATA_IP}:80",
                                 "vpc-id": self._nic.get("vpc-id", "vpc-sandbox")}],
                  "api": {"unix": str(self.workdir / "api.sock")}}
        (self.workdir / "config.yaml").write_text(yaml.safe_dump(config))
        (self.workdir / "fleet.yaml").write_text(yaml.safe_dump(self.fleet, sort_keys=False))
        return self.workdir / "config.yaml"

    def _server_argv(self) -> list[str]:
        return [sys.executable, "-m", "ecs_imds", "--config", str(self._config()), "serve",
                "--fleet", str(self.workdir / "fleet.yaml"),
                "--ready-file", str(self.workdir / "ready.json")]

    # -- life -------------------------------------------------------------------------------
    def start(self) -> Sandbox:
        try:
            if self.privileged:
                self._start_netns()
            else:
                self._start_userns()
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _start_netns(self) -> None:
        """Two named namespaces and a veth pair; the names are removed as soon as processes
        hold the namespaces, so nothing is left behind if the sandbox is killed."""
        prefix = f"ecsimds{os.getpid()}x{next(_counter)}"
        server_ns, program_ns = f"{prefix}s", f"{prefix}p"
        subnet = ipaddress.ip_network(self._nic.get("vswitch-cidr-block")
                                      or f"{self.address}/24", strict=False)
        try:
            for ns in (server_ns, program_ns):
                _run("ip", "netns", "add", ns)
                _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", server_ns, "addr", "add", f"{METADATA_IP}/32", "dev", "lo")
            _run("ip", "-n", server_ns, "link", "add", "veth0", "type", "veth", "peer", "name",
                 "eth0", "netns", program_ns)
            if self._nic.get("mac"):
                _run("ip", "-n", program_ns, "link", "set", "eth0", "address", self._nic["mac"])
            _run("ip", "-n", program_ns, "addr", "add", f"{self.address}/{subnet.prefixlen}",
                 "dev", "eth0")
            for ns, dev in ((server_ns, "veth0"), (program_ns, "eth0")):
                _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", program_ns, "route", "add", f"{METADATA_IP}/32", "dev", "eth0")
            _run("ip", "-n", server_ns, "route", "add", f"{self.address}/32", "dev", "veth0")
            self._server = self._spawn(["ip", "netns", "exec", server_ns,
                                        *self._server_argv()], log=True)
            holder = self._spawn(["ip", "netns", "exec", program_ns, sys.executable, "-c",
                                  "import signal; signal.pause()"])
            self._holder = holder.pid
            self._wait_joined(holder.pid, program_ns)
        finally:
            for ns in (server_ns, program_ns):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)

    def _wait_joined(self, pid: int, ns: str) -> None:
        """Until process `pid` is inside namespace `ns` (ip netns exec has switched)."""
        target = os.stat(f"/run/netns/{ns}").st_ino
        deadline = time.monotonic() + START_TIMEOUT
        while os.stat(f"/proc/{pid}/ns/net").st_ino != target:
            if time.monotonic() > deadline:
                raise RuntimeError(f"a process did not enter the namespace {ns}")
            time.sleep(0.005)

    def _start_userns(self) -> None:
        """One user + network namespace; the server holds it and is set up by `netns_init`
        before it starts."""
        refusal = unprivileged_refusal()
        if refusal is not None:
            raise SandboxUnavailable(refusal)
        init = [sys.executable, "-m", "ecs_imds.testing.netns_init", METADATA_IP, self.address]
        self._server = self._spawn(["unshare", "--user", "--map-root-user", "--net", *init,
                                    "--", *self._server_argv()], log=True)
        self._holder = self._server.pid

    def _spawn(self, argv: Sequence[str], log: bool = False) -> subprocess.Popen[bytes]:
        out = (self.workdir / "server.log").open("ab") if log else subprocess.DEVNULL
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        if log:
            out.close()  # type: ignore[union-attr]
        self._procs.append(proc)
        return proc

    def _wait_ready(self) -> None:
        ready = self.workdir / "ready.json"
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.exists():
            assert self._server is not None
            if self._server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the sandbox's ecs-imds did not start: {self.log()[-2000:]}")
            time.sleep(0.02)
        json.loads(ready.read_text())

    def log(self) -> str:
        path = self.workdir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for proc in reversed(self._procs):
            end(proc)
        self._procs.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inside -----------------------------------------------------------------------------
    def enter_argv(self) -> list[str]:
        """The prefix that runs a command inside (nsenter into the holder's namespaces)."""
        # unprivileged: keep our own uid, which is root inside (setgroups is denied there)
        spaces = ["--net"] if self.privileged else ["--user", "--net",
                                                    "--preserve-credentials"]
        return ["nsenter", f"--target={self._holder}", *spaces, "--"]

    @staticmethod
    def environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The program's environment: yours, with no proxy for the metadata address (the
        Alibaba SDKs honour HTTP_PROXY)."""
        out = {**os.environ, **(env or {})}
        for name in ("NO_PROXY", "no_proxy"):
            out[name] = ",".join(filter(None, [out.get(name), METADATA_IP]))
        return out

    def popen(self, argv: Sequence[str], env: Mapping[str, str] | None = None,
              **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen([*self.enter_argv(), *argv], env=self.environment(env),
                                **kwargs)

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None,
            timeout: float | None = None, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        return subprocess.run([*self.enter_argv(), *argv], env=self.environment(env),
                              timeout=timeout, **kwargs)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` in a child process inside the sandbox; its result (or its
        exception) comes back pickled."""
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: join the namespaces, call, report, never return
            os.close(read)
            try:
                for kind, flag in self._spaces():
                    fd = os.open(f"/proc/{self._holder}/ns/{kind}", os.O_RDONLY)
                    if _libc.setns(fd, flag) != 0:
                        raise OSError(ctypes.get_errno(), f"setns {kind}")
                    os.close(fd)
                outcome: tuple[bool, Any] = (True, fn(*args, **kwargs))
            except BaseException as exc:
                outcome = (False, exc)
            try:
                data = pickle.dumps(outcome)
            except Exception as exc:  # say what it was, as text
                ok, value = outcome
                what = f"{type(value).__name__}: {value}" if not ok else repr(value)
                data = pickle.dumps((False, RuntimeError(
                    f"{what} (in the sandbox; it could not be sent back: {exc})")))
            with os.fdopen(write, "wb") as pipe:
                pipe.write(data)
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            data = pipe.read()
        os.waitpid(pid, 0)
        ok, value = pickle.loads(data)
        if not ok:
            raise value
        return value

    def _spaces(self) -> list[tuple[str, int]]:
        user = [] if self.privileged else [("user", _CLONE_NEWUSER)]
        return [*user, ("net", _CLONE_NEWNET)]
