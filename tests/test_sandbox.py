"""`ecs-imds sandbox` and the plugin's sandbox fixture: any program, unmodified, as an ECS
instance in a namespace of its own — as root (ip netns + veth) and as an ordinary user
(user namespace), with curl and the real Alibaba SDK clients, in both modes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli import as_nobody, ecs_imds
from installed import Installed
from netns import require_root

DEMO_FIRST, DEMO_HARDENED = "i-bp1demo0000000000001", "i-bp1demo0000000000002"
ROLE = "demo-ecs-role"
CURL = ["curl", "-s", "-f", "-m", "3"]
URL = "http://100.100.100.200/latest"

# Each client prints the AccessKeyId it got, then the one curl reads at the same time: the
# sandbox's server is the only place both can come from.
CLIENTS = {
    "alibabacloud_credentials": """
from alibabacloud_credentials.provider.ecs_ram_role import EcsRamRoleCredentialsProvider
print(EcsRamRoleCredentialsProvider().get_credentials().get_access_key_id())
""",
    "oss2": f"""
from oss2.credentials import EcsRamRoleCredentialsProvider
url = "{URL}/meta-data/ram/security-credentials/{ROLE}"
print(EcsRamRoleCredentialsProvider(url).get_credentials().access_key_id)
""",
    "aliyun-python-sdk-core": f"""
from urllib.parse import parse_qs, urlparse
from aliyunsdkcore.auth.credentials import EcsRamRoleCredential
from aliyunsdkcore.auth.signers.ecs_ram_role_signer import EcsRamRoleSigner
from aliyunsdkcore.request import RpcRequest
request = RpcRequest("Ecs", "2014-05-26", "DescribeInstances")
_, url = EcsRamRoleSigner(EcsRamRoleCredential("{ROLE}")).sign("cn-hangzhou", request)
print(parse_qs(urlparse(url).query)["AccessKeyId"][0])
""",
}
COMPARE = f"""
import json, subprocess, sys
got = subprocess.run([sys.executable, "-c", sys.argv[1]], capture_output=True, text=True)
if got.returncode:
    sys.exit(got.stderr.strip().splitlines()[-1])
served = subprocess.run({CURL!r} + ["-H", "X-aliyun-ecs-metadata-token: " + subprocess.run(
    {CURL!r} + ["-X", "PUT", "-H", "X-aliyun-ecs-metadata-token-ttl-seconds: 60",
                "{URL}/api/token"], capture_output=True, text=True).stdout,
    "{URL}/meta-data/ram/security-credentials/{ROLE}"], capture_output=True, text=True)
