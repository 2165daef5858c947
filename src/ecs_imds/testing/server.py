"""A real ecs-imds for a test: `ecs-imds serve` as a child process on loopback.

Nothing needs root: the data plane listens on a free port of 127.0.0.1 (the server picks
it and reports it in its ready file), the control plane on a Unix socket in a private
directory. Each instance of the fleet gets a loopback source address (127.0.0.1, .2, …, a
listener alias), so a client that binds that address is that instance.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ecs_imds.clients.control import AdminClient
from ecs_imds.clients.metadata import MetadataClient
from ecs_imds.config import loopback_aliases, read_yaml
from ecs_imds.demo import demo_fleet
from ecs_imds.store import open_store
from ecs_imds.testing.admin import FleetAdmin

Fleet = Mapping[str, Any] | str | os.PathLike[str] | None
START_TIMEOUT = 30.0


def fleet_document(fleet: Fleet) -> dict[str, Any]:
    """A fleet given as a mapping, a YAML/JSON file, or None (the demo fleet)."""
    if fleet is None:
        return demo_fleet()
    if isinstance(fleet, Mapping):
        copy: dict[str, Any] = json.loads(json.dumps(fleet))  # the test cannot change it
        return copy
    doc = read_yaml(Path(fleet))
    if not isinstance(doc, dict):
        raise ValueError(f"{fleet}: a fleet file holds a mapping (defaults, instances)")
    return doc


def end(proc: subprocess.Popen[Any] | None) -> None:
    """Stop a server process: SIGTERM, then SIGKILL if it has not ended within 10 s."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ImdsServer:
    """One running server. `endpoint` is what clients get (`ECS_IMDS_ENDPOINT`),
    `addresses` which loopback source address stands for which instance, `admin` changes
    the fleet (and waits until the data plane serves the change)."""

    def __init__(self, fleet: Fleet = None, workdir: str | os.PathLike[str] | None = None,
                 **settings: Any) -> None:
        self.fleet = fleet_document(fleet)
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ecs-imds-"))
        self.settings = {"poll-interval": 0.05, **settings}
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint = ""
        self.addresses: dict[str, str] = {}
        self._admin: FleetAdmin | None = None

    # -- what a test uses ----------------------------------------------------------------
    @property
    def admin(self) -> FleetAdmin:
        assert self._admin is not None, "start() the server first"
        return self._admin

    @property
    def env(self) -> dict[str, str]:
        """The environment a client under test needs."""
        return {"ECS_IMDS_ENDPOINT": self.endpoint}

    def address_of(self, instance_id: str) -> str:
        """The loopback source address that stands for `instance_id`."""
        for address, iid in self.addresses.items():
            if iid == instance_id:
                return address
        raise KeyError(f"{instance_id} has no loopback address (not in the fleet)")

    def client(self, instance_id: str | None = None, token: bool = False) -> MetadataClient:
        """A metadata client calling as `instance_id` (default: the first instance)."""
        source = self.address_of(instance_id) if instance_id else None
        return MetadataClient(self.endpoint, use_token=token, source_address=source)

    # -- life -------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.workdir / "config.yaml"

    def _write_config(self) -> None:
        nics = self.fleet.get("instances", [{}])[0].get("network-interfaces", [{}])
        vpc = nics[0].get("vpc-id", "vpc-test") if nics else "vpc-test"
        listener = {"bind": "127.0.0.1:0", "vpc-id": vpc, "aliases": self.addresses}
        config = {"data-dir": str(self.workdir / "data"), "listeners": [listener],
                  "api": {"unix": str(self.workdir / "api.sock")}, **self.settings}
        part = self.workdir / "config.yaml.part"
        part.write_text(yaml.safe_dump(config))
        part.replace(self.config_path)

    def start(self) -> ImdsServer:
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.addresses = loopback_aliases([i["instance-id"]
                                           for i in self.fleet.get("instances", [])])
        self._write_config()
        fleet_path = self.workdir / "fleet.yaml"
        fleet_path.write_text(yaml.safe_dump(self.fleet, sort_keys=False))
        ready = self.workdir / "ready.json"
        ready.unlink(missing_ok=True)
        log = (self.workdir / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ecs_imds", "--config", str(self.config_path), "serve",
             "--fleet", str(fleet_path), "--ready-file", str(ready)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        doc = self._wait_ready(ready)
        self.endpoint = f"http://{doc['listeners'][0]['bind']}"
        store = self.workdir / "data" / "ecs-imds.db"
        token = (self.workdir / "data" / "admin.token").read_text().strip()
        self._admin = FleetAdmin(AdminClient(doc["api"], token), self,
                                 lambda: _version(store))
        return self

    def _wait_ready(self, ready: Path) -> dict[str, Any]:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.exists():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"ecs-imds exited at start: {self.log()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ecs-imds did not start in {START_TIMEOUT:g} s: "
                                   f"{self.log()[-2000:]}")
            time.sleep(0.02)
        doc: dict[str, Any] = json.loads(ready.read_text())
        return doc

    def log(self) -> str:
        path = self.workdir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def reload_aliases(self) -> None:
        """Make the server take up `addresses` anew (config rewritten, SIGHUP)."""
        self._write_config()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def reset(self) -> None:
        """Back to the fleet it started with (instances, options, spot, events, defaults),
        added instances removed; served when this returns."""
        first = loopback_aliases([i["instance-id"] for i in self.fleet.get("instances", [])])
        if first != self.addresses:
            self.addresses = first
            self.reload_aliases()
        self.admin.load(self.fleet, replace=True)

    def stop(self) -> None:
        end(self.proc)
        self.proc = None
        if self._admin is not None:
            self._admin.client.http.close()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ImdsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _version(store: Path) -> int:
    """The store's version now (read from the server's own SQLite file)."""
    opened = open_store(f"sqlite://{store}", store.parent)
    try:
        return opened.version()
    finally:
        opened.close()
