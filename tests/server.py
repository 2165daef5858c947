"""Run the real `ecs-imds serve` as a child process, on loopback or inside a namespace.

Tests talk to the server over real sockets; nothing of the server is replaced. On loopback,
several callers are told apart by their source address (127.0.0.x) through a listener's
`aliases`, the same mechanism `--demo` uses.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from ecs_imds.clients.control import AdminClient
from ecs_imds.testing.server import end

ECS_IMDS = str(Path(sys.executable).with_name("ecs-imds"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A data directory, a config file and a running server."""

    def __init__(self, workdir: Path, fleet: Mapping[str, Any],
                 listeners: Sequence[Mapping[str, Any]], **settings: Any) -> None:
        self.workdir = workdir
        self.config_path = workdir / "config.yaml"
        self.api_socket = workdir / "api.sock"
        api = settings.pop("api", {"unix": str(self.api_socket)})
        self.api_url = f"http://{api['bind']}" if "bind" in api else f"unix://{api['unix']}"
        config = {"data-dir": str(workdir / "data"), "listeners": list(listeners),
                  "poll-interval": 0.1, "api": api, **settings}
        self.config_path.write_text(yaml.safe_dump(config))
        self.fleet_path = workdir / "fleet.yaml"
        self.fleet_path.write_text(yaml.safe_dump(dict(fleet), sort_keys=False))
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = workdir / "server.log"
        self.port = 0  # the data plane's port, where a helper chose it

    def admin(self, *args: str, check: bool = True, input: str | None = None
              ) -> subprocess.CompletedProcess[str]:
        """Run `ecs-imds --config … admin ARGS` against the same store."""
        return self.cli("admin", *args, check=check, input=input)

    def cli(self, *args: str, check: bool = True, input: str | None = None,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([ECS_IMDS, "--config", str(self.config_path), *args],
                                capture_output=True, text=True, input=input, timeout=60,
                                env={**os.environ, **(env or {})})
        if check and result.returncode != 0:
            raise AssertionError(f"ecs-imds {' '.join(args)} failed: {result.stderr}")
        return result

    def update_fleet(self, mutate: Any) -> None:
        """Change the fleet file with `mutate(doc)` and import it (a store change)."""
        doc = yaml.safe_load(self.fleet_path.read_text())
        mutate(doc)
        self.fleet_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.import_fleet()

    def command(self) -> list[str]:
        return [ECS_IMDS, "--config", str(self.config_path), "serve"]

    def start(self, launcher: Any = None) -> ServerProcess:
        """Start serving and import the fleet through the API; `launcher(argv, stdout)` runs
        the server elsewhere (e.g. in a namespace)."""
        self.launch(launcher)
        self.import_fleet()
        return self

    def import_fleet(self) -> None:
        """Import the fleet file and wait until the data plane serves it."""
        result = self.admin("import", str(self.fleet_path))
        self.wait_version(int(result.stderr.rsplit("store version ", 1)[1].rstrip(")\n")))

    def api(self) -> AdminClient:
        return AdminClient(self.api_url, self.token())

    def wait_version(self, version: int, timeout: float = 60.0) -> None:
        """Until the served snapshot is built from store version `version` or later."""
        deadline = time.monotonic() + timeout
        client = self.api()
        while (client.http.get("/readyz").json().get("version") or 0) < version:
            assert time.monotonic() < deadline, f"version {version} never served"
            time.sleep(0.05)

    def launch(self, launcher: Any = None) -> None:
        """Start the server process and wait for its control plane."""
        log = self.log_path.open("a")
        if launcher is None:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         text=True)
        else:
            self.proc = launcher(self.command(), log)
        self.wait_api()

    def wait_api(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log()}")
            try:
                self.api().http.get("/healthz")
                return
            except (OSError, httpx.HTTPError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"control plane not ready: {self.log()}") from None
                time.sleep(0.05)

    def token(self) -> str:
        """The admin token the server wrote on its first start."""
        return (self.workdir / "data" / "admin.token").read_text().strip()

    def wait_ready(self, host: str, port: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log_path.read_text()}")
            try:
                socket.create_connection((host, port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"server not ready: {self.log_path.read_text()}"
                                         ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        end(self.proc)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir / "data", ignore_errors=True)


def demo_server(workdir: Path, aliases: Mapping[str, str], **settings: Any) -> ServerProcess:
    """The demo fleet served on a free loopback port (`.port`, callers told apart by
    `aliases`), its API on another; started, and serving when this returns."""
    from ecs_imds.demo import DEMO_VPC, demo_fleet

    port = free_port()
    settings.setdefault("api", {"bind": f"127.0.0.1:{free_port()}"})
    srv = ServerProcess(workdir, demo_fleet(),
                        [{"bind": f"127.0.0.1:{port}", "vpc-id": DEMO_VPC,
                          "aliases": dict(aliases)}], limits={"rate": 0}, **settings)
    srv.port = port
    srv.start()
    srv.wait_ready("127.0.0.1", port)
    return srv


def http(port: int, raw: bytes, source: str = "127.0.0.1", host: str = "127.0.0.1",
         timeout: float = 5.0) -> bytes:
    """Send raw bytes from `source`, read until the server closes or goes quiet."""
    with socket.create_connection((host, port), timeout=timeout,
                                  source_address=(source, 0)) as s:
        s.sendall(raw)
        return read_all(s)


def read_all(s: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := s.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        pass
    return b"".join(chunks)


def split_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Parse back-to-back HTTP/1.1 responses (Content-Length framed)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        length = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:length]))
        data = rest[length:]
    return out


def get(port: int, path: str, source: str = "127.0.0.1",
        headers: Mapping[str, str] | None = None, method: str = "GET"
        ) -> tuple[int, dict[str, str], bytes]:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    raw = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n"
    (resp,) = split_responses(http(port, raw.encode(), source))
    return resp


def to_json(body: bytes) -> Any:
    return json.loads(body)
