"""The control plane, live: a real server with its API on loopback, real HTTP requests."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecs_imds.demo import DEMO_VPC
from server import ECS_IMDS, ServerProcess, demo_server, get

WEB, HARDENED, SPOT = (f"i-bp1demo000000000000{n}" for n in (1, 2, 3))
ALIASES = {"127.0.0.1": WEB, "127.0.0.2": HARDENED, "127.0.0.3": SPOT}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = demo_server(tmp_path_factory.mktemp("api"), ALIASES)
    yield srv
    srv.cleanup()


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.api_url,
                      headers={"Authorization": f"Bearer {server.token()}"}) as client:
        yield client


@pytest.fixture(scope="module")
def reader(server: ServerProcess, api: httpx.Client) -> Iterator[httpx.Client]:
    token = api.post("/v1/api-tokens", json={"Name": "grafana", "Scope": "read"}).json()["Token"]
    with httpx.Client(base_url=server.api_url,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


def new_instance(n: int) -> dict[str, Any]:
    return {"instance-id": f"i-apitest{n:04d}", "instance-name": f"api-{n}",
            "network-interfaces": [{
                "mac": f"00:16:3e:aa:{n // 256:02x}:{n % 256:02x}",
                "network-interface-id": f"eni-api{n:04d}", "vpc-id": DEMO_VPC,
                "vswitch-id": "vsw-api", "private-ipv4s": [f"192.168.7.{n % 250 + 1}"],
                "vswitch-cidr-block": "192.168.7.0/24", "vpc-cidr-block": "192.168.0.0/16"}]}


# -- auth -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/metrics", "/v1/instances", f"/v1/instances/{WEB}",
                                  "/v1/api-tokens", "/nonexistent", "/docsx", "/healthz/x"])
@pytest.mark.parametrize("auth", [None, "Bearer nope", "Bearer admin.admin.AAAA", "Basic x"])
def test_no_valid_token_gets_only_401(server: ServerProcess, path: str, auth: str | None
                                      ) -> None:
    headers = {"Authorization": auth} if auth else {}
    resp = httpx.get(server.api_url + path, headers=headers)
    assert resp.status_code == 401
    assert resp.json()["Code"] == "Unauthorized"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json", "/docs"])
def test_health_and_docs_answer_without_a_token_and_reveal_no_secret(
        server: ServerProcess, path: str) -> None:
    resp = httpx.get(server.api_url + path)
    assert resp.status_code == 200
    assert server.token() not in resp.text
    assert server.token().rsplit(".", 1)[-1] not in resp.text


def test_metrics_need_a_token_unless_opened(server: ServerProcess) -> None:
    assert httpx.get(server.api_url + "/metrics").status_code == 401
    op = httpx.get(server.api_url + "/openapi.json").json()["paths"]["/metrics"]["get"]
    assert "security" not in op  # the document's global bearer requirement applies


def test_read_only_token_reads_but_never_writes(reader: httpx.Client) -> None:
    assert reader.get(f"/v1/instances/{WEB}").status_code == 200
    assert reader.get("/metrics").status_code == 200
    for method, path in [("POST", "/v1/instances"), ("DELETE", f"/v1/instances/{WEB}"),
                         ("PATCH", f"/v1/instances/{WEB}/metadata-options"),
                         ("POST", "/v1/keys/token/rotate"), ("POST", "/v1/api-tokens")]:
        resp = reader.request(method, path, json={})
        assert resp.status_code == 403, (method, path)
    assert reader.get(f"/v1/instances/{WEB}").json()["instance-name"] == "demo-web-1"


def test_admin_token_file_is_private(server: ServerProcess) -> None:
    path = server.workdir / "data" / "admin.token"
    assert path.stat().st_mode & 0o777 == 0o600


def test_data_plane_listener_never_serves_the_api(server: ServerProcess) -> None:
    status, _, body = get(server.port, "/v1/instances",  # type: ignore[attr-defined]
                          headers={"Authorization": f"Bearer {server.token()}"})
    assert status == 404 and b"instances" not in body


# -- instances --------------------------------------------------------------------------------
def test_instance_lifecycle(api: httpx.Client) -> None:
    doc = new_instance(1)
    created = api.post("/v1/instances", json=doc)
    assert created.status_code == 201, created.text
    etag = created.headers["etag"]
    assert api.post("/v1/instances", json=doc).status_code == 409
    got = api.get(f"/v1/instances/{doc['instance-id']}")
    assert got.json() == created.json() and got.headers["etag"] == etag

    patched = api.patch(f"/v1/instances/{doc['instance-id']}",
                        json={"instance-name": "renamed", "tags": {"a": "1"}},
                        headers={"If-Match": etag})
    assert patched.status_code == 200 and patched.json()["instance-name"] == "renamed"
    assert patched.headers["etag"] != etag
    stale = api.patch(f"/v1/instances/{doc['instance-id']}", json={"instance-name": "x"},
                      headers={"If-Match": etag})
    assert stale.status_code == 412 and stale.json()["Code"] == "PreconditionFailed"

    replaced = api.put(f"/v1/instances/{doc['instance-id']}", json=doc,
                       headers={"If-Match": patched.headers["etag"]})
    assert replaced.status_code == 200 and "tags" not in replaced.json()
    assert api.delete(f"/v1/instances/{doc['instance-id']}").status_code == 204
    assert api.get(f"/v1/instances/{doc['instance-id']}").status_code == 404
    assert api.delete(f"/v1/instances/{doc['instance-id']}").status_code == 404


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d["network-interfaces"][0].__setitem__("mac", "nope"), "mac"),
    (lambda d: d.__setitem__("colour", "blue"), "colour"),
    (lambda d: d["network-interfaces"][0].__setitem__("private-ipv4s", ["192.168.0.10"]),
     "192.168.0.10"),  # the demo's first instance has it already
    (lambda d: d.__setitem__("metadata-options", {"http-tokens": "sometimes"}), "http-tokens"),
])
def test_invalid_instances_are_refused_naming_the_field(api: httpx.Client, change: Any,
                                                        field: str) -> None:
    doc = new_instance(2)
    change(doc)
    resp = api.post("/v1/instances", json=doc)
    assert resp.status_code == 400 and field in resp.json()["Message"]
    assert api.get(f"/v1/instances/{doc['instance-id']}").status_code == 404


def test_list_pages_and_filters(api: httpx.Client) -> None:
    for n in range(10, 15):
        doc = new_instance(n) | {"tags": {"batch": "list", "n": str(n)}}
        assert api.post("/v1/instances", json=doc).status_code == 201
    seen, token = [], None
    while True:
        params = {"tag": "batch=list", "page-size": 2} | ({"page-token": token} if token else {})
        page = api.get("/v1/instances", params=params).json()
        seen += [d["instance-id"] for d in page["instances"]]
        token = page["next-page-token"]
        if token is None:
            break
    assert seen == [f"i-apitest{n:04d}" for n in range(10, 15)]
    assert len(api.get("/v1/instances", params={"vpc-id": "vpc-other"}).json()["instances"]) == 0
    regions = api.get("/v1/instances", params={"region-id": "cn-hangzhou", "page-size": 1000})
    assert WEB in [d["instance-id"] for d in regions.json()["instances"]]
    assert api.get("/v1/instances", params={"page-size": 0}).status_code == 400


def test_two_writers_with_one_etag_exactly_one_wins(api: httpx.Client) -> None:
    doc = new_instance(3)
    etag = api.post("/v1/instances", json=doc).headers["etag"]
    for round_ in range(10):
        barrier = threading.Barrier(2)
        results: list[int] = []

        def write(name: str, etag: str = etag, barrier: threading.Barrier = barrier,
                  results: list[int] = results) -> None:
            barrier.wait()
            resp = api.patch(f"/v1/instances/{doc['instance-id']}",
                             json={"instance-name": name}, headers={"If-Match": etag})
            results.append(resp.status_code)

        threads = [threading.Thread(target=write, args=(f"w{round_}-{i}",)) for i in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [200, 412]
        etag = api.get(f"/v1/instances/{doc['instance-id']}").headers["etag"]


# -- Alibaba-named operations -------------------------------------------------------------------
@pytest.mark.parametrize(("body", "code"), [
    ({"HttpEndpoint": "on"}, "InvalidHttpEndpoint.NotSupported"),
    ({"HttpTokens": "always"}, "InvalidHttpTokens.NotSupported"),
    ({"HttpPutResponseHopLimit": 65}, "InvalidHttpPutResponseHopLimit.NotSupported"),
    ({"HttpPutResponseHopLimit": 0}, "InvalidHttpPutResponseHopLimit.NotSupported"),
])
def test_metadata_options_error_codes(api: httpx.Client, body: dict[str, Any], code: str
                                      ) -> None:
    resp = api.patch(f"/v1/instances/{SPOT}/metadata-options", json=body)
    assert resp.status_code == 400 and resp.json()["Code"] == code


def test_metadata_options_change(api: httpx.Client) -> None:
    path = f"/v1/instances/{SPOT}/metadata-options"
    assert api.get(path).json()["HttpPutResponseHopLimit"] == 1
    resp = api.patch(path, json={"HttpPutResponseHopLimit": 3})
    assert resp.json() == {"InstanceId": SPOT, "HttpEndpoint": "enabled",
                           "HttpTokens": "optional", "HttpPutResponseHopLimit": 3,
                           "InstanceMetadataTags": "disabled"}
    assert api.patch(path, json={"HttpPutResponseHopLimit": 1}).status_code == 200


def test_user_data_limit(api: httpx.Client) -> None:
    path = f"/v1/instances/{SPOT}/user-data"
    big = base64.b64encode(b"x" * (16 * 1024 + 1)).decode()
    resp = api.put(path, json={"UserData": big})
    assert resp.status_code == 400 and resp.json()["Code"] == "InvalidUserData.SizeExceeded"
    assert api.put(path, json={"UserData": "%%%"}).json()["Code"] == \
        "InvalidUserData.Base64FormatInvalid"
    data = base64.b64encode(b"#!/bin/sh\necho hi\n").decode()
    assert api.put(path, json={"UserData": data}).status_code == 200
    assert api.get(path).json()["UserData"] == data
    assert api.delete(path).json()["UserData"] is None


# -- health, metrics, audit, keys ------------------------------------------------------------
def test_health_and_metrics(api: httpx.Client, server: ServerProcess) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz").json()
    assert ready["status"] == "ready" and ready["ready"] is True and ready["stale"] is False
    assert ready["instances"] >= 3
    port = server.port
    get(port, "/latest/meta-data/instance-id")
    get(port, "/latest/meta-data/ram/security-credentials/demo-ecs-role")
    text = api.get("/metrics").text
    assert "ecs_imds_snapshot_version " in text and "ecs_imds_snapshot_stale 0.0" in text
    assert 'ecs_imds_dataplane_responses_total{class="2xx",code="200"}' in text
    assert 'ecs_imds_secret_answers_total{code="200",kind="credentials"}' in text
    ttl = {"X-aliyun-ecs-metadata-token-ttl-seconds": "60"}
    before = _metric(api.get("/metrics").text, "ecs_imds_tokens_issued_total")
    assert get(port, "/latest/api/token", "127.0.0.2", ttl, method="PUT")[0] == 200
    get(port, "/latest/meta-data/", "127.0.0.2", {"X-aliyun-ecs-metadata-token": "x"})
    text = api.get("/metrics").text
    assert _metric(text, "ecs_imds_tokens_issued_total") == before + 1
    assert _metric(text, "ecs_imds_tokens_refused_total") >= 1
    raw = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(40):  # keep-alive connections: handed to the loop, one in 16 timed
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(raw)
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
    text = api.get("/metrics").text
    assert _metric(text, "ecs_imds_dataplane_processing_seconds_count") >= 2
    assert 'ecs_imds_dataplane_processing_seconds_bucket{le="+Inf"}' in text


def test_metrics_count_the_process_and_the_build(api: httpx.Client) -> None:
    text = api.get("/metrics").text
    assert _metric(text, "process_resident_memory_bytes") > 0
    assert _metric(text, "process_cpu_seconds_total") > 0
    assert _metric(text, "ecs_imds_workers") == 1
    (info,) = [ln for ln in text.splitlines() if ln.startswith("ecs_imds_build_info{")]
    assert 'version="0.1.0"' in info and info.endswith(" 1.0")


def _metric(text: str, name: str) -> float:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    return float(line.split()[1])


def test_audit_log_says_who_changed_what_and_no_secret(api: httpx.Client,
                                                       server: ServerProcess) -> None:
    secret_user_data = base64.b64encode(b"password=hunter2").decode()
    api.put(f"/v1/instances/{SPOT}/user-data", json={"UserData": secret_user_data})
    token = api.post("/v1/api-tokens", json={"Name": "ci", "Scope": "admin"}).json()["Token"]
    lines = [json.loads(line) for line in
             (server.workdir / "data" / "audit.log").read_text().splitlines()]
    actions = {(e["actor"], e["action"], e["target"]) for e in lines}
    assert ("admin", "set-user-data", SPOT) in actions
    assert ("admin", "issue-api-token", "ci") in actions
    text = (server.workdir / "data" / "audit.log").read_text()
    for secret in (secret_user_data, "hunter2", token, server.token()):
        assert secret not in text
    assert server.token() not in server.log()


def test_token_key_rotation_keeps_old_tokens(api: httpx.Client, server: ServerProcess) -> None:
    port = server.port
    ttl = {"X-aliyun-ecs-metadata-token-ttl-seconds": "60"}
    _, _, old = get(port, "/latest/api/token", "127.0.0.2", ttl, method="PUT")
    rotated = api.post("/v1/keys/token/rotate").json()
    assert rotated["KeyId"] in rotated["KeyIds"] and len(rotated["KeyIds"]) >= 2
    server.wait_version(api.get("/readyz").json()["version"] + 0)
    hdr = {"X-aliyun-ecs-metadata-token": old.decode()}
    assert get(port, "/latest/meta-data/instance-id", "127.0.0.2", hdr)[0] == 200


def test_identity_rotation_changes_the_certificate(api: httpx.Client) -> None:
    before = api.get("/v1/identity/certificate").text
    assert before.startswith("-----BEGIN CERTIFICATE-----")
    assert api.post("/v1/keys/identity/rotate").status_code == 200
    assert api.get("/v1/identity/certificate").text != before


def test_schemathesis_finds_no_server_error(server: ServerProcess, tmp_path: Path) -> None:
    """Fuzz every operation of the live OpenAPI document: no 5xx, every response as
    documented. Runs against a copy of the data so the other tests' fleet is unharmed."""
    result = subprocess.run(
        [str(Path(ECS_IMDS).with_name("st")), "run", f"{server.api_url}/openapi.json",
         "-H", f"Authorization: Bearer {server.token()}",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                     "response_schema_conformance",
         # One worker: with two, hypothesis parses filters' source in two threads at once,
         # which CPython 3.11's ast module does not survive (SystemError, now and then).
         "--max-examples", "25", "--workers", "1", "--request-timeout", "30",
         "--exclude-path-regex", "rotate"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


# -- the API's own documentation -------------------------------------------------------------
def test_openapi_declares_the_bearer_scheme_and_names_operations(server: ServerProcess
                                                                 ) -> None:
    doc = httpx.get(server.api_url + "/openapi.json").json()
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert doc["security"] == [{"bearer": []}]
    ids = {op["operationId"]: (path, method) for path, ops in doc["paths"].items()
           for method, op in ops.items()}
    assert ids["ModifyInstanceMetadataOptions"] == (
        "/v1/instances/{instance_id}/metadata-options", "patch")
    assert ids["DescribeInstances"] == ("/v1/instances", "get")
    assert ids["ImportFleet"] == ("/v1/fleet", "post")
    assert all(re.fullmatch(r"(?:[A-Z][a-z0-9]*)+", name) for name in ids), sorted(ids)
    for public in ("/healthz", "/readyz"):
        assert doc["paths"][public]["get"]["security"] == []


def test_docs_page_loads_only_from_the_server(server: ServerProcess) -> None:
    page = httpx.get(server.api_url + "/docs").text
    links = re.findall(r"""(?:src|href)=["']([^"']+)""", page)
    links += re.findall(r"""url: ["']([^"']+)""", page)
    assert links and all(link.startswith("/") for link in links), links
    for link in links:
        resp = httpx.get(server.api_url + link)
        assert resp.status_code == 200 and len(resp.content) > 0, link
    bundle = httpx.get(server.api_url + "/docs/assets/swagger-ui-bundle.js")
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert b"SwaggerUIBundle" in bundle.content
    assert httpx.get(server.api_url + "/docs/assets/secret.txt").status_code == 404


def test_docs_page_renders_offline_with_an_authorize_button(server: ServerProcess,
                                                            tmp_path: Path) -> None:
    """A real headless Chromium whose only way out is a dead proxy: nothing but the server
    on loopback can be reached, and the page still renders its operations."""
    result = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
         "--proxy-server=http://127.0.0.1:9", f"--user-data-dir={tmp_path}",
         "--virtual-time-budget=15000", "--dump-dom", f"{server.api_url}/docs"],
        capture_output=True, text=True, timeout=120)
    dom = result.stdout
    assert "Authorize" in dom, result.stderr[-2000:]
    assert "ModifyInstanceMetadataOptions" in dom and "ecs-imds control plane" in dom
