"""The records of a fleet: strict parsing of operator input, canonical write-back, defaults."""

from __future__ import annotations

import base64
import ipaddress
import uuid
from dataclasses import replace
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from ecs_imds.control.fleet import dump
from ecs_imds.errors import ValidationError
from ecs_imds.protocol.model import (
    USER_DATA_LIMIT,
    Fleet,
    FleetDefaults,
    Instance,
    MetadataOptions,
    NetworkInterface,
    SystemEvent,
    check_unique,
    effective,
)
from fleets import (
    HARDENED_ID,
    PRIMARY_MAC,
    RICH_ID,
    RICH_IP,
    RICH_IPV6,
    VENDOR_DATA,
    VPC,
    defaults_doc,
    fleet_doc,
    other_vpc_doc,
    plain_doc,
    rich_doc,
)


def parse_fails(doc: Any, field: str, *, fleet: bool = False) -> ValidationError:
    """Parsing `doc` fails, and the error names `field` (the dotted path of the bad value)."""
    with pytest.raises(ValidationError) as info:
        Fleet.from_doc(doc) if fleet else Instance.from_doc(doc)
    assert info.value.field == field, str(info.value)
    assert str(info.value).startswith(field + ": ")
    return info.value


# --- the rich instance ---------------------------------------------------------------------
def test_rich_instance_parses_every_field() -> None:
    inst = Instance.from_doc(rich_doc())
    assert inst.instance_id == RICH_ID
    assert inst.vpc_id == VPC
    assert inst.primary.mac == PRIMARY_MAC
    assert inst.primary.primary_ip == RICH_IP
    assert len(inst.network_interfaces) == 2
    assert inst.values.ram_role == "EcsRamRoleTest"
    assert inst.values.hibernation_configured is True
    assert inst.launch_index == 2
    assert inst.user_data == b"#cloud-config\nhostname: rich\n"
    assert inst.vendor_data == VENDOR_DATA
    assert inst.spot_termination_time == "2020-04-07T17:03:00Z"
    assert [e.event_id for e in inst.events] == ["e-bp1event0001", "e-bp1event0002"]
    assert inst.events[1].reason == ""
    assert "" in inst.tags and "a/b" in inst.tags  # stored, even though never exposed
    assert [d.serial for d in inst.disks] == ["bp1disk0002", "bp1disk0001"]


def test_addresses_are_every_ipv4_and_normalised_ipv6() -> None:
    doc = rich_doc()
    doc["network-interfaces"][0]["ipv6s"] = ["2408:4000:1000:100:0:0:0:10"]
    inst = Instance.from_doc(doc)
    assert list(inst.addresses()) == [RICH_IP, "10.0.0.11", "10.0.0.12",
                                      "2408:4000:1000:100::10", "10.0.1.20"]


@pytest.mark.parametrize("make", [rich_doc, plain_doc, other_vpc_doc])
def test_to_doc_round_trips(make: Any) -> None:
    inst = Instance.from_doc(make())
    again = Instance.from_doc(inst.to_doc())
    assert again == inst
    assert again.to_doc() == inst.to_doc()


def test_to_doc_is_canonical() -> None:
    """Binary data is written as base64, text as text; empty and default values are left out."""
    doc = Instance.from_doc(rich_doc()).to_doc()
    assert doc["vendor-data-base64"] == base64.b64encode(VENDOR_DATA).decode()
    assert "vendor-data" not in doc
    assert doc["user-data"] == "#cloud-config\nhostname: rich\n"
    plain = Instance.from_doc(plain_doc()).to_doc()
    assert set(plain) == {"instance-id", "network-interfaces", "tags"}
    assert next(iter(doc)) == "instance-id"


