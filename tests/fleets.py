"""Fleets shared by the core's tests: a rich instance that has every catalogue item of SPEC §3,
instances that have none of the optional ones, and the helpers that turn them into snapshots
and crawl them through `decide`.

Every document here is a function returning a fresh copy, so a test may mutate what it gets.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

import ecs_imds.demo
from ecs_imds.protocol.catalogue import JSON, TEXT, Leaf, Pool, Rendered, render
from ecs_imds.protocol.decide import (
    Headers,
    MintToken,
    NeedCredentials,
    NeedSignature,
    Refuse,
    Request,
    Verdict,
    decide,
)
from ecs_imds.protocol.model import Fleet, effective
from ecs_imds.protocol.response import REASONS
from ecs_imds.protocol.snapshot import Snapshot, index
from ecs_imds.protocol.tokens import KeyRing, TokenKey

DEMO_FLEET = Path(ecs_imds.demo.__file__).parent / "fleet.yaml"

NOW = 1_800_000_000  # a fixed "now" (2027-01-15) for everything that takes a clock

# ---------------------------------------------------------------------------------------
# The fleet
# ---------------------------------------------------------------------------------------
RICH_ID = "i-bp13znx0m0me8cquu001"
PLAIN_ID = "i-plain0001"
HARDENED_ID = "i-hard0001"
DISABLED_ID = "i-off0001"
OTHER_VPC_ID = "i-other0001"

VPC = "vpc-rich0001"
OTHER_VPC = "vpc-other0001"

RICH_IP = "10.0.0.10"          # primary address of the rich instance's primary interface
RICH_SECONDARY_IPS = ("10.0.0.11", "10.0.0.12")
RICH_SECOND_NIC_IP = "10.0.1.20"
RICH_IPV6 = ("2408:4000:1000:100::10", "2408:4000:1000:100::11")
PLAIN_IP = "10.0.0.20"
HARDENED_IP = "10.0.0.30"
DISABLED_IP = "10.0.0.40"
OTHER_VPC_IP = RICH_IP          # the same address, in another VPC

PRIMARY_MAC = "00:16:3e:0a:00:01"
SECOND_MAC = "00:16:3e:01:00:02"  # sorts before the primary one
ROLE = "EcsRamRoleTest"

VENDOR_DATA = b"\x00\x01\xfe\xffvendor\n"  # not UTF-8: stored as vendor-data-base64
USER_DATA = "#cloud-config\nhostname: rich\n"

EXPOSED_TAGS = {"Team": "platform", "env": "prod", "z.dot_ok-1": "v", "a+b=c,d:e@f": "x",
                "...": "three periods", "k" * 128: "longest"}
# SPEC §9: only keys of 1-128 of A-Z a-z 0-9 + - = . , _ : @, not `.` or `..`, are exposed.
HIDDEN_TAGS = {
    "": "empty key",
    " ": "blank key",
    "/": "just a slash",
    "a/b": "slash",
    "has space": "space",
    "trailing ": "trailing space",
    "\u3000wide": "ideographic space",
    "nbsp\u00a0key": "no-break space",
    ".": "one period",
    "..": "two periods",
    "caf\u00e9": "not ASCII",
    "a#b": "hash",
    "a?b": "question mark",
    "k" * 129: "too long",
}

EVENTS = [
    {"EventId": "e-bp1event0001", "EventType": "SystemMaintenance.Reboot",
     "EventCycleStatus": "Scheduled", "NotBefore": "2027-01-20T02:00:00Z",
     "Reason": "host maintenance"},
    {"EventId": "e-bp1event0002", "EventType": "SystemFailure.Redeploy",
     "EventCycleStatus": "Executing", "NotBefore": "2027-01-16T08:30:00Z"},
]


def defaults_doc() -> dict[str, Any]:
    return {
        "region-id": "cn-hangzhou",
        "zone-id": "cn-hangzhou-i",
        "owner-account-id": "1609000000000001",
        "image-id": "aliyun_3_x64_20G_alibase_20210425.vhd",
        "instance-type": "ecs.g6e.large",
        "max-netbw-egress": 1228800,
        "max-netbw-ingress": 1228800,
        "dns-nameservers": ["100.100.2.136", "100.100.2.138"],
        "ntp-servers": ["ntp1.aliyun.com", "ntp2.aliyun.com"],
        "source-address": "http://mirrors.cloud.aliyuncs.com",
        "extra": {"custom/fleet": "everyone", "custom/owner": "fleet-team"},
    }


def rich_doc() -> dict[str, Any]:
    """An instance with every item of SPEC §3, and a few traps."""
    return {
        "instance-id": RICH_ID,
        "instance-name": "iZbp1bfqfsvqzxhmnd5001",
        "hostname": "iZbp13znx0m0me8cquu001Z",
        "serial-number": "4acd2b47-b328-4762-852f-998f1a2c3b4d",
        "virtualization-solution": "ECS Virt",
        "virtualization-solution-version": "2.0",
        "kms-server": "kms.cn-hangzhou.aliyuncs.com",
        "wsus-server": "http://update.cn-hangzhou.aliyuncs.com",
        "wsus-status-server": "http://update-status.cn-hangzhou.aliyuncs.com",
        "hibernation-configured": True,
        "ram-role": ROLE,
        "last-host-landing-time": "2024-11-17 10:02:41",
        "image-product-code": "cmjj012345",
        "image-charge-type": "PrePaid",
        "public-ipv4": "47.96.0.11",
        "eipv4": "47.96.0.12",
        "launch-index": 2,
        "network-interfaces": [
            {
                "mac": PRIMARY_MAC,
                "network-interface-id": "eni-rich0001",
                "vpc-id": VPC,
                "vswitch-id": "vsw-rich0001",
                "private-ipv4s": [RICH_IP, *RICH_SECONDARY_IPS],
                "vswitch-cidr-block": "10.0.0.0/24",
                "vpc-cidr-block": "10.0.0.0/16",
                "ipv4-prefixes": ["10.0.0.128/28"],
                "ipv6s": list(RICH_IPV6),
                "ipv6-prefixes": ["2408:4000:1000:100:1::/80"],
                "ipv6-gateway": "2408:4000:1000:100::1",
                "vswitch-ipv6-cidr-block": "2408:4000:1000:100::/64",
                "vpc-ipv6-cidr-blocks": ["2408:4000:1000::/56"],
            },
            {
                "mac": SECOND_MAC,
                "network-interface-id": "eni-rich0002",
                "vpc-id": VPC,
                "vswitch-id": "vsw-rich0002",
                "private-ipv4s": [RICH_SECOND_NIC_IP],
                "vswitch-cidr-block": "10.0.1.0/24",
                "vpc-cidr-block": "10.0.0.0/16",
                "netmask": "255.255.255.0",
                "gateway": "10.0.1.1",
            },
        ],
        "disks": [
            {"serial": "bp1disk0002", "id": "d-bp1disk0002", "name": "data"},
            {"serial": "bp1disk0001", "id": "d-bp1disk0001"},
        ],
        "public-keys": {
            "zeta": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIZeta zeta@host",
            "alpha": "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQAlpha alpha@host",
        },
        "tags": {**HIDDEN_TAGS, **EXPOSED_TAGS},
        "user-data": USER_DATA,
        "vendor-data-base64": base64.b64encode(VENDOR_DATA).decode(),
        "metadata-options": {"instance-metadata-tags": "enabled",
                             "http-put-response-hop-limit": 3},
        "extra": {"custom/owner": "qa", "instance/custom-item": "x", "zz-top": "last"},
        "spot-termination-time": "2020-04-07T17:03:00Z",
        "events": copy.deepcopy(EVENTS),
    }


def _nic(mac: str, eni: str, ip: str, vpc: str = VPC) -> dict[str, Any]:
    return {"mac": mac, "network-interface-id": eni, "vpc-id": vpc, "vswitch-id": "vsw-rich0001",
            "private-ipv4s": [ip], "vswitch-cidr-block": "10.0.0.0/24",
            "vpc-cidr-block": "10.0.0.0/16"}


def plain_doc() -> dict[str, Any]:
    """None of the optional items; it has tags, but does not expose them."""
    return {"instance-id": PLAIN_ID,
            "network-interfaces": [_nic("00:16:3e:0a:00:20", "eni-plain0001", PLAIN_IP)],
            "tags": {"env": "hidden-because-tags-are-disabled"}}


def hardened_doc() -> dict[str, Any]:
    return {"instance-id": HARDENED_ID,
            "network-interfaces": [_nic("00:16:3e:0a:00:30", "eni-hard0001", HARDENED_IP)],
            "metadata-options": {"http-tokens": "required",
                                 "http-put-response-hop-limit": 5}}


def disabled_doc() -> dict[str, Any]:
    return {"instance-id": DISABLED_ID,
            "network-interfaces": [_nic("00:16:3e:0a:00:40", "eni-off0001", DISABLED_IP)],
            "metadata-options": {"http-endpoint": "disabled"}}


def other_vpc_doc() -> dict[str, Any]:
    return {"instance-id": OTHER_VPC_ID, "instance-type": "ecs.c7.xlarge",
            "network-interfaces": [_nic("00:16:3e:0b:00:10", "eni-other0001", OTHER_VPC_IP,
                                        vpc=OTHER_VPC)]}


def fleet_doc() -> dict[str, Any]:
    return {"defaults": defaults_doc(),
            "instances": [rich_doc(), plain_doc(), hardened_doc(), disabled_doc(),
                          other_vpc_doc()]}


# ---------------------------------------------------------------------------------------
# Snapshots without a store
# ---------------------------------------------------------------------------------------
CREDENTIALS_BODY = (b'{"AccessKeyId":"STS.test","AccessKeySecret":"s","Expiration":'
                    b'"2027-01-15T14:00:00Z","SecurityToken":"t","LastUpdated":'
                    b'"2027-01-15T08:00:00Z","Code":"Success"}')
PKCS7_BODY = b"MIIBfixedpkcs7"


@dataclass
class Response:
    """What a client would get for a verdict, with fixed stand-ins for the secrets."""

    status: int
    body: bytes
    content_type: bytes = TEXT
    headers: Headers = ()
    hop_limit: int | None = None


def answer(verdict: Verdict, snap: Snapshot, now: float = NOW) -> Response:
    """A verdict as the data plane would answer it: tokens minted with the snapshot's key
    ring, RAM credentials and signatures as the fixed bodies above."""
    if isinstance(verdict, Leaf):
        return Response(200, verdict.body, verdict.content_type)
    if isinstance(verdict, Refuse):
        return Response(verdict.status, REASONS[verdict.status].encode(), TEXT, verdict.headers)
    if isinstance(verdict, MintToken):
        token = snap.key_ring.mint(verdict.instance_id, int(now), verdict.ttl)
        return Response(200, token.encode(), TEXT,
                        ((b"X-aliyun-ecs-metadata-token-ttl-seconds",
                          str(verdict.ttl).encode()),), verdict.hop_limit)
    if isinstance(verdict, NeedCredentials):
        return Response(200, CREDENTIALS_BODY, JSON)
    assert isinstance(verdict, NeedSignature)
    return Response(200, PKCS7_BODY, TEXT)


def key_ring(*secrets: bytes, created_at: int = NOW - 100) -> KeyRing:
    secrets = secrets or (b"k" * 32,)
    return KeyRing([TokenKey(kid, s, created_at + kid) for kid, s in enumerate(secrets, 1)])


def snapshot_of(doc: dict[str, Any] | None = None, ring: KeyRing | None = None,
                version: int = 1) -> Snapshot:
    """The snapshot the data plane would serve for a fleet document."""
    fleet = Fleet.from_doc(fleet_doc() if doc is None else doc)
    pool = Pool()
    pairs = [(render(effective(i, fleet.defaults), pool), tuple(i.addresses()))
             for i in fleet.instances]
    by_address, by_id = index(pairs)
    return Snapshot(version=version, by_address=by_address, by_id=by_id,
                    key_ring=ring or key_ring())


def rendered(instance: dict[str, Any], defaults: dict[str, Any] | None = None) -> Rendered:
    fleet = Fleet.from_doc({"defaults": defaults_doc() if defaults is None else defaults,
                            "instances": [instance]})
    return render(effective(fleet.instances[0], fleet.defaults))


def getter(snap: Snapshot, instance_id: str, headers: dict[str, str] | None = None,
           now: float = NOW) -> Callable[[str], Response]:
    caller = snap.by_id[instance_id]
    return lambda path: answer(decide(Request.of("GET", path, "", headers), caller, snap, now),
                               snap, now)


def crawl(get: Callable[[str], Response], base: str,
          skip: Callable[[str], bool] = lambda path: False) -> dict[str, Any]:
    """Walk a directory through GETs the way cloud-init ≤ 22 does: a name ending in `/` is a
    directory. Returns the tree as `meta-data/all` shapes it. Asserts what SPEC §2 promises
    of every listing on the way: 200, no trailing newline, every child answers 200."""
    resp = get(base)
    assert resp.status == 200, (base, resp.status)
    assert not resp.body.endswith(b"\n"), base
    tree: dict[str, Any] = {}
    if not resp.body:
        return tree
    for name in resp.body.decode().split("\n"):
        assert name and name != "/", (base, resp.body)
        path = base + name
        if name.endswith("/"):
            tree[name[:-1]] = crawl(get, path, skip)
        elif not skip(path):
            child = get(path)
            assert child.status == 200, (path, child.status)
            tree[name] = child.body.decode()
    return tree


# ---------------------------------------------------------------------------------------
# Random instances for property tests
# ---------------------------------------------------------------------------------------
_segment = st.from_regex(r"[a-z][a-z0-9-]{0,6}", fullmatch=True)
_value = st.text(st.characters(blacklist_characters="\r\n\0", blacklist_categories=("Cs",)),
                 min_size=1, max_size=10)


def _no_prefix_clash(paths: list[str]) -> bool:
    return not any(q.startswith(p + "/") for p in paths for q in paths)


# A tag key: any text but control characters (SPEC §9 refuses those in names).
_name = st.text(st.characters(blacklist_categories=("Cc", "Cs"),
                              blacklist_characters="\u2028\u2029"), max_size=6)


@st.composite
def instance_docs(draw: st.DrawFn) -> dict[str, Any]:
    """Random instances: weird tag keys, extra items nested in the catalogue's directories,
    disks, keys, with or without a role and events."""
    doc = plain_doc() | {"metadata-options": {"instance-metadata-tags": "enabled"}}
    doc["tags"] = draw(st.dictionaries(_name, _value, max_size=5))
    doc["public-keys"] = draw(st.dictionaries(_segment, _value, max_size=3))
    doc["disks"] = [{"serial": s, "id": f"d-{s.replace('-', '')}x"}
                    for s in draw(st.sets(_segment, max_size=3))]
    paths = draw(st.lists(st.builds(lambda top, rest: "/".join([top, *rest]),
                                    st.sampled_from(["x", "instance", "dns-conf", "image"]),
                                    st.lists(_segment, min_size=1, max_size=3)),
                          max_size=5, unique=True).filter(_no_prefix_clash))
    doc["extra"] = {p: draw(_value) for p in paths
                    if p not in ("dns-conf/nameservers",) and not p.startswith(
                        "dns-conf/nameservers/")}
    if draw(st.booleans()):
        doc["ram-role"] = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,10}",
                                             fullmatch=True))
    if draw(st.booleans()):
        doc["events"] = EVENTS[:1]
    return doc
