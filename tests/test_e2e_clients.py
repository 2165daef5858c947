"""The real Alibaba clients and Alibaba's own recipes, run inside instance namespaces
against the real server on 100.100.100.200:80 (SPEC §5, §7)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from e2e import ROLE, A, B, C, curl, in_ns, token
from netns import Topology
from server import ServerProcess

NEW_PROVIDER = """
import json
from alibabacloud_credentials.provider.ecs_ram_role import EcsRamRoleCredentialsProvider
cred = EcsRamRoleCredentialsProvider().get_credentials()
print(json.dumps({"ak": cred.get_access_key_id(), "secret": cred.get_access_key_secret(),
                  "token": cred.get_security_token()}))
"""

CLASSIC_CLIENT = """
import json
from alibabacloud_credentials.client import Client
from alibabacloud_credentials.models import Config
cred = Client(Config(type="ecs_ram_role", role_name=%r)).get_credential()
print(json.dumps({"ak": cred.access_key_id, "secret": cred.access_key_secret,
                  "token": cred.security_token}))
"""

SDK_CORE = """
import json
from aliyunsdkcore.auth.credentials import EcsRamRoleCredential
from aliyunsdkcore.auth.signers.ecs_ram_role_signer import EcsRamRoleSigner
from aliyunsdkcore.request import RpcRequest
request = RpcRequest("Ecs", "2014-05-26", "DescribeInstances")
header, url = EcsRamRoleSigner(EcsRamRoleCredential(%r)).sign("cn-shanghai", request)
print(json.dumps({"url": url}))
"""

OSS2 = """
import json
from oss2.credentials import EcsRamRoleCredentialsProvider
url = "http://100.100.100.200/latest/meta-data/ram/security-credentials/%s"
cred = EcsRamRoleCredentialsProvider(url).get_credentials()
print(json.dumps({"ak": cred.access_key_id, "secret": cred.access_key_secret,
                  "token": cred.security_token}))
"""


def _verify(server: ServerProcess, cred: dict[str, str], instance: str) -> None:
    verdict = server.admin("verify-credential", cred["ak"], cred["token"])
    assert f"instance {instance} role {ROLE}" in verdict.stdout
    assert verdict.stdout.strip().endswith(": valid")


def _run(topo: Topology, who: str, code: str, **env: str) -> dict[str, str]:
    result = in_ns(topo, who, code, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("who", "env"), [
    ("a", {}),                                              # normal mode, token first
    ("b", {"ALIBABA_CLOUD_IMDSV1_DISABLED": "true"}),       # hardened, no fallback allowed
    ("a", {"ALIBABA_CLOUD_ECS_METADATA": ROLE}),            # role named, no listing
    ("b", {"ALIBABA_CLOUD_ECS_METADATA": ROLE,
           "ALIBABA_CLOUD_IMDSV1_DISABLED": "true"}),
])
def test_alibabacloud_credentials(topo: Topology, server: ServerProcess, who: str,
                                  env: dict[str, str]) -> None:
    cred = _run(topo, who, NEW_PROVIDER, **env)
    assert cred["ak"].startswith("STS.") and cred["secret"] and cred["token"]
    _verify(server, cred, {"a": A, "b": B}[who])


def test_alibabacloud_credentials_client(topo: Topology, server: ServerProcess) -> None:
    cred = _run(topo, "b", CLASSIC_CLIENT % ROLE, ALIBABA_CLOUD_IMDSV1_DISABLED="true")
    _verify(server, cred, B)


def test_aliyun_python_sdk_core_signs_with_served_credentials(topo: Topology,
                                                              server: ServerProcess) -> None:
    url = _run(topo, "a", SDK_CORE % ROLE)["url"]
    assert "AccessKeyId=STS." in url and "SecurityToken=CAIS" in url and "Signature=" in url


def test_oss2_reads_credentials(topo: Topology, server: ServerProcess) -> None:
    cred = _run(topo, "a", OSS2 % ROLE)
    _verify(server, cred, A)


def test_plain_clients_fail_on_a_hardened_instance(topo: Topology, server: ServerProcess) -> None:
    assert in_ns(topo, "b", OSS2 % ROLE).returncode != 0


def test_no_role_no_credentials(topo: Topology, server: ServerProcess) -> None:
    assert curl(topo, "c", "/latest/meta-data/ram/security-credentials/")[0] == 404
    assert curl(topo, "a", f"/latest/meta-data/ram/security-credentials/{ROLE}x")[0] == 404


def _recipe(tmp: Path, document: bytes, signature: bytes, cert: str) -> str:
    """Alibaba's documented check, verbatim but for the files coming from our curl."""
    (tmp / "document").write_bytes(document)
    (tmp / "signature").write_bytes(b"-----BEGIN CERTIFICATE-----\n" + signature +
                                    b"\n-----END CERTIFICATE-----\n")
    (tmp / "cert.pem").write_text(cert)
    result = subprocess.run(["openssl", "smime", "-verify", "-in", "signature", "-inform", "PEM",
                             "-content", "document", "-certfile", "cert.pem", "-noverify"],
                            cwd=tmp, capture_output=True, text=True, timeout=30)
    return result.stderr + result.stdout