def test_user_data_given_as_base64_text_comes_back_as_text() -> None:
    doc = plain_doc()
    doc["user-data-base64"] = base64.b64encode(b"#!/bin/sh\necho hi\n").decode()
    inst = Instance.from_doc(doc)
    assert inst.user_data == b"#!/bin/sh\necho hi\n"
    assert inst.to_doc()["user-data"] == "#!/bin/sh\necho hi\n"


def test_empty_user_data_is_kept_not_dropped() -> None:
    doc = plain_doc()
    doc["user-data"] = ""
    inst = Instance.from_doc(doc)
    assert inst.user_data == b""
    assert Instance.from_doc(inst.to_doc()).user_data == b""


def test_user_data_limit_is_16_kib_after_decoding() -> None:
    doc = plain_doc()
    doc["user-data-base64"] = base64.b64encode(b"\xff" * USER_DATA_LIMIT).decode()
    assert Instance.from_doc(doc).user_data == b"\xff" * USER_DATA_LIMIT
    doc["user-data-base64"] = base64.b64encode(b"\xff" * (USER_DATA_LIMIT + 1)).decode()
    parse_fails(doc, "instance i-plain0001.user-data")
    doc = plain_doc()
    doc["vendor-data"] = "x" * (USER_DATA_LIMIT + 1)
    parse_fails(doc, "instance i-plain0001.vendor-data")


def test_user_data_both_forms_or_bad_base64_refused() -> None:
    doc = plain_doc()
    doc["user-data"] = "a"
    doc["user-data-base64"] = "YQ=="
    parse_fails(doc, "instance i-plain0001.user-data")
    doc = plain_doc()
    doc["user-data-base64"] = "not base64!"
    parse_fails(doc, "instance i-plain0001.user-data-base64")
    doc = plain_doc()
    doc["user-data"] = 42
    parse_fails(doc, "instance i-plain0001.user-data")


# --- refusals name the field ---------------------------------------------------------------
def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node: Any = doc
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[last] = value
    return doc


BAD_VALUES = [  # (where to put it, the bad value, the field the error must name)
    ("instance-name", "", None),
    ("instance-name", "two\nlines", None),
    ("instance-name", "nul\0", None),
    ("instance-name", "x" * 129, None),
    ("hostname", "-leading-dash", None),
    ("serial-number", "not-a-uuid", None),
    ("public-ipv4", "300.1.1.1", None),
    ("eipv4", "::1", None),
    ("launch-index", -1, None),
    ("launch-index", True, None),
    ("launch-index", "1", None),
    ("region-id", "Cn_Hangzhou", None),
    ("owner-account-id", "16a9", None),
    ("max-netbw-egress", 1.5, None),
    ("hibernation-configured", "yes", None),
    ("ram-role", "bad role", None),
    ("spot-termination-time", "2020-04-07 17:03:00", None),
    ("public-keys", ["ssh-ed25519 AAAA"], None),
    ("tags", "env=prod", None),
    ("tags", {1: "numeric key"}, "tags.1"),
    ("dns-nameservers", "100.100.2.136", None),
    ("network-interfaces.0.mac", "00:16:3E:0A:00:01", "network-interfaces[0].mac"),
    # what YAML 1.1 makes of an unquoted 10:00
    ("network-interfaces.0.mac", 600, "network-interfaces[0].mac"),
    ("network-interfaces.0.network-interface-id", "ENI-1",
     "network-interfaces[0].network-interface-id"),
    ("network-interfaces.0.vpc-cidr-block", "10.0.0.1/16",  # host bits set
     "network-interfaces[0].vpc-cidr-block"),
    ("network-interfaces.0.netmask", "255.255.255.256", "network-interfaces[0].netmask"),
    ("network-interfaces.0.ipv6-gateway", "10.0.0.1", "network-interfaces[0].ipv6-gateway"),
    ("network-interfaces.0.ipv6s", ["2408::zz"], "network-interfaces[0].ipv6s[0]"),
    ("network-interfaces.1.private-ipv4s", ["10.0.1.1", "10.0.1"],
     "network-interfaces[1].private-ipv4s[1]"),
    ("network-interfaces.0.vpc-ipv6-cidr-blocks", "2408:4000:1000::/56",
     "network-interfaces[0].vpc-ipv6-cidr-blocks"),
    ("disks.0.id", "disk-1_", "disks[0].id"),
    ("disks.0.serial", "../etc", "disks[0].serial"),
    ("events.0.NotBefore", "tomorrow", "events[0].NotBefore"),
    ("events.1.EventId", "", "events[1].EventId"),
    ("metadata-options.http-tokens", "always", None),
    ("metadata-options.http-endpoint", True, None),
    ("metadata-options.http-put-response-hop-limit", 0, None),
    ("metadata-options.http-put-response-hop-limit", 65, None),
    ("metadata-options.http-put-response-hop-limit", "2", None),
    ("metadata-options.instance-metadata-tags", "on", None),
    ("metadata-options", ["http-tokens"], None),
    ("extra.ram/security-credentials/x", "v", None),
    ("extra.all", "v", None),
    ("extra.a//b", "v", None),
    ("extra./abs", "v", None),
    ("extra.has space", "v", None),
    ("extra.multi", "line\nvalue", None),
]


