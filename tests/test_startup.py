"""Start-up is honest: while a server builds its first snapshot (a large fleet), its data
plane refuses instance connections at once (its socket is bound but does not listen yet)
rather than leaving callers waiting, and /readyz says "starting"; then it serves.

The fleet is written to the store directly (no validation: it only has to be large).
Waits are bounded polls; nothing is timed.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from ecs_imds.store.sqlite import SQLiteStore
from pg import wait_until
from server import ServerProcess, free_port, get

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import fleetgen

SIZE = 30_000


def test_connections_are_refused_while_the_first_snapshot_is_built(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "data" / "ecs-imds.db")
    store.write_fleet(fleetgen.DEFAULTS, [fleetgen.instance(n) for n in range(SIZE)])
    store.close()
    port = free_port()
    first = fleetgen.instance(0)
    address = first["network-interfaces"][0]["private-ipv4s"][0]
    srv = ServerProcess(tmp_path, {"instances": []}, [
        {"bind": f"127.0.0.1:{port}", "vpc-id": fleetgen.VPC,
         "aliases": {"127.0.0.1": first["instance-id"]}}], limits={"rate": 0})
    try:
        srv.launch()  # returns once the control plane answers: before the snapshot
        refused = 0
        while True:
            said = srv.api().http.get("/readyz").json()
            if said["status"] != "starting":
                break
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            except ConnectionRefusedError:
                refused += 1
            else:  # accepted while starting: the caller would have waited
                if srv.api().http.get("/readyz").json()["status"] == "starting":
                    raise AssertionError("a connection was accepted while starting")
        assert refused > 0, "the first snapshot was built before anything was seen"
        assert said["status"] == "ready" and said["instances"] == SIZE
        wait_until(lambda: get(port, "/latest/meta-data/private-ipv4")[2] == address.encode())
        print(f"\n{refused} connections refused at once while starting ({SIZE:,} instances)")
    finally:
        srv.cleanup()
