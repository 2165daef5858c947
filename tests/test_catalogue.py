"""Instance → metadata tree (SPEC §2-3): every catalogue item, listings, `all`, the document."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecs_imds.errors import ValidationError
from ecs_imds.protocol.catalogue import (
    JSON,
    OCTET,
    TEXT,
    Dynamic,
    Leaf,
    Pool,
    Rendered,
    check_renders,
    check_serves,
    exposable_tag,
    render,
)
from ecs_imds.protocol.model import Fleet, FleetDefaults, Instance, effective
from fleets import (
    EVENTS,
    EXPOSED_TAGS,
    HIDDEN_TAGS,
    PLAIN_ID,
    PRIMARY_MAC,
    RICH_ID,
    ROLE,
    SECOND_MAC,
    USER_DATA,
    VENDOR_DATA,
    defaults_doc,
    fleet_doc,
    instance_docs,
    plain_doc,
    rendered,
    rich_doc,
)


@pytest.fixture(scope="module")
def rich() -> Rendered:
    return rendered(rich_doc())


@pytest.fixture(scope="module")
def plain() -> Rendered:
    return rendered(plain_doc())


def body(r: Rendered, path: str) -> str:
    entry = r.entries[path]
    assert isinstance(entry, Leaf), path
    return entry.body.decode()


def listing(r: Rendered, path: str) -> list[str]:
    text = body(r, path)
    assert not text.endswith("\n")
    return text.split("\n") if text else []


P = f"meta-data/network/interfaces/macs/{PRIMARY_MAC}"
S = f"meta-data/network/interfaces/macs/{SECOND_MAC}"

# Every leaf of SPEC §3 for the rich instance, with the exact body it serves.
CATALOGUE = {
    "instance-id": RICH_ID,
    "instance/instance-name": "iZbp1bfqfsvqzxhmnd5001",
    "instance/instance-type": "ecs.g6e.large",
    "instance/spot/termination-time": "2020-04-07T17:03:00Z",
    "instance/virtualization-solution": "ECS Virt",
    "instance/virtualization-solution-version": "2.0",
    "instance/max-netbw-egress": "1228800",
    "instance/max-netbw-ingress": "1228800",
    "instance/last-host-landing-time": "2024-11-17 10:02:41",
    "hostname": "iZbp13znx0m0me8cquu001Z",
    "serial-number": "4acd2b47-b328-4762-852f-998f1a2c3b4d",
    "region-id": "cn-hangzhou",
    "zone-id": "cn-hangzhou-i",
    "owner-account-id": "1609000000000001",
    "image-id": "aliyun_3_x64_20G_alibase_20210425.vhd",
    "image/market-place/product-code": "cmjj012345",
    "image/market-place/charge-type": "PrePaid",
    "network-type": "vpc",
    "vpc-id": "vpc-rich0001",
    "vpc-cidr-block": "10.0.0.0/16",
    "vswitch-id": "vsw-rich0001",
    "vswitch-cidr-block": "10.0.0.0/24",
    "mac": PRIMARY_MAC,
    "private-ipv4": "10.0.0.10",
    "sub-private-ipv4-list": "10.0.0.11\r\n10.0.0.12",
    "public-ipv4": "47.96.0.11",
    "eipv4": "47.96.0.12",
    "disks/bp1disk0001/id": "d-bp1disk0001",
    "disks/bp1disk0002/id": "d-bp1disk0002",
    "disks/bp1disk0002/name": "data",
    "public-keys/alpha/openssh-key": "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQAlpha alpha@host",
    "public-keys/zeta/openssh-key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIZeta zeta@host",
    "dns-conf/nameservers": "100.100.2.136\r\n100.100.2.138",
    "ntp-conf/ntp-servers": "ntp1.aliyun.com\r\nntp2.aliyun.com",
    "source-address": "http://mirrors.cloud.aliyuncs.com",
    "kms-server": "kms.cn-hangzhou.aliyuncs.com",
    "wsus-server/wu-server": "http://update.cn-hangzhou.aliyuncs.com",
    "wsus-server/wu-status-server": "http://update-status.cn-hangzhou.aliyuncs.com",
    "hibernation/configured": "true",
    "launch-index": "2",
    "tags/instance/Team": "platform",
    "tags/instance/env": "prod",
    "tags/instance/z.dot_ok-1": "v",
    "tags/instance/a+b=c,d:e@f": "x",
    "tags/instance/...": "three periods",
    "tags/instance/" + "k" * 128: "longest",
    "ram/security-credentials": ROLE,
    # extra items: fleet-wide, overridden per instance, and the instance's own
    "custom/fleet": "everyone",
    "custom/owner": "qa",
    "instance/custom-item": "x",
    "zz-top": "last",
    # the primary interface, with IPv6
    f"{P.removeprefix('meta-data/')}/network-interface-id": "eni-rich0001",
    f"{P.removeprefix('meta-data/')}/vpc-id": "vpc-rich0001",
    f"{P.removeprefix('meta-data/')}/vswitch-id": "vsw-rich0001",
    f"{P.removeprefix('meta-data/')}/primary-ip-address": "10.0.0.10",
    f"{P.removeprefix('meta-data/')}/private-ipv4s": '["10.0.0.10","10.0.0.11","10.0.0.12"]',
    f"{P.removeprefix('meta-data/')}/netmask": "255.255.255.0",
    f"{P.removeprefix('meta-data/')}/gateway": "10.0.0.253",
    f"{P.removeprefix('meta-data/')}/vswitch-cidr-block": "10.0.0.0/24",
    f"{P.removeprefix('meta-data/')}/vpc-cidr-block": "10.0.0.0/16",
    f"{P.removeprefix('meta-data/')}/ipv4-prefixes": '["10.0.0.128/28"]',
    f"{P.removeprefix('meta-data/')}/ipv6s": "[2408:4000:1000:100::10,2408:4000:1000:100::11]",
    f"{P.removeprefix('meta-data/')}/ipv6-prefixes": "[2408:4000:1000:100:1::/80]",
    f"{P.removeprefix('meta-data/')}/ipv6-gateway": "2408:4000:1000:100::1",
    f"{P.removeprefix('meta-data/')}/vswitch-ipv6-cidr-block": "2408:4000:1000:100::/64",
    f"{P.removeprefix('meta-data/')}/vpc-ipv6-cidr-blocks": "[2408:4000:1000::/56]",
    # the second interface, IPv4 only, with its own netmask and gateway
    f"{S.removeprefix('meta-data/')}/network-interface-id": "eni-rich0002",
    f"{S.removeprefix('meta-data/')}/vpc-id": "vpc-rich0001",
    f"{S.removeprefix('meta-data/')}/vswitch-id": "vsw-rich0002",
    f"{S.removeprefix('meta-data/')}/primary-ip-address": "10.0.1.20",
    f"{S.removeprefix('meta-data/')}/private-ipv4s": '["10.0.1.20"]',
    f"{S.removeprefix('meta-data/')}/netmask": "255.255.255.0",
    f"{S.removeprefix('meta-data/')}/gateway": "10.0.1.1",
    f"{S.removeprefix('meta-data/')}/vswitch-cidr-block": "10.0.1.0/24",
    f"{S.removeprefix('meta-data/')}/vpc-cidr-block": "10.0.0.0/16",
}


@pytest.mark.parametrize(("path", "value"), CATALOGUE.items(), ids=list(CATALOGUE))
def test_every_catalogue_item(rich: Rendered, path: str, value: str) -> None:
    assert body(rich, f"meta-data/{path}") == value


def test_catalogue_covers_every_leaf(rich: Rendered) -> None:
    """No leaf under meta-data/ is left out of CATALOGUE (and so untested)."""
    leaves = {p.removeprefix("meta-data/") for p, e in rich.entries.items()
              if p.startswith("meta-data/") and p != "meta-data/all"
              and (isinstance(e, Dynamic) or not is_listing(rich, p))}
    assert leaves == set(CATALOGUE) - {"ram/security-credentials"} | {
        f"ram/security-credentials/{ROLE}"}


def is_listing(r: Rendered, path: str) -> bool:
    return path in walk(r)[0]


def walk(r: Rendered) -> tuple[set[str], set[str]]:
    """(directories, leaves) reachable from the version root through listings."""
    dirs, leaves, todo = set(), set(), [""]
    while todo:
        path = todo.pop()
        dirs.add(path)
        for name in listing(r, path):
            child = f"{path}/{name}" if path else name
            if name.endswith("/"):
                todo.append(child[:-1])
            else:
                leaves.add(child)
    return dirs, leaves


def test_leaves_are_utf8_text_without_trailing_newline(rich: Rendered) -> None:
    for path, entry in rich.entries.items():
        if isinstance(entry, Leaf) and path not in ("user-data", "vendor-data"):
            assert not entry.body.endswith(b"\n"), path
            entry.body.decode()


def test_content_types(rich: Rendered) -> None:
    types = {p: e.content_type for p, e in rich.entries.items() if isinstance(e, Leaf)}
    assert types.pop("meta-data/all") == JSON
    assert types.pop("dynamic/instance-identity/document") == JSON
    assert types.pop("maintenance/active-system-events") == TEXT
    assert types.pop("user-data") == OCTET
    assert types.pop("vendor-data") == OCTET
    assert set(types.values()) == {TEXT}


def test_dynamic_entries(rich: Rendered, plain: Rendered) -> None:
    assert rich.entries[f"meta-data/ram/security-credentials/{ROLE}"] == Dynamic(
        "credentials", ROLE)
    assert rich.entries["dynamic/instance-identity/pkcs7"] == Dynamic("pkcs7")
    assert plain.entries["dynamic/instance-identity/pkcs7"] == Dynamic("pkcs7")
    assert rich.role == ROLE
    assert plain.role is None


def test_user_data_and_vendor_data_are_raw_bytes(rich: Rendered) -> None:
    assert rich.entries["user-data"] == Leaf(USER_DATA.encode(), OCTET)
    assert rich.entries["vendor-data"] == Leaf(VENDOR_DATA, OCTET)


def test_active_system_events(rich: Rendered, plain: Rendered) -> None:
    events = json.loads(body(rich, "maintenance/active-system-events"))
    assert events == [EVENTS[0], EVENTS[1] | {"Reason": ""}]
    assert all(list(e) == ["EventId", "EventType", "EventCycleStatus", "NotBefore", "Reason"]
               for e in events)
    assert listing(rich, "maintenance") == ["active-system-events"]
    assert "maintenance/active-system-events" not in plain.entries
    assert listing(plain, "maintenance") == []


# --- listings ---------------------------------------------------------------------------
def test_version_listing(rich: Rendered, plain: Rendered) -> None:
    assert listing(rich, "") == ["dynamic/", "maintenance/", "meta-data/", "user-data",
                                 "vendor-data"]
    assert listing(plain, "") == ["dynamic/", "maintenance/", "meta-data/"]
    assert listing(rich, "dynamic") == ["instance-identity/"]
    assert listing(rich, "dynamic/instance-identity") == ["document", "pkcs7"]


def test_meta_data_listing_follows_the_catalogue_then_alphabetical(rich: Rendered) -> None:
    assert listing(rich, "meta-data") == [
        "instance-id", "instance/", "hostname", "serial-number", "region-id", "zone-id",
        "owner-account-id", "image-id", "image/", "network-type", "vpc-id", "vpc-cidr-block",
        "vswitch-id", "vswitch-cidr-block", "mac", "private-ipv4", "sub-private-ipv4-list",
        "public-ipv4", "eipv4", "network/", "disks/", "public-keys/", "dns-conf/",
        "ntp-conf/", "source-address", "kms-server", "wsus-server/", "hibernation/",
        "launch-index", "tags/", "ram/",
        "custom/", "zz-top",  # extra items, after the catalogue, alphabetical
    ]
    assert listing(rich, "meta-data/instance") == [
        "instance-name", "instance-type", "spot/", "virtualization-solution",
        "virtualization-solution-version", "max-netbw-egress", "max-netbw-ingress",
        "last-host-landing-time", "custom-item"]
    assert listing(rich, "meta-data/image") == ["market-place/"]
    assert listing(rich, "meta-data/image/market-place") == ["product-code", "charge-type"]


def test_interface_listings(rich: Rendered) -> None:
    assert listing(rich, "meta-data/network") == ["interfaces/"]
    assert listing(rich, "meta-data/network/interfaces") == ["macs/"]
    assert listing(rich, "meta-data/network/interfaces/macs") == [f"{SECOND_MAC}/",
                                                                   f"{PRIMARY_MAC}/"]
    ipv4 = ["network-interface-id", "vpc-id", "vswitch-id", "primary-ip-address",
            "private-ipv4s", "netmask", "gateway", "vswitch-cidr-block", "vpc-cidr-block"]
    assert listing(rich, P) == [*ipv4, "ipv4-prefixes", "ipv6s", "ipv6-prefixes",
                                "ipv6-gateway", "vswitch-ipv6-cidr-block",
                                "vpc-ipv6-cidr-blocks"]
    assert listing(rich, S) == ipv4  # no IPv6 items outside an IPv6 VPC


def test_sorted_listings(rich: Rendered) -> None:
    assert listing(rich, "meta-data/disks") == ["bp1disk0001/", "bp1disk0002/"]
    assert listing(rich, "meta-data/disks/bp1disk0001") == ["id"]  # no name given
    assert listing(rich, "meta-data/disks/bp1disk0002") == ["id", "name"]
    assert listing(rich, "meta-data/public-keys") == ["alpha/", "zeta/"]
    assert listing(rich, "meta-data/public-keys/zeta") == ["openssh-key"]
    assert listing(rich, "meta-data/custom") == ["fleet", "owner"]
    assert listing(rich, "meta-data/ram") == ["security-credentials/"]
    assert listing(rich, "meta-data/ram/security-credentials") == [ROLE]


# --- tags -----------------------------------------------------------------------------------
def test_only_exposable_tags_are_served(rich: Rendered) -> None:
    assert listing(rich, "meta-data/tags") == ["instance/"]
    assert listing(rich, "meta-data/tags/instance") == sorted(EXPOSED_TAGS)
    served = {p for p in rich.entries if p.startswith("meta-data/tags/instance/")}
    assert served == {f"meta-data/tags/instance/{k}" for k in EXPOSED_TAGS}
    all_tags = json.loads(body(rich, "meta-data/all"))["tags"]["instance"]
    assert all_tags == EXPOSED_TAGS
    for value in HIDDEN_TAGS.values():
        assert value.encode() not in rich.entries["meta-data/all"].body  # type: ignore[union-attr]


def test_tags_need_instance_metadata_tags_enabled(plain: Rendered) -> None:
    assert "meta-data/tags" not in plain.entries
    assert "tags/" not in listing(plain, "meta-data")
    doc = rich_doc()
    doc["metadata-options"]["instance-metadata-tags"] = "disabled"
    assert "meta-data/tags" not in rendered(doc).entries


def test_no_tags_directory_when_no_tag_is_exposable() -> None:
    doc = rich_doc()
    doc["tags"] = dict(HIDDEN_TAGS)
    r = rendered(doc)
    assert "meta-data/tags" not in r.entries
    assert "tags/" not in listing(r, "meta-data")
    assert "tags" not in json.loads(body(r, "meta-data/all"))


@pytest.mark.parametrize("key", list(HIDDEN_TAGS))
def test_hidden_tag_keys(key: str) -> None:
    assert not exposable_tag(key)


_ALLOWED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-=.,_:@"


@given(st.one_of(st.text(), st.text(_ALLOWED, max_size=130)))
def test_exposable_tag_is_exactly_the_spec_rule(key: str) -> None:
    expected = (1 <= len(key) <= 128 and all(c in _ALLOWED for c in key)
                and key not in (".", ".."))
    assert exposable_tag(key) is expected


# --- items an instance does not have --------------------------------------------------------
ABSENT_FROM_PLAIN = ["instance/spot", "instance/last-host-landing-time", "image",
                     "sub-private-ipv4-list", "public-ipv4", "eipv4", "disks", "public-keys",
                     "kms-server", "wsus-server", "tags", "ram"]


@pytest.mark.parametrize("item", ABSENT_FROM_PLAIN)
def test_absent_items_are_not_served_nor_listed(plain: Rendered, item: str) -> None:
    assert f"meta-data/{item}" not in plain.entries
    parent, _, name = f"meta-data/{item}".rpartition("/")
    names = listing(plain, parent)
    assert name not in names and f"{name}/" not in names


def test_plain_instance_gets_defaults_and_builtins(plain: Rendered) -> None:
    assert body(plain, "meta-data/hostname") == "iZplain0001Z"
    assert body(plain, "meta-data/instance/instance-name") == "iZplain0001Z"
    assert body(plain, "meta-data/hibernation/configured") == "false"
    assert body(plain, "meta-data/launch-index") == "0"
    assert body(plain, "meta-data/instance/virtualization-solution") == "ECS Virt"
    assert body(plain, "meta-data/network-type") == "vpc"
    iface = "meta-data/network/interfaces/macs/00:16:3e:0a:00:20"
    assert "ipv6s" not in listing(plain, iface)
    assert "ipv4-prefixes" not in listing(plain, iface)


def test_builtin_dns_and_ntp_when_nobody_sets_them() -> None:
    defaults = {k: v for k, v in defaults_doc().items()
                if k not in ("dns-nameservers", "ntp-servers", "source-address")}
    r = rendered(plain_doc(), defaults)
    assert body(r, "meta-data/dns-conf/nameservers") == "100.100.2.136\r\n100.100.2.138"
    assert body(r, "meta-data/ntp-conf/ntp-servers") == (
        "ntp1.aliyun.com\r\nntp2.aliyun.com\r\nntp3.aliyun.com")
    assert body(r, "meta-data/source-address") == "http://mirrors.cloud.aliyuncs.com"


def test_charge_type_only_with_a_product_code() -> None:
    doc = rich_doc()
    del doc["image-charge-type"]
    assert listing(rendered(doc), "meta-data/image/market-place") == ["product-code"]


def test_wsus_with_only_one_server() -> None:
    doc = rich_doc()
    del doc["wsus-server"]
    assert listing(rendered(doc), "meta-data/wsus-server") == ["wu-status-server"]


def test_single_private_ip_has_no_sub_list_and_ipv6_without_gateway() -> None:
    doc = rich_doc()
    nic = doc["network-interfaces"][0]
    nic["private-ipv4s"] = nic["private-ipv4s"][:1]
    del nic["ipv6-gateway"], nic["ipv6-prefixes"], nic["ipv4-prefixes"]
    r = rendered(doc)
    assert "meta-data/sub-private-ipv4-list" not in r.entries
    assert listing(r, P)[-3:] == ["ipv6s", "vswitch-ipv6-cidr-block", "vpc-ipv6-cidr-blocks"]


def test_role_from_the_fleet_defaults() -> None:
    r = rendered(plain_doc(), defaults_doc() | {"ram-role": "FleetRole"})
    assert listing(r, "meta-data/ram/security-credentials") == ["FleetRole"]
    assert r.role == "FleetRole"


# --- meta-data/all and the identity document -------------------------------------------------
def tree_from_entries(r: Rendered, path: str) -> dict[str, Any]:
    """The meta-data tree rebuilt from listings and leaves (not from `all`)."""
    out: dict[str, Any] = {}
    for name in listing(r, path):
        child = f"{path}/{name.rstrip('/')}"
        if name.endswith("/"):
            out[name[:-1]] = tree_from_entries(r, child)
        elif isinstance(r.entries[child], Leaf):
            out[name] = body(r, child)
    return out


@pytest.mark.parametrize("make", [rich_doc, plain_doc])
def test_all_is_the_meta_data_tree_minus_credentials(make: Any) -> None:
    r = rendered(make())
    everything = json.loads(body(r, "meta-data/all"))
    assert everything == tree_from_entries(r, "meta-data")
    assert list(everything) == [n.rstrip("/") for n in listing(r, "meta-data")]
    if make is rich_doc:
        assert everything["ram"] == {"security-credentials": {}}
    assert "all" not in listing(r, "meta-data")


def test_all_keeps_non_ascii_as_is() -> None:
    doc = plain_doc() | {"instance-name": "网站-1"}
    r = rendered(doc)
    assert "网站-1".encode() in r.entries["meta-data/all"].body  # type: ignore[union-attr]
    assert json.loads(body(r, "meta-data/all"))["instance"]["instance-name"] == "网站-1"


def test_identity_document(rich: Rendered) -> None:
    doc = rich.entries["dynamic/instance-identity/document"]
    assert isinstance(doc, Leaf) and doc.body == rich.document
    assert rich.document == (
        b'{"zone-id":"cn-hangzhou-i","serial-number":"4acd2b47-b328-4762-852f-998f1a2c3b4d",'
        b'"instance-id":"i-bp13znx0m0me8cquu001","region-id":"cn-hangzhou",'
        b'"private-ipv4":"10.0.0.10","owner-account-id":"1609000000000001",'
        b'"mac":"00:16:3e:0a:00:01","image-id":"aliyun_3_x64_20G_alibase_20210425.vhd",'
        b'"instance-type":"ecs.g6e.large"}')


def test_rendered_carries_what_access_needs(rich: Rendered) -> None:
    assert rich.instance_id == RICH_ID
    assert rich.vpc_id == "vpc-rich0001"
    assert rich.options.hop_limit == 3
    assert rich.options.tags_exposed
    assert not rich.options.tokens_required


# --- extra items ------------------------------------------------------------------------------
def test_extra_item_may_replace_a_builtin_leaf() -> None:
    r = rendered(plain_doc() | {"extra": {"source-address": "http://mirror.example"}})
    assert body(r, "meta-data/source-address") == "http://mirror.example"
    assert listing(r, "meta-data").count("source-address") == 1


@pytest.mark.parametrize(("path", "reason"), [
    ("instance-id/sub", "instance-id is an item, not a directory"),
    ("network", "is a directory, not an item"),
    ("dns-conf/nameservers/x", "dns-conf/nameservers is an item"),
])
def test_extra_item_colliding_with_the_tree_is_refused(path: str, reason: str) -> None:
    doc = plain_doc() | {"extra": {path: "v"}}
    inst = Instance.from_doc(doc)
    fleet = Fleet.from_doc({"defaults": defaults_doc(), "instances": [doc]})
    with pytest.raises(ValidationError) as info:
        check_renders(inst, effective(inst, fleet.defaults))
    assert info.value.field == f"instance {PLAIN_ID}.extra.{path}"
    assert reason in info.value.message


@pytest.mark.parametrize("missing", ["region-id", "zone-id", "owner-account-id", "image-id",
                                     "instance-type"])
def test_required_values_missing_everywhere_are_named(missing: str) -> None:
    defaults = defaults_doc()
    del defaults[missing]
    fleet = Fleet.from_doc({"defaults": defaults, "instances": [plain_doc()]})
    inst = fleet.instances[0]
    with pytest.raises(ValidationError) as info:
        check_renders(inst, effective(inst, fleet.defaults))
    assert info.value.field == f"instance {PLAIN_ID}.{missing}"
    # ... and the instance may set it itself
    doc = plain_doc() | {missing: defaults_doc()[missing]}
    rendered(doc, defaults)


_REQUIRED = ["instance-type", "region-id", "zone-id", "owner-account-id", "image-id"]


def _outcome(check: Any) -> tuple[str, str] | None:
    try:
        check()
    except ValidationError as exc:
        return exc.field, exc.message
    return None


@given(instance_docs(), st.sets(st.sampled_from(_REQUIRED)), st.sets(st.sampled_from(_REQUIRED)),
       st.booleans(), st.booleans())
def test_the_cheap_check_refuses_what_rendering_refuses(
        doc: dict[str, Any], unset: set[str], own: set[str], own_extra: bool,
        fleet_extra: bool) -> None:
    """check_serves (an import's check of each instance) raises exactly the error building
    the tree would, or none when it builds: required values missing in any combination of
    instance and defaults, with and without extra items on either."""
    defaults = defaults_doc()
    if not fleet_extra:
        del defaults["extra"]
    for name in unset:
        del defaults[name]
    doc |= {name: defaults_doc()[name] for name in own}
    if not own_extra:
        doc.pop("extra", None)
    inst, fleet = Instance.from_doc(doc), FleetDefaults.from_doc(defaults)
    rendering = _outcome(lambda: check_renders(inst, effective(inst, fleet)))
    assert _outcome(lambda: check_serves(inst, fleet)) == rendering
    if not (own_extra or fleet_extra):  # then a missing value is all that can stop it
        assert (rendering is None) == (unset <= own)


def test_pool_shares_equal_leaves_across_instances() -> None:
    fleet = Fleet.from_doc(fleet_doc())
    pool = Pool()
    a, b = (render(effective(i, fleet.defaults), pool) for i in fleet.instances[1:3])
    assert a.entries["meta-data/region-id"] is b.entries["meta-data/region-id"]
    assert a.entries["meta-data/instance-id"] != b.entries["meta-data/instance-id"]


# --- property: listings and entries agree -------------------------------------------------------
@given(instance_docs())
def test_listings_and_entries_agree(doc: dict[str, Any]) -> None:
    r = rendered(doc)
    dirs, leaves = walk(r)  # asserts every listing has no trailing newline
    assert dirs.isdisjoint(leaves)
    for path in dirs:
        assert isinstance(r.entries[path], Leaf)
    for path in leaves:
        assert path in r.entries, path
        assert not any(p.startswith(path + "/") for p in r.entries), path
    # every path is reachable from the listings, and only `all` is not listed
    assert set(r.entries) == dirs | leaves | {"meta-data/all"}
    assert json.loads(body(r, "meta-data/all")) == tree_from_entries(r, "meta-data")