@pytest.mark.parametrize(("path", "value", "field"), BAD_VALUES)
def test_bad_value_is_refused_naming_its_field(path: str, value: Any, field: str | None
                                               ) -> None:
    doc = rich_doc()
    if path.startswith("extra."):
        doc["extra"][path.removeprefix("extra.")] = value
    else:
        _set(doc, path, value)
    err = parse_fails(doc, f"instance {RICH_ID}.{field or path}")
    assert err.message


def test_unknown_field_is_named() -> None:
    doc = rich_doc()
    doc["network-interfaces"][1]["mtu"] = 1500
    parse_fails(doc, "instance i-bp13znx0m0me8cquu001.network-interfaces[1].mtu")
    doc = rich_doc()
    doc["colour"] = "blue"
    parse_fails(doc, "instance i-bp13znx0m0me8cquu001.colour")


def test_mac_that_yaml_reads_as_a_number_asks_for_quotes() -> None:
    nic = yaml.safe_load("mac: 10:16:30:00:00:01")
    assert isinstance(nic["mac"], int)  # YAML 1.1 base-60
    doc = plain_doc()
    doc["network-interfaces"][0]["mac"] = nic["mac"]
    assert "quote it" in str(parse_fails(doc, "instance i-plain0001.network-interfaces[0].mac"))


def test_numeric_fields_accept_numbers_from_yaml() -> None:
    doc = plain_doc() | {"owner-account-id": 1609000000000001,
                         "virtualization-solution-version": 2.0}
    inst = Instance.from_doc(doc)
    assert inst.values.owner_account_id == "1609000000000001"
    assert inst.values.virtualization_solution_version == "2.0"


def test_instance_id_is_required_and_shaped() -> None:
    parse_fails({"network-interfaces": []}, "instance.instance-id")
    parse_fails({"instance-id": "vm-1"}, "instance.instance-id")
    parse_fails("i-abc", "instance")


@pytest.mark.parametrize("null_in", ["tags", "public-keys", "extra", "ntp-servers",
                                     "dns-nameservers", "ipv6s"])
def test_null_inside_a_mapping_or_list_is_refused(null_in: str) -> None:
    """`key:` with no value in YAML is None. Were it accepted as "", the stored document
    would not parse again (empty strings are refused): the instance could not be served."""
    doc = rich_doc()
    if null_in in ("tags", "public-keys", "extra"):
        doc[null_in]["nothing"] = None
        field = f"{null_in}.nothing"
    elif null_in == "ipv6s":
        doc["network-interfaces"][0]["ipv6s"] = [None]
        field = "network-interfaces[0].ipv6s[0]"
    else:
        doc[null_in] = ["ntp1.aliyun.com", None]
        field = f"{null_in}[1]"
    parse_fails(doc, f"instance {RICH_ID}.{field}")