def test_identity_verifies_with_alibabas_recipe(topo: Topology, server: ServerProcess,
                                                tmp_path: Path) -> None:
    cert = server.admin("identity-cert").stdout
    status, document = curl(topo, "a", "/latest/dynamic/instance-identity/document")
    assert status == 200 and json.loads(document)["instance-id"] == A
    status, signature = curl(topo, "a", "/latest/dynamic/instance-identity/pkcs7")
    assert status == 200
    assert all(len(line) <= 64 for line in signature.split(b"\n"))
    assert "Verification successful" in _recipe(tmp_path, document, signature, cert)
    tampered = document.replace(A.encode(), B.encode())
    assert "Verification successful" not in _recipe(tmp_path, tampered, signature, cert)

    status, signed = curl(topo, "a", "/latest/dynamic/instance-identity/pkcs7?audience=my%20app")
    assert status == 200
    with_audience = document[:-1] + b',"audience":"my app"}'
    assert "Verification successful" in _recipe(tmp_path, with_audience, signed, cert)
    assert "Verification successful" not in _recipe(tmp_path, document, signed, cert)
    assert curl(topo, "a", "/latest/dynamic/instance-identity/pkcs7?audience=")[0] == 400

    files = {"document": document, "signature": signature, "cert": cert.encode()}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    ok = server.cli("verify-identity", "--document", str(tmp_path / "document"),
                    "--signature", str(tmp_path / "signature"), "--cert", str(tmp_path / "cert"))
    assert ok.stdout.strip() == "Verification successful"
    (tmp_path / "document").write_bytes(tampered)
    bad = server.cli("verify-identity", "--document", str(tmp_path / "document"),
                     "--signature", str(tmp_path / "signature"), "--cert",
                     str(tmp_path / "cert"), check=False)
    assert bad.returncode != 0


def _eventually(topo: Topology, who: str, path: str, want: int) -> bytes:
    deadline = time.monotonic() + 10
    while True:
        status, body = curl(topo, who, path)
        if status == want:
            return body
        assert time.monotonic() < deadline, f"{path} stayed {status}"
        time.sleep(0.1)


def test_spot_reclaim_and_system_events(topo: Topology, server: ServerProcess) -> None:
    path = "/latest/meta-data/instance/spot/termination-time"
    assert curl(topo, "c", path)[0] == 404
    server.admin("spot", C, "--at", "2026-12-01T10:00:00Z")
    assert _eventually(topo, "c", path, 200) == b"2026-12-01T10:00:00Z"
    assert b"spot/" in curl(topo, "c", "/latest/meta-data/instance/")[1]
    server.admin("spot", C, "--cancel")
    _eventually(topo, "c", path, 404)

    events = "/latest/maintenance/active-system-events"
    assert curl(topo, "c", events)[0] == 404
    event_id = server.admin("event", "add", C, "--type", "SystemMaintenance.Reboot",
                            "--not-before", "2026-12-02T00:00:00Z", "--reason", "host upgrade"
                            ).stdout.strip()
    body = json.loads(_eventually(topo, "c", events, 200))
    assert body == [{"EventId": event_id, "EventType": "SystemMaintenance.Reboot",
                     "EventCycleStatus": "Scheduled", "NotBefore": "2026-12-02T00:00:00Z",
                     "Reason": "host upgrade"}]
    server.admin("event", "cancel", C, event_id)
    _eventually(topo, "c", events, 404)
    bad = server.admin("spot", C, "--at", "tomorrow", check=False)
    assert bad.returncode != 0 and "spot-termination-time" in bad.stderr


def test_tokens_survive_a_restart(topo: Topology, server: ServerProcess) -> None:
    status, tok = token(topo, "b")
    assert status == 200
    server.stop()
    server.launch(lambda argv, log: topo.server.popen(argv, stdout=log,
                                                      stderr=subprocess.STDOUT))
    topo.server.wait_for_tcp("100.100.100.200", 80)
    assert curl(topo, "b", "/latest/meta-data/instance-id",
                "-H", f"X-aliyun-ecs-metadata-token: {tok.decode()}") == (200, B.encode())
