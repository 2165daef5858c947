"""SIGHUP re-reads the config: the server keeps serving, applies the log settings and
listener aliases, and says which changes wait for a restart; a broken config is refused."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import yaml

from fleets import fleet_doc
from server import ServerProcess, free_port, get, http


def wait_for(log: ServerProcess, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.log():
        assert time.monotonic() < deadline, f"{text!r} never logged: {log.log()}"
        time.sleep(0.05)


def test_sighup_reloads_what_is_safe_and_says_what_is_not(tmp_path: Path) -> None:
    fleet = fleet_doc()
    first, second = (i["instance-id"] for i in fleet["instances"][:2])
    vpc = fleet["instances"][0]["network-interfaces"][0]["vpc-id"]
    port = free_port()
    listener = {"bind": f"127.0.0.1:{port}", "vpc-id": vpc, "aliases": {"127.0.0.1": first}}
    srv = ServerProcess(tmp_path, fleet, [listener]).start()
    try:
        assert get(port, "/latest/meta-data/instance-id", "127.0.0.7")[0] == 403
        doc = yaml.safe_load(srv.config_path.read_text())
        doc["listeners"][0]["aliases"]["127.0.0.7"] = second
        doc["log-level"] = "debug"
        doc["limits"] = {"rate": 5}
        srv.config_path.write_text(yaml.safe_dump(doc))
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGHUP)
        wait_for(srv, "applied: log-level, listener aliases")
        wait_for(srv, "not applied until a restart: limits.rate")
        status, _, body = get(port, "/latest/meta-data/instance-id", "127.0.0.7")
        assert (status, body) == (200, second.encode())

        srv.config_path.write_text("limits: {rate: lots}\n")
        srv.proc.send_signal(signal.SIGHUP)
        wait_for(srv, "config not applied, still serving the old one")
        assert "limits.rate" in srv.log()
        assert srv.proc.poll() is None
        assert get(port, "/latest/meta-data/instance-id", "127.0.0.7")[2] == second.encode()
    finally:
        srv.cleanup()


def test_a_refused_unknown_source_is_logged_once_per_source_with_v(tmp_path: Path) -> None:
    """With the debug log (`-v`, here `log-level: debug`), a request from an address that
    is no instance's is explained once per source — on the fast path (one request, close)
    and on kept-alive connections alike — not once per request."""
    fleet = fleet_doc()
    vpc = fleet["instances"][0]["network-interfaces"][0]["vpc-id"]
    port = free_port()
    srv = ServerProcess(tmp_path, fleet, [{"bind": f"127.0.0.1:{port}", "vpc-id": vpc}],
                        **{"log-level": "debug"}).start()
    try:
        for _ in range(3):
            assert get(port, "/latest/meta-data/instance-id", "127.0.0.9")[0] == 403
        raw = b"GET /latest/ HTTP/1.1\r\nHost: x\r\n\r\n" * 2
        http(port, raw, "127.0.0.9", timeout=1.0)
        assert get(port, "/latest/meta-data/", "127.0.0.8")[0] == 403
        wait_for(srv, "refusing 127.0.0.8")
        lines = srv.log().splitlines()
        assert sum("refusing 127.0.0.9 on" in line for line in lines) == 1
        assert sum("refusing 127.0.0.8 on" in line for line in lines) == 1
    finally:
        srv.cleanup()