# --- consistency within an instance --------------------------------------------------------
def test_private_ip_outside_its_vswitch_refused() -> None:
    doc = rich_doc()
    doc["network-interfaces"][0]["private-ipv4s"].append("10.0.9.9")
    err = parse_fails(doc, f"instance {RICH_ID}.network-interfaces[0].private-ipv4s[3]")
    assert "10.0.9.9 is outside 10.0.0.0/24" in err.message



_VSWITCH = ipaddress.IPv4Network("10.96.0.0/11")


_OCTETS = ["0", "00", "01", "010", "1", "9", "10", "99", "100", "199", "200", "249", "250",
           "255", "256", "260", "300", "999", "1000", "", "\u0663", " 1", "+1", "0x1"]


# Not the empty string: a field's length (1 to 1024 characters) is checked before its form.
@given(st.lists(st.sampled_from(_OCTETS), min_size=1, max_size=5).map(".".join).filter(bool)
       | st.ip_addresses(v=4).map(str)
       | st.ip_addresses(network=_VSWITCH).map(str))
def test_private_addresses_are_read_as_ipaddress_reads_them(ip: str) -> None:
    """Addresses are recognised by a regex and placed by arithmetic, not by ipaddress: the
    same addresses are refused, with ipaddress's own complaint, and the same ones placed
    inside the vSwitch."""
    nic = {"mac": "00:16:3e:0a:00:01", "network-interface-id": "eni-1", "vpc-id": "vpc-1",
           "vswitch-id": "vsw-1", "private-ipv4s": [ip], "vswitch-cidr-block": str(_VSWITCH),
           "vpc-cidr-block": "10.0.0.0/8"}
    where = "nic.private-ipv4s[0]"
    try:
        inside = ipaddress.IPv4Address(ip) in _VSWITCH
    except ValueError as exc:
        with pytest.raises(ValidationError) as info:
            NetworkInterface.from_doc(nic, "nic")
        assert (info.value.field, info.value.message) == (where, str(exc))
        return
    if inside:
        assert NetworkInterface.from_doc(nic, "nic").private_ipv4s == (ip,)
    else:
        with pytest.raises(ValidationError) as info:
            NetworkInterface.from_doc(nic, "nic")
        assert (info.value.field, info.value.message) == (where, f"{ip} is outside {_VSWITCH}")


def test_vswitch_outside_its_vpc_refused() -> None:
    doc = rich_doc()
    doc["network-interfaces"][1]["vswitch-cidr-block"] = "172.16.0.0/24"
    doc["network-interfaces"][1]["private-ipv4s"] = ["172.16.0.5"]
    parse_fails(doc, f"instance {RICH_ID}.network-interfaces[1].vswitch-cidr-block")


def test_interface_needs_an_address_and_instance_an_interface() -> None:
    doc = rich_doc()
    doc["network-interfaces"][1]["private-ipv4s"] = []
    parse_fails(doc, f"instance {RICH_ID}.network-interfaces[1].private-ipv4s")
    doc = rich_doc()
    doc["network-interfaces"] = []
    parse_fails(doc, f"instance {RICH_ID}.network-interfaces")
    doc = rich_doc()
    del doc["network-interfaces"]
    parse_fails(doc, f"instance {RICH_ID}.network-interfaces")


def test_interfaces_in_two_vpcs_refused() -> None:
    doc = rich_doc()
    doc["network-interfaces"][1]["vpc-id"] = "vpc-elsewhere"
    parse_fails(doc, f"instance {RICH_ID}.network-interfaces")


