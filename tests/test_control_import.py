"""`admin import` and the import API against a real server: JSON read as JSON, dry runs,
--replace that would delete, how defaults combine, progress of the server's work, an
answer lost after the import was sent (and the idempotency key that makes retrying safe),
and what `admin` says when there is no API or no store."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ecs_imds.clients.control import AdminClient
from ecs_imds.demo import DEMO_VPC, demo_fleet
from ecs_imds.errors import ControlPlaneError
from pg import cluster, wait_until
from server import ECS_IMDS, ServerProcess, demo_server, free_port

WEB, HARDENED, SPOT = (f"i-bp1demo000000000000{n}" for n in (1, 2, 3))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = demo_server(tmp_path, {"127.0.0.1": WEB})
    yield srv
    srv.cleanup()


def etag(server: ServerProcess, instance_id: str) -> str:
    """The instance's revision in the store: any write to it changes it."""
    return server.api().request("GET", f"/v1/instances/{instance_id}").headers["etag"]


def write(path: Path, doc: Any) -> str:
    path.write_text(json.dumps(doc) if path.suffix == ".json" else yaml.safe_dump(doc))
    return str(path)


def stored(server: ServerProcess, path: str) -> Any:
    return server.api().json("GET", path)


def test_a_json_file_is_read_as_json(server: ServerProcess, tmp_path: Path) -> None:
    doc = demo_fleet()
    doc["instances"][0]["instance-name"] = "PLACEHOLDER"
    # `\/` is JSON's escaped slash; YAML has no such escape and would refuse the file.
    text = json.dumps(doc).replace('"PLACEHOLDER"', '"web\\/1"')
    (tmp_path / "fleet.json").write_text(text)
    server.admin("import", str(tmp_path / "fleet.json"))
    assert stored(server, f"/v1/instances/{WEB}")["instance-name"] == "web/1"