print(json.dumps([got.stdout.strip(), json.loads(served.stdout)["AccessKeyId"]]))
"""


def sandbox(*args: str, ecs: str | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
    argv = [ecs or str(Path(sys.executable).with_name("ecs-imds")), "sandbox", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def no_leftovers() -> None:
    """No sandbox namespace name, server or directory is left."""
    assert "ecsimds" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                           text=True).stdout
    deadline = time.monotonic() + 10
    while True:
        left = [p for p in Path("/proc").glob("[0-9]*")
                if b"ecs-imds-sandbox-" in _cmdline(p)]
        if not left:
            break
        assert time.monotonic() < deadline, [_cmdline(p) for p in left]
        time.sleep(0.1)


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def test_curl_as_the_chosen_instance_and_its_exit_code() -> None:
    require_root()
    result = sandbox("--instance", "i-bp1demo0000000000003", "--", *CURL,
                     f"{URL}/meta-data/instance-id")
    assert (result.returncode, result.stdout) == (0, "i-bp1demo0000000000003"), result.stderr
    assert sandbox("--", "sh", "-c", "exit 7").returncode == 7
    refused = sandbox("--mode", "hardened", "--", *CURL, f"{URL}/meta-data/instance-id")
    assert refused.returncode == 22  # curl -f: the plain GET got 403
    no_leftovers()


def test_the_instance_network_is_the_instances_own() -> None:
    require_root()
    result = sandbox("--", "sh", "-c", "ip -br link show eth0; ip -br -4 addr show eth0; "
                     f"curl -s -m 3 {URL}/meta-data/mac; echo; ip route")
    assert result.returncode == 0, result.stderr
    assert "00:16:3e:00:00:01" in result.stdout.splitlines()[0]
    assert "192.168.0.10/24" in result.stdout
    lines = result.stdout.splitlines()
    assert lines[2] == "00:16:3e:00:00:01"
    assert sorted(line.split()[0] for line in lines[3:]) == [  # no default route
        "100.100.100.200", "192.168.0.0/24"]
    nowhere = sandbox("--", "curl", "-s", "-m", "2", "http://127.0.0.1:9/")
    assert nowhere.returncode != 0


@pytest.mark.parametrize("client", sorted(CLIENTS))
@pytest.mark.parametrize("mode", ["normal", "hardened"])
def test_the_real_sdk_clients(client: str, mode: str) -> None:
    """In normal mode every client gets the instance's credential; in hardened mode the
    token-using one does (with no fallback to plain GETs) and the plain-GET ones are
    refused, as on ECS."""
    require_root()
    env = {"ALIBABA_CLOUD_IMDSV1_DISABLED": "true"} if mode == "hardened" else {}
    os.environ.update(env)
    try:
        result = sandbox("--mode", mode, "--", sys.executable, "-c", COMPARE, CLIENTS[client])
    finally:
        for name in env:
            os.environ.pop(name)
    if mode == "hardened" and client != "alibabacloud_credentials":
        assert result.returncode != 0
        assert "403" in result.stderr or "Forbidden" in result.stderr, result.stderr
        return
    assert result.returncode == 0, result.stderr
    got, served = json.loads(result.stdout)
    assert got == served and got.startswith("STS.")


def test_a_killed_command_ends_it_all() -> None:
    require_root()
    result = sandbox("--", "sh", "-c", "kill -9 $$")
    assert result.returncode == 128 + signal.SIGKILL
    no_leftovers()


def test_a_killed_sandbox_takes_its_server_and_namespaces_along() -> None:
    require_root()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("ecs-imds")), "sandbox", "--",
                             "sh", "-c", "echo in; exec sleep 60"], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "in\n"
    proc.kill()
    proc.wait()
    no_leftovers()


def test_errors_are_one_line() -> None:
    result = ecs_imds("sandbox", "--instance", "i-nope", "--", "true")
    assert result.returncode == 1
    assert result.stderr.strip() == ("Error: i-nope is not in the fleet (it has "
                                     "i-bp1demo0000000000001, i-bp1demo0000000000002, "
                                     "i-bp1demo0000000000003)")


def test_as_an_ordinary_user(installed: Installed) -> None:
    """nobody, through an unprivileged user + network namespace: curl and a real client."""
    result = as_nobody([installed.ecs_imds, "sandbox", "--mode", "hardened", "--", "sh", "-c",
                        f"T=$(curl -s -X PUT -H 'X-aliyun-ecs-metadata-token-ttl-seconds: 9'"
                        f" {URL}/api/token); curl -s -H \"X-aliyun-ecs-metadata-token: $T\""
                        f" {URL}/meta-data/instance-id"], timeout=120)
    assert (result.returncode, result.stdout) == (0, DEMO_FIRST), result.stderr
    sdk = as_nobody([installed.ecs_imds, "sandbox", "--", installed.python, "-c", COMPARE,
                     CLIENTS["oss2"]], timeout=120)
    assert sdk.returncode == 0, sdk.stderr
    got, served = json.loads(sdk.stdout)
    assert got == served and got.startswith("STS.")
    no_leftovers()


REFUSING_KERNEL = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
to_child, from_parent = os.pipe()
to_parent, from_child = os.pipe()
pid = os.fork()
if pid == 0:
    assert libc.unshare(0x10000000) == 0          # a user namespace of our own…
    os.write(from_child, b"x")
    os.read(to_child, 1)                          # …mapped by the parent
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")                              # in which no user may make another
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    os.execv(sys.argv[1], sys.argv[1:])
os.read(to_parent, 1)
for name in ("uid_map", "gid_map"):
    with open(f"/proc/{pid}/{name}", "w") as f:
        f.write("0 0 65536")
os.write(from_parent, b"x")
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_where_the_kernel_refuses_it_says_why_and_what_to_do(installed: Installed) -> None:
    require_root()
    result = subprocess.run([sys.executable, "-c", REFUSING_KERNEL, installed.ecs_imds,
                             "sandbox", "--", "true"], capture_output=True, text=True,
                            timeout=120, cwd="/")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        "Error: this kernel does not let ordinary users create user namespaces "
        "(user.max_user_namespaces is 0); run the sandbox as root, or as root run: "
        "sysctl -w user.max_user_namespaces=15000")