def test_duplicate_mac_or_address_within_an_instance_refused() -> None:
    doc = rich_doc()
    doc["network-interfaces"][1]["mac"] = PRIMARY_MAC
    parse_fails(doc, f"instance {RICH_ID}.network-interfaces[1].mac")
    doc = rich_doc()
    doc["network-interfaces"][0]["private-ipv4s"].append(RICH_IP)
    parse_fails(doc, f"instance {RICH_ID}.network-interfaces[0].private-ipv4s")


def test_duplicate_disk_serial_refused() -> None:
    doc = rich_doc()
    doc["disks"][1]["serial"] = doc["disks"][0]["serial"]
    parse_fails(doc, f"instance {RICH_ID}.disks")


def test_network_interface_defaults() -> None:
    nic = NetworkInterface.from_doc(rich_doc()["network-interfaces"][0], "nic")
    assert nic.effective_netmask == "255.255.255.0"
    assert nic.effective_gateway == "10.0.0.253"
    assert nic.has_ipv6
    assert nic.ipv6s == RICH_IPV6
    second = NetworkInterface.from_doc(rich_doc()["network-interfaces"][1], "nic")
    assert second.effective_gateway == "10.0.1.1"
    assert not second.has_ipv6
    small = NetworkInterface.from_doc(
        rich_doc()["network-interfaces"][1] | {"vswitch-cidr-block": "10.0.1.0/27",
                                               "netmask": None, "gateway": None}, "nic")
    assert (small.effective_netmask, small.effective_gateway) == ("255.255.255.224", "10.0.1.29")


def test_event_reason_is_optional_and_its_absence_round_trips() -> None:
    event = SystemEvent.from_doc(rich_doc()["events"][1], "e")
    assert event.to_doc()["Reason"] == ""
    assert SystemEvent.from_doc(event.to_doc(), "e") == event
    assert list(event.to_doc()) == ["EventId", "EventType", "EventCycleStatus", "NotBefore",
                                    "Reason"]


# --- metadata options and defaults --------------------------------------------------------
def test_metadata_options_defaults_match_spec() -> None:
    opts = MetadataOptions.from_doc({}, "m")
    assert opts == MetadataOptions("enabled", "optional", 1, "disabled")
    assert not opts.tokens_required and opts.endpoint_enabled and not opts.tags_exposed
    assert opts.to_doc() == {"http-endpoint": "enabled", "http-tokens": "optional",
                             "http-put-response-hop-limit": 1,
                             "instance-metadata-tags": "disabled"}


def test_instance_options_override_fleet_options_one_by_one() -> None:
    defaults = FleetDefaults.from_doc(defaults_doc() | {"metadata-options": {
        "http-tokens": "required", "http-put-response-hop-limit": 2}})
    inst = Instance.from_doc(plain_doc() | {"metadata-options": {
        "http-put-response-hop-limit": 64}})
    opts = effective(inst, defaults).options
    assert opts == MetadataOptions("enabled", "required", 64, "disabled")
    bare = effective(Instance.from_doc(plain_doc()), defaults).options
    assert bare == MetadataOptions("enabled", "required", 2, "disabled")


def test_effective_applies_defaults_and_derives_names() -> None:
    defaults = FleetDefaults.from_doc(defaults_doc())
    plain = effective(Instance.from_doc(plain_doc()), defaults)
    assert plain.values.region_id == "cn-hangzhou"
    assert plain.values.instance_type == "ecs.g6e.large"
    assert plain.hostname == "iZplain0001Z"
    assert plain.instance_name == "iZplain0001Z"
    assert plain.serial_number == str(uuid.uuid5(uuid.NAMESPACE_URL, "ecs-imds:i-plain0001"))
    assert plain.extra == {"custom/fleet": "everyone", "custom/owner": "fleet-team"}
    other = effective(Instance.from_doc(other_vpc_doc()), defaults)
    assert other.values.instance_type == "ecs.c7.xlarge"
    rich = effective(Instance.from_doc(rich_doc()), defaults)
    assert rich.extra["custom/owner"] == "qa"
    assert rich.extra["custom/fleet"] == "everyone"