@pytest.mark.parametrize(("text", "said"), [
    ("instances: [\n  - {instance-id: x\n", "line 2"),
    ('{"instances": [}', "not JSON"),
])
def test_a_broken_file_is_one_line_naming_it(server: ServerProcess, tmp_path: Path,
                                             text: str, said: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    result = server.admin("import", str(path), check=False)
    assert result.returncode == 1 and str(path) in result.stderr and said in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_missing_file_is_one_line(server: ServerProcess, tmp_path: Path) -> None:
    result = server.admin("import", str(tmp_path / "nope.yaml"), check=False)
    assert result.returncode == 1 and "cannot be read" in result.stderr
    assert "Traceback" not in result.stderr


def test_dry_run_says_what_would_change_and_changes_nothing(server: ServerProcess,
                                                            tmp_path: Path) -> None:
    doc = demo_fleet()
    doc["instances"][0]["instance-name"] = "renamed"
    doc["instances"].pop()  # SPOT would go, with --replace
    doc["defaults"]["zone-id"] = "cn-hangzhou-k"
    before = etag(server, WEB), etag(server, SPOT)
    file = write(tmp_path / "fleet.yaml", doc)
    shown = server.admin("import", file, "--replace", "--dry-run").stdout
    assert f"change {WEB}" in " ".join(shown.split()) and f"remove {SPOT}" in \
        " ".join(shown.split())
    assert 'defaults.zone-id: "cn-hangzhou-i" -> "cn-hangzhou-k"' in shown
    plan = json.loads(server.admin("import", file, "--replace", "--dry-run", "--json").stdout)
    assert plan["Changed"] == [WEB] and plan["Removed"] == [SPOT] and plan["Added"] == []
    assert plan["Unchanged"] == 1
    assert (etag(server, WEB), etag(server, SPOT)) == before
    assert stored(server, f"/v1/instances/{WEB}")["instance-name"] == "demo-web-1"


def test_replace_that_deletes_needs_yes(server: ServerProcess, tmp_path: Path) -> None:
    doc = demo_fleet()
    doc["instances"].pop()
    file = write(tmp_path / "fleet.yaml", doc)
    refused = server.admin("import", file, "--replace", check=False)
    assert refused.returncode == 1 and "would delete 1 instances" in refused.stderr
    assert SPOT in refused.stderr and "--yes" in refused.stderr
    assert server.api().request("GET", f"/v1/instances/{SPOT}").status_code == 200
    server.admin("import", file, "--replace", "--yes")
    assert httpx.get(f"{server.api_url}/v1/instances/{SPOT}",
                     headers={"Authorization": f"Bearer {server.token()}"}).status_code == 404


def test_replace_with_an_empty_file_is_refused(server: ServerProcess, tmp_path: Path) -> None:
    file = write(tmp_path / "empty.yaml", {"defaults": demo_fleet()["defaults"]})
    refused = server.admin("import", file, "--replace", check=False)
    assert refused.returncode == 1 and "holds no instance" in refused.stderr
    assert len(stored(server, "/v1/instances")["instances"]) == 3


def test_defaults_in_a_file_merge_into_the_stored_ones(server: ServerProcess,
                                                       tmp_path: Path) -> None:
    before = stored(server, "/v1/defaults")
    assert before["region-id"] == "cn-hangzhou" and "image-id" in before
    file = write(tmp_path / "zone.yaml", {"defaults": {
        "zone-id": "cn-hangzhou-k", "ntp-servers": None,
        "metadata-options": {"http-put-response-hop-limit": 2}}})
    server.admin("import", file)
    after = stored(server, "/v1/defaults")
    assert after["zone-id"] == "cn-hangzhou-k"
    assert (after["region-id"], after["image-id"]) == (before["region-id"], before["image-id"])
    assert "ntp-servers" not in after
    assert after["metadata-options"]["http-put-response-hop-limit"] == 2
    help_text = server.admin("import", "--help").stdout
    assert "merge patch" in help_text and "null removes" in " ".join(help_text.split())


def test_progress_covers_the_servers_work(server: ServerProcess) -> None:
    seen: list[tuple[str, int, int]] = []
    body = json.dumps(demo_fleet()).encode()
    result = server.api().import_fleet(body, progress=lambda *event: seen.append(event))
    stages = [stage for stage, _, _ in seen]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == [
        "upload", "parse", "validate", "write"]
    assert ("validate", 3, 3) in seen and ("write", 3, 3) in seen
    assert result["Instances"] == 3 and result["Replayed"] is False


def test_the_same_key_imports_once(server: ServerProcess, tmp_path: Path) -> None:
    client = server.api()
    body = json.dumps(demo_fleet()).encode()
    first = client.import_fleet(body, key="ci-run-1")
    audit = (server.workdir / "data" / "audit.log").read_text().count('"import"')
    again = client.import_fleet(body, key="ci-run-1")
    assert again["Replayed"] is True
    assert again["Version"] == first["Version"]  # the store's version: no second import
    assert (server.workdir / "data" / "audit.log").read_text().count('"import"') == audit
    other = json.dumps({"instances": []}).encode()
    with pytest.raises(Exception, match="IdempotencyKeyReused"):
        client.import_fleet(other, key="ci-run-1")


class DroppingProxy:
    """Forwards one request to the API, then hangs up before the answer comes back: the
    client has sent everything and will never know what became of it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.answered = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        client, _ = self.listener.accept()
        with client, socket.create_connection(self.target) as upstream:
            upstream.settimeout(60)
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            if upstream.recv(65536):  # the server answers: the import is done
                self.answered.set()
            client.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass


def test_a_lost_answer_is_unknown_and_retrying_with_its_key_is_safe(
        server: ServerProcess, tmp_path: Path) -> None:
    host, port = server.api_url.removeprefix("http://").split(":")
    proxy = DroppingProxy((host, int(port)))
    doc = demo_fleet()
    doc["instances"][0]["instance-name"] = "lost-answer"
    file = write(tmp_path / "fleet.yaml", doc)
    lost = server.admin("--api", f"http://127.0.0.1:{proxy.port}", "import", file, check=False)
    assert lost.returncode == 1 and "outcome is unknown" in lost.stderr, lost.stderr
    assert "nothing was changed" not in lost.stderr
    assert proxy.answered.wait(30)
    wait_until(lambda: stored(server, f"/v1/instances/{WEB}")["instance-name"] ==
               "lost-answer", timeout=30)  # the server went on after the client was gone
    made = etag(server, WEB)
    command = lost.stderr.split("check with `", 1)[1].split("`", 1)[0].split()
    assert command[:3] == ["ecs-imds", "admin", "import"] and "--idempotency-key" in command
    again = server.admin(*command[2:])
    assert "already imported" in again.stderr and etag(server, WEB) == made


def test_a_lost_answer_to_a_change_is_unknown(server: ServerProcess) -> None:
    host, port = server.api_url.removeprefix("http://").split(":")
    proxy = DroppingProxy((host, int(port)))
    result = server.admin("--api", f"http://127.0.0.1:{proxy.port}", "options", WEB,
                          "--hop-limit", "3", check=False)
    assert result.returncode == 1 and "outcome unknown" in result.stderr
    assert f"ecs-imds admin instance get {WEB}" in result.stderr


def test_admin_says_when_the_server_has_no_api(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data-dir": str(tmp_path / "data"), "api": False}))
    result = subprocess.run([ECS_IMDS, "--config", str(config), "admin", "instance", "list"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "the server has no API" in result.stderr
    assert str(config) in result.stderr and "Traceback" not in result.stderr


def test_the_api_answers_503_json_while_the_store_is_away(tmp_path: Path) -> None:
    with cluster() as pg:
        url = pg.create_database("away")
        srv = ServerProcess(tmp_path, demo_fleet(),
                            [{"bind": f"127.0.0.1:{free_port()}", "vpc-id": DEMO_VPC}],
                            store=url, api={"bind": f"127.0.0.1:{free_port()}"})
        try:
            srv.start()
            pg.stop()
            api = httpx.Client(base_url=srv.api_url,
                               headers={"Authorization": f"Bearer {srv.token()}"}, timeout=60)
            for method, path, body in [("GET", f"/v1/instances/{WEB}", None),
                                       ("PATCH", f"/v1/instances/{WEB}/metadata-options",
                                        {"HttpTokens": "required"}),
                                       ("GET", "/v1/api-tokens", None)]:
                resp = api.request(method, path, json=body)
                assert resp.status_code == 503, (path, resp.text)
                assert resp.headers["content-type"] == "application/json"
                assert resp.json()["Code"] == "ServiceUnavailable"
                assert "Traceback" not in resp.text
            assert api.get("/healthz").status_code == 200
            wait_until(lambda: api.get("/readyz").json()["status"] == "stale", timeout=30)
            shown = srv.admin("instance", "get", WEB, check=False)
            assert shown.returncode == 1 and "ServiceUnavailable" in shown.stderr
            pg.start()
            wait_until(lambda: api.get(f"/v1/instances/{WEB}").status_code == 200,
                       timeout=30)
        finally:
            srv.cleanup()


def test_migrate_replace_under_a_running_server_takes_the_new_secrets(
        server: ServerProcess, tmp_path: Path) -> None:
    """Copying another fleet's store over this one's (`migrate --replace`) brings its API
    secret: the server follows without a restart and rewrites its admin token file."""
    (tmp_path / "other").mkdir()
    other = demo_server(tmp_path / "other", {"127.0.0.1": WEB})
    try:
        old = server.token()
        source = f"sqlite:///{other.workdir / 'data' / 'ecs-imds.db'}"
        target = f"sqlite:///{server.workdir / 'data' / 'ecs-imds.db'}"
        server.admin("migrate", "--from", source, "--to", target, "--replace")
        wait_until(lambda: server.token() != old, timeout=20)
        assert httpx.get(f"{server.api_url}/v1/defaults",
                         headers={"Authorization": f"Bearer {old}"}).status_code == 401
        assert server.admin("instance", "list").returncode == 0
    finally:
        other.cleanup()


def test_admin_client_reports_refusals_with_their_code(server: ServerProcess) -> None:
    client = AdminClient(server.api_url, "read.x.0123456789abcdef.9999999999.AAAA")
    with pytest.raises(Exception, match="Unauthorized"):
        client.json("GET", "/v1/defaults")


def test_an_import_sent_again_while_it_runs_is_refused_not_made_twice(
        server: ServerProcess) -> None:
    """While SQLite's write lock is held by another connection, no import can finish: of
    three sends of one import with one key, one runs (and waits) and the others are
    refused (409). Once the lock is free the one finishes; sending it again replays it."""
    body = json.dumps(demo_fleet()).encode()
    holder = sqlite3.connect(server.workdir / "data" / "ecs-imds.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    outcomes: list[Any] = []

    def send() -> None:
        try:
            outcomes.append(server.api().import_fleet(body, key="slow-1"))
        except ControlPlaneError as exc:
            outcomes.append(exc.code)

    senders = [threading.Thread(target=send) for _ in range(3)]
    try:
        for t in senders:
            t.start()
        wait_until(lambda: outcomes.count("IdempotencyKeyInUse") == 2, timeout=30)
        assert len(outcomes) == 2  # the third is still waiting for the lock
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        for t in senders:
            t.join(timeout=60)
    made = [o for o in outcomes if isinstance(o, dict)]
    assert len(made) == 1 and made[0]["Replayed"] is False
    assert server.api().import_fleet(body, key="slow-1")["Replayed"] is True
