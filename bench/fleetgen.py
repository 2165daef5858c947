"""Synthetic fleets for the benchmarks: N instances that look like a real VPC's.

Every instance has its own id, name, MAC, interface, addresses and disks; a quarter have a
second interface or a public address, half a RAM role, user data and a data disk; all share
one VPC, a few vSwitches, one key pair and the fleet defaults, as a real fleet does.
"""

from __future__ import annotations

from typing import Any

VPC = "vpc-bench000001"
ROLE = "bench-ecs-role"

DEFAULTS: dict[str, Any] = {
    "region-id": "cn-hangzhou",
    "zone-id": "cn-hangzhou-i",
    "owner-account-id": "1609000000000001",
    "image-id": "aliyun_3_x64_20G_alibase_20210425.vhd",
    "instance-type": "ecs.g6e.large",
    "max-netbw-egress": 1228800,
    "max-netbw-ingress": 1228800,
}

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchKeyBenchKeyBenchKeyBenchKeyBenchKeyBench ops"


def instance_id(n: int) -> str:
    return f"i-bench{n:013d}"


def _mac(n: int, nic: int) -> str:
    v = n * 2 + nic
    return "00:16:3e:" + ":".join(f"{(v >> s) & 0xFF:02x}" for s in (16, 8, 0))


def _ip(n: int, nic: int) -> tuple[str, str]:
    """(address, vSwitch CIDR): each /16 of 10.0.0.0/8 is one vSwitch per interface index."""
    v = n + 16  # keep clear of the network address
    return f"10.{(v >> 16) * 2 + nic + 1}.{(v >> 8) & 0xFF}.{v & 0xFF}", \
        f"10.{(v >> 16) * 2 + nic + 1}.0.0/16"


def _nic(n: int, nic: int) -> dict[str, Any]:
    ip, cidr = _ip(n, nic)
    return {
        "mac": _mac(n, nic),
        "network-interface-id": f"eni-bench{n:09d}{nic}",
        "vpc-id": VPC,
        "vswitch-id": f"vsw-bench{cidr.split('.')[1]:0>6}",
        "private-ipv4s": [ip],
        "vswitch-cidr-block": cidr,
        "vpc-cidr-block": "10.0.0.0/8",
    }


def instance(n: int) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "instance-id": instance_id(n),
        "instance-name": f"bench-{n}",
        "network-interfaces": [_nic(n, 0)] + ([_nic(n, 1)] if n % 4 == 1 else []),
        "disks": [{"serial": f"bench{n:013d}a", "id": f"d-bench{n:013d}a", "name": "system"}]
        + ([{"serial": f"bench{n:013d}b", "id": f"d-bench{n:013d}b", "name": "data"}]
           if n % 2 else []),
        "public-keys": {"ops-key": KEY},
        "tags": {"env": "prod" if n % 3 else "staging", "team": f"team-{n % 7}"},
        "metadata-options": {"instance-metadata-tags": "enabled"} if n % 2 else {},
    }
    if n % 4 == 0:
        doc["public-ipv4"] = f"47.{96 + (n >> 16)}.{(n >> 8) & 0xFF}.{n & 0xFF}"
    if n % 2 == 0:
        doc["ram-role"] = ROLE
        doc["user-data"] = f"#cloud-config\nhostname: bench-{n}\n"
    if not doc["metadata-options"]:
        del doc["metadata-options"]
    return doc


def fleet(count: int) -> dict[str, Any]:
    return {"defaults": dict(DEFAULTS), "instances": [instance(n) for n in range(count)]}