def test_defaults_round_trip_and_leave_out_what_is_default() -> None:
    d = FleetDefaults.from_doc(defaults_doc())
    assert FleetDefaults.from_doc(d.to_doc()) == d
    assert "metadata-options" not in d.to_doc()
    assert FleetDefaults.from_doc(None) == FleetDefaults()
    assert FleetDefaults().to_doc() == {}


@pytest.mark.parametrize("doc", [
    {"defaults": ["region-id"]},
    {"defaults": "cn-hangzhou"},
    {"defaults": {"metadata-options": ["http-tokens"]}},
    {"defaults": {"metadata-options": "required"}},
])
def test_defaults_that_are_not_mappings_are_refused(doc: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        Fleet.from_doc(doc)
    assert info.value.field.startswith("defaults")
    assert "mapping" in info.value.message


# --- fleets ---------------------------------------------------------------------------------
def test_fleet_round_trips() -> None:
    fleet = Fleet.from_doc(fleet_doc())
    assert Fleet.from_doc(fleet.to_doc()) == fleet
    assert [i.instance_id for i in fleet.instances][:3] == [RICH_ID, "i-plain0001", HARDENED_ID]


def test_fleet_error_names_the_instance_by_position_and_id() -> None:
    doc = fleet_doc()
    doc["instances"][2]["network-interfaces"][0]["vswitch-id"] = "VSW"
    parse_fails(doc, f"instances[2] ({HARDENED_ID}).network-interfaces[0].vswitch-id",
                fleet=True)
    doc = fleet_doc()
    doc["instances"][1] = "i-plain0001"
    parse_fails(doc, "instances[1]", fleet=True)
    parse_fails({"instances": [], "servers": []}, "servers", fleet=True)
    parse_fails({"instances": {"i-x": {}}}, "instances", fleet=True)


def test_duplicate_instance_id_refused() -> None:
    doc = fleet_doc()
    twin = plain_doc()
    twin["network-interfaces"][0]["private-ipv4s"] = ["10.0.0.99"]
    twin["network-interfaces"][0]["mac"] = "00:16:3e:0a:00:99"
    doc["instances"].append(twin)
    parse_fails(doc, "instances[5] (i-plain0001).instance-id", fleet=True)


def test_same_address_in_one_vpc_refused_naming_both_instances() -> None:
    doc = fleet_doc()
    doc["instances"][1]["network-interfaces"][0]["private-ipv4s"] = [RICH_IP]
    err = parse_fails(doc, "instances[1] (i-plain0001).network-interfaces", fleet=True)
    assert RICH_IP in err.message and RICH_ID in err.message and VPC in err.message


def test_same_ipv6_in_one_vpc_refused_even_when_spelt_differently() -> None:
    doc = fleet_doc()
    nic = doc["instances"][1]["network-interfaces"][0]
    nic["ipv6s"] = ["2408:4000:1000:100:0::10"]
    nic["vpc-ipv6-cidr-blocks"] = ["2408:4000:1000::/56"]
    err = parse_fails(doc, "instances[1] (i-plain0001).network-interfaces", fleet=True)
    assert "2408:4000:1000:100::10" in err.message


def test_same_address_in_two_vpcs_accepted() -> None:
    fleet = Fleet.from_doc(fleet_doc())
    other = next(i for i in fleet.instances if i.vpc_id != VPC)
    assert other.primary.primary_ip == RICH_IP
    check_unique(list(fleet.instances))  # no error


# --- property: any document the model accepts round-trips, through YAML too ----------------
_line = st.text(st.characters(blacklist_characters="\r\n\0", blacklist_categories=("Cs",)),
                min_size=1, max_size=20)
# One-line strings (names): no control characters at all (SPEC §9).
_name = st.text(st.characters(blacklist_categories=("Cc", "Cs"),
                              blacklist_characters="\u2028\u2029"), min_size=1, max_size=20)
_segment = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,10}", fullmatch=True)


