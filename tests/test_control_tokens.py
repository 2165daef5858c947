"""API tokens (ids, expiry, list, revoke), rotating the API secret and the credential secret,
bounds on request bodies, and what `admin` prints: against real servers."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecs_imds.demo import DEMO_VPC, demo_fleet
from pg import wait_until
from server import ServerProcess, demo_server, free_port, get

WEB, HARDENED = "i-bp1demo0000000000001", "i-bp1demo0000000000002"
ROLE = "demo-ecs-role"
CREDENTIALS = f"/latest/meta-data/ram/security-credentials/{ROLE}"
BODY_LIMIT = 100_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = demo_server(tmp_path_factory.mktemp("tokens"), {"127.0.0.1": WEB},
                      api={"bind": f"127.0.0.1:{free_port()}", "body-limit": BODY_LIMIT,
                           "token-lifetime": 3600, "token-max-lifetime": 7200})
    yield srv
    srv.cleanup()


def client(server: ServerProcess, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.api_url, headers={"Authorization": f"Bearer {token}"})


def status_with(server: ServerProcess, token: str) -> int:
    with client(server, token) as api:
        return api.get("/v1/defaults").status_code


def create(server: ServerProcess, *args: str) -> tuple[str, str]:
    """`admin token create ARGS`: (token, id)."""
    data = json.loads(server.admin("token", "create", *args, "--json").stdout)
    return data["Token"], data["Id"]


# -- tokens ----------------------------------------------------------------------------------
def test_tokens_carry_an_id_and_an_expiry(server: ServerProcess) -> None:
    token, token_id = create(server, "ci", "--scope", "admin")
    scope, name, in_token, expires, _ = token.split(".")
    assert (scope, name, in_token) == ("admin", "ci", token_id)
    assert 3590 < int(expires) - time.time() <= 3600  # api.token-lifetime
    assert status_with(server, token) == 200
    tampered = ".".join([scope, name, in_token, str(int(expires) + 3600), token.split(".")[4]])
    assert status_with(server, tampered) == 401


def test_an_expired_token_is_refused(server: ServerProcess) -> None:
    token, _ = create(server, "brief", "--lifetime", "1")
    wait_until(lambda: status_with(server, token) == 401, timeout=10, step=0.2)


def test_lifetime_beyond_the_maximum_is_refused(server: ServerProcess) -> None:
    result = server.admin("token", "create", "greedy", "--lifetime", "7201", check=False)
    assert result.returncode == 1
    assert "api.token-max-lifetime" in result.stderr and "Traceback" not in result.stderr


def test_list_and_revoke(server: ServerProcess) -> None:
    token, token_id = create(server, "grafana")
    other, _ = create(server, "prometheus")
    listed = json.loads(server.admin("token", "list", "--json").stdout)["Tokens"]
    mine = [t for t in listed if t["Id"] == token_id]
    assert mine and mine[0]["Name"] == "grafana" and mine[0]["State"] == "valid"
    assert token not in json.dumps(listed)  # the record, never the token
    table = server.admin("token", "list").stdout
    assert token_id in table and "grafana" in table
    server.admin("token", "revoke", token_id)
    assert status_with(server, token) == 401
    assert status_with(server, other) == 200
    listed = json.loads(server.admin("token", "list", "--json").stdout)["Tokens"]
    assert [t["State"] for t in listed if t["Id"] == token_id] == ["revoked"]
    missing = server.admin("token", "revoke", "0123456789abcdef", check=False)
    assert missing.returncode == 1 and "InvalidApiTokenId.NotFound" in missing.stderr


def test_a_read_token_may_not_revoke(server: ServerProcess) -> None:
    reader, _ = create(server, "viewer")
    _, victim = create(server, "victim")
    with client(server, reader) as api:
        assert api.get("/v1/api-tokens").status_code == 200
        assert api.delete(f"/v1/api-tokens/{victim}").status_code == 403
        assert api.post("/v1/keys/api-secret/rotate").status_code == 403


# -- bounds on bodies ------------------------------------------------------------------------
def test_a_body_over_the_limit_is_413(server: ServerProcess) -> None:
    big = json.dumps({"instances": [], "pad": "x" * BODY_LIMIT}).encode()
    with client(server, server.token()) as api:
        declared = api.post("/v1/fleet", content=big,
                            headers={"Content-Type": "application/json"})
        assert declared.status_code == 413 and declared.json()["Code"] == "PayloadTooLarge"
        assert "api.body-limit" in declared.json()["Message"]
        streamed = api.post("/v1/fleet", content=iter([big[:60_000], big[60_000:]]),
                            headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413
        assert api.get(f"/v1/instances/{WEB}").status_code == 200  # the server is fine


@pytest.mark.parametrize("depth", [40, 5000, 200_000])
@pytest.mark.parametrize(("method", "path"), [
    ("PATCH", f"/v1/instances/{WEB}"), ("POST", "/v1/fleet"), ("PUT", "/v1/defaults"),
    ("PATCH", f"/v1/instances/{WEB}/metadata-options"), ("POST", "/v1/api-tokens"),
])
def test_deeply_nested_json_is_400_not_500(server: ServerProcess, depth: int, method: str,
                                           path: str) -> None:
    deep = '{"tags": ' + "[" * depth + "]" * depth + "}"
    if len(deep) > BODY_LIMIT:
        deep = '{"tags": ' + "[" * depth + "}"  # unbalanced: no JSON either
    with client(server, server.token()) as api:
        resp = api.request(method, path, content=deep.encode()[:BODY_LIMIT],
                           headers={"Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["Code"] == "InvalidParameter" and "Traceback" not in resp.text


def test_nesting_within_the_bound_is_judged_as_usual(server: ServerProcess) -> None:
    with client(server, server.token()) as api:
        resp = api.patch(f"/v1/instances/{WEB}", json={"tags": {"k": [[["v"]]]}})
    assert resp.status_code == 400 and "tags" in resp.json()["Message"]


# -- what admin prints -------------------------------------------------------------------------
def test_tables_escape_control_characters(server: ServerProcess) -> None:
    hostile = "\x1b[2J\x1b]0;pwned\x07\u2028next\x9bline\u202eevil"
    with client(server, server.token()) as api:
        assert api.put(f"/v1/instances/{HARDENED}/tags",
                       json={"Tags": {"note": hostile}}).status_code == 200
    shown = server.admin("tags", HARDENED).stdout
    for raw in ("\x1b", "\x07", "\u2028", "\x9b", "\u202e"):
        assert raw not in shown
    assert r"\x1b[2J\x1b]0;pwned\x07\u2028next\x9bline\u202eevil" in shown.replace("\n", "")
    data = json.loads(server.admin("tags", HARDENED, "--json").stdout)
    assert data["Tags"]["note"] == hostile  # JSON keeps the value exact, escaped by JSON


def test_json_is_accepted_after_the_subcommand(server: ServerProcess) -> None:
    before = json.loads(server.admin("--json", "instance", "list").stdout)
    after = json.loads(server.admin("instance", "list", "--json").stdout)
    assert before == after and WEB in [i["instance-id"] for i in after["instances"]]


def test_ids_are_never_cut(server: ServerProcess) -> None:
    narrow = server.cli("admin", "instance", "list", env={"COLUMNS": "30"}).stdout
    for instance_id in (WEB, HARDENED, DEMO_VPC):
        assert instance_id in narrow
    wide = server.cli("admin", "instance", "list", "--wide", env={"COLUMNS": "30"}).stdout
    assert "demo-web-1" in wide


# -- rotations -----------------------------------------------------------------------------------
def credential(server: ServerProcess) -> dict[str, Any]:
    status, _, body = get(server.port, CREDENTIALS)
    assert status == 200
    return json.loads(body)  # type: ignore[no-any-return]


def verify(server: ServerProcess, cred: dict[str, Any]) -> int:
    with client(server, server.token()) as api:
        return api.post("/v1/credentials/verify",
                        json={"AccessKeyId": cred["AccessKeyId"],
                              "SecurityToken": cred["SecurityToken"]}).status_code


def test_rotating_credentials_serves_new_ones_and_voids_the_old(server: ServerProcess) -> None:
    old = credential(server)
    assert verify(server, old) == 200
    result = server.admin("rotate", "credentials")
    assert "rotated" in result.stdout
    assert credential(server)["AccessKeyId"] != old["AccessKeyId"]  # at once, here
    assert verify(server, old) == 404
    assert verify(server, credential(server)) == 200


def test_rotating_the_api_secret_refuses_every_old_token(server: ServerProcess) -> None:
    path = server.workdir / "data" / "admin.token"
    old_admin = server.token()
    reader, _ = create(server, "dashboard")
    result = server.admin("rotate", "api-secret", "--json")
    data = json.loads(result.stdout)
    assert data["AdminTokenFile"] == str(path)
    assert status_with(server, old_admin) == 401 and status_with(server, reader) == 401
    assert status_with(server, data["Token"]) == 200
    new_admin = server.token()
    assert new_admin != old_admin and status_with(server, new_admin) == 200
    assert path.stat().st_mode & 0o777 == 0o600
    assert server.admin("token", "create", "after").returncode == 0  # the CLI reads the file
    states = {t["Name"]: t["State"] for t in
              json.loads(server.admin("token", "list", "--json").stdout)["Tokens"]}
    assert states["dashboard"] == "rotated" and states["after"] == "valid"
    audit = (server.workdir / "data" / "audit.log").read_text()
    assert "rotate-api-secret" in audit and new_admin not in audit and data["Token"] not in audit


def test_an_admin_token_file_that_no_longer_verifies_is_rewritten(tmp_path: Path) -> None:
    srv = demo_server(tmp_path, {"127.0.0.1": WEB})
    try:
        srv.stop()
        path = tmp_path / "data" / "admin.token"
        path.write_text("admin.admin.AAAA\n")  # e.g. the format before token ids
        srv.launch()
        assert srv.token() != "admin.admin.AAAA"
        assert status_with(srv, srv.token()) == 200
    finally:
        srv.cleanup()


def test_every_server_of_a_fleet_follows_rotations_and_revocations(tmp_path: Path,
                                                                   pg_url: str) -> None:
    """Two servers on one PostgreSQL: what one rotates or revokes, the other refuses."""
    servers = []
    for host in ("h1", "h2"):
        port = free_port()
        (tmp_path / host).mkdir()
        srv = ServerProcess(tmp_path / host, demo_fleet(),
                            [{"bind": f"127.0.0.1:{port}", "vpc-id": DEMO_VPC,
                              "aliases": {"127.0.0.1": WEB}}],
                            store=pg_url, api={"bind": f"127.0.0.1:{free_port()}"})
        srv.port = port
        servers.append(srv)
    try:
        one, two = servers
        one.start()
        two.launch()
        two.wait_ready("127.0.0.1", two.port)
        token, token_id = create(one, "shared")
        assert status_with(two, token) == 200
        one.admin("token", "revoke", token_id)
        wait_until(lambda: status_with(two, token) == 401, timeout=10)

        old_cred = credential(two)
        one.admin("rotate", "credentials")
        wait_until(lambda: credential(two)["AccessKeyId"] != old_cred["AccessKeyId"],
                   timeout=10)
        assert verify(two, old_cred) == 404 and verify(two, credential(two)) == 200

        before = two.token()
        one.admin("rotate", "api-secret")
        wait_until(lambda: status_with(two, before) == 401, timeout=10)
        wait_until(lambda: two.token() != before, timeout=10)
        assert status_with(two, two.token()) == 200
        assert os.stat(tmp_path / "h2" / "data" / "admin.token").st_mode & 0o777 == 0o600
    finally:
        for srv in servers:
            srv.cleanup()