@st.composite
def instance_docs(draw: st.DrawFn) -> dict[str, Any]:
    doc = plain_doc()
    doc["tags"] = draw(st.dictionaries(_name | st.just(""), _line, max_size=4))
    doc["public-keys"] = draw(st.dictionaries(_segment, _line, max_size=3))
    doc["extra"] = {f"x/{k}": v for k, v in
                    draw(st.dictionaries(_segment, _line, max_size=3)).items()}
    data = draw(st.binary(max_size=64) | st.none())
    if data is not None:
        doc["user-data-base64"] = base64.b64encode(data).decode()
    doc["launch-index"] = draw(st.integers(0, 10**6))
    if draw(st.booleans()):
        doc["instance-name"] = draw(_name)
    if draw(st.booleans()):
        doc["metadata-options"] = draw(st.fixed_dictionaries({}, optional={
            "http-tokens": st.sampled_from(["optional", "required"]),
            "http-put-response-hop-limit": st.integers(1, 64)}))
    return doc


@given(instance_docs())
def test_accepted_documents_round_trip_through_yaml(doc: dict[str, Any]) -> None:
    inst = Instance.from_doc(doc)
    canonical = inst.to_doc()
    text = dump(canonical)  # what `ecs-imds admin export` writes
    again = Instance.from_doc(yaml.safe_load(text))
    assert again.to_doc() == canonical
    # `metadata-options: {}` is written back as nothing: equal in effect, not in form.
    assert again == replace(inst, metadata_options=inst.metadata_options or None)
    defaults = FleetDefaults.from_doc(defaults_doc())
    assert effective(again, defaults).options == effective(inst, defaults).options


# --- SPEC §9: one canonical address, no control characters in names ----------------------
@pytest.mark.parametrize("mapped", ["::ffff:10.0.0.20", "::FFFF:a00:14", "0:0:0:0:0:ffff:10.0.0.9"])
def test_ipv4_mapped_ipv6_addresses_are_refused(mapped: str) -> None:
    """One such `ipv6s` entry used to take over the IPv4 instance's identity."""
    doc = plain_doc()
    doc["network-interfaces"][0]["ipv6s"] = [mapped]
    with pytest.raises(ValidationError) as info:
        Instance.from_doc(doc)
    assert info.value.field.endswith("network-interfaces[0].ipv6s[0]")
    assert "IPv4-mapped" in info.value.message


@pytest.mark.parametrize("char", ["\x1b", "\x07", "\t", "\x7f", "\x85", "\x9b", "\u2028",
                                  "\u2029"])
@pytest.mark.parametrize("field", ["instance-name", "hostname", "image-id", "instance-type",
                                   "region-id"])
def test_control_characters_are_refused_in_one_line_strings(char: str, field: str) -> None:
    doc = plain_doc()
    doc[field] = f"name{char}[2J"
    with pytest.raises(ValidationError) as info:
        Instance.from_doc(doc)
    assert info.value.field.endswith(field)
    assert char not in str(info.value)  # the message never echoes it


@pytest.mark.parametrize("key", ["\x1b[31mred", "a\u2028b", "tab\tkey", "c1\x9b"])
def test_control_characters_are_refused_in_tag_keys(key: str) -> None:
    doc = plain_doc()
    doc["tags"] = {key: "v"}
    with pytest.raises(ValidationError, match="is not an allowed name") as info:
        Instance.from_doc(doc)
    assert "\x1b" not in str(info.value) and "\u2028" not in str(info.value)


def test_tag_values_are_text() -> None:
    """SPEC §9: values are any UTF-8 text (on one line)."""
    doc = plain_doc()
    doc["tags"] = {"k": "tab\tand \x85 and \u2028 and é"}
    assert Instance.from_doc(doc).tags == doc["tags"]
