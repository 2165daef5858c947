"""Instance → its metadata tree (SPEC §2-3), rendered once per instance version.

The tree is flattened into `entries`: a dict from a path below the version prefix, without a
trailing slash (`meta-data/network/interfaces/macs`), to what that path serves. Directories
are served as listings, leaves as their bytes; a few leaves are `Dynamic`, computed per
request from secrets and the clock (RAM credentials, the PKCS#7 signature). The data plane
then answers a GET with one dict lookup.

Memory is what limits the fleet one server holds, so equal values are shared: the `Pool`
gives every instance the same Leaf for the same bytes (region, image, DNS, most listings…),
and only what is one instance's own (its id, names, MACs, addresses, `all`) is a Leaf of its
own, kept out of the pool where it would only add a second reference.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import Any

from ecs_imds.errors import ValidationError
from ecs_imds.protocol.model import Effective, FleetDefaults, Instance, MetadataOptions, effective

TEXT = b"text/plain; charset=utf-8"
JSON = b"application/json"
OCTET = b"application/octet-stream"

VERSIONS = ("2016-01-01", "latest")

# Built-in values for items that neither the instance nor the fleet defaults set.
BUILTIN = {
    "network-type": "vpc",
    "virtualization-solution": "ECS Virt",
    "virtualization-solution-version": "2.0",
    "source-address": "http://mirrors.cloud.aliyuncs.com",
}
BUILTIN_NAMESERVERS = ("100.100.2.136", "100.100.2.138")
BUILTIN_NTP_SERVERS = ("ntp1.aliyun.com", "ntp2.aliyun.com", "ntp3.aliyun.com")

# The identity document's keys, in SPEC §5's order.
DOCUMENT_KEYS = ("zone-id", "serial-number", "instance-id", "region-id", "private-ipv4",
                 "owner-account-id", "mac", "image-id", "instance-type")

CREDENTIALS_DIR = "meta-data/ram/security-credentials"


@dataclass(frozen=True, slots=True)
class Leaf:
    """A static answer: its body and content type."""

    body: bytes
    content_type: bytes


@dataclass(frozen=True, slots=True)
class Dynamic:
    """An answer computed per request: `kind` is `credentials` (arg: role) or `pkcs7`."""

    kind: str
    arg: str = ""


Entry = Leaf | Dynamic
Node = dict[str, "Node"] | Leaf | Dynamic


@dataclass(frozen=True, slots=True)
class Rendered:
    """One instance, ready to serve."""

    instance_id: str
    vpc_id: str
    options: MetadataOptions
    entries: dict[str, Entry]
    document: bytes
    role: str | None


class Pool:
    """Shares equal leaves across instances: most of a fleet's values are the same bytes."""

    def __init__(self) -> None:
        self.leaves: dict[tuple[bytes, bytes], Leaf] = {}
        self._texts: dict[str, Leaf] = {}
        self._dynamic: dict[tuple[str, str], Dynamic] = {}
        self._networks: dict[tuple[str, str | None, str | None], tuple[Leaf, Leaf]] = {}

    def leaf(self, body: bytes, content_type: bytes = TEXT) -> Leaf:
        key = (body, content_type)
        found = self.leaves.get(key)
        if found is None:
            found = self.leaves[key] = Leaf(body, content_type)
        return found

    def text(self, value: str) -> Leaf:
        """The shared text leaf of `value` (looked up by the str: no encoding on a hit)."""
        found = self._texts.get(value)
        if found is None:
            found = self._texts[value] = self.leaf(value.encode())
        return found

    def dynamic(self, kind: str, arg: str = "") -> Dynamic:
        found = self._dynamic.get((kind, arg))
        if found is None:
            found = self._dynamic[(kind, arg)] = Dynamic(kind, arg)
        return found

    def netmask_gateway(self, nic: Any) -> tuple[Leaf, Leaf]:
        """An interface's netmask and gateway: they depend only on its vSwitch CIDR and
        explicit settings, which thousands of interfaces share (and ipaddress is slow)."""
        key = (nic.vswitch_cidr_block, nic.netmask, nic.gateway)
        found = self._networks.get(key)
        if found is None:
            found = self._networks[key] = (self.text(nic.effective_netmask),
                                           self.text(nic.effective_gateway))
        return found


def _text(pool: Pool, value: str) -> Leaf:
    return pool.text(value)


def _own(value: str) -> Leaf:
    """A value that is this instance's alone: not worth a place in the pool."""
    return Leaf(value.encode(), TEXT)


def _crlf(pool: Pool, values: tuple[str, ...]) -> Leaf:
    return pool.leaf("\r\n".join(values).encode())


def _json_list(values: tuple[str, ...]) -> bytes:
    return json.dumps(list(values), separators=(",", ":")).encode()


def _interface(pool: Pool, nic: Any) -> dict[str, Node]:
    netmask, gateway = pool.netmask_gateway(nic)
    d: dict[str, Node] = {
        "network-interface-id": _own(nic.network_interface_id),
        "vpc-id": _text(pool, nic.vpc_id),
        "vswitch-id": _text(pool, nic.vswitch_id),
        "primary-ip-address": _own(nic.primary_ip),
        "private-ipv4s": Leaf(_json_list(nic.private_ipv4s), TEXT),
        "netmask": netmask,
        "gateway": gateway,
        "vswitch-cidr-block": _text(pool, nic.vswitch_cidr_block),
        "vpc-cidr-block": _text(pool, nic.vpc_cidr_block),
    }
    if nic.ipv4_prefixes:
        d["ipv4-prefixes"] = pool.leaf(_json_list(nic.ipv4_prefixes))
    if nic.has_ipv6:
        d["ipv6s"] = _text(pool, "[" + ",".join(nic.ipv6s) + "]")
        if nic.ipv6_prefixes:
            d["ipv6-prefixes"] = _text(pool, "[" + ",".join(nic.ipv6_prefixes) + "]")
        if nic.ipv6_gateway:
            d["ipv6-gateway"] = _text(pool, nic.ipv6_gateway)
        if nic.vswitch_ipv6_cidr_block:
            d["vswitch-ipv6-cidr-block"] = _text(pool, nic.vswitch_ipv6_cidr_block)
        d["vpc-ipv6-cidr-blocks"] = _text(pool, "[" + ",".join(nic.vpc_ipv6_cidr_blocks) + "]")
    return d


def _meta_data(pool: Pool, e: Effective) -> dict[str, Node]:
    inst, v = e.instance, e.values
    nic = inst.primary
    t = pool.text  # a short alias keeps the table readable
    interfaces = {n.mac: _interface(pool, n)
                  for n in sorted(inst.network_interfaces, key=lambda n: n.mac)}
    primary_ip = interfaces[nic.mac]["primary-ip-address"]
    macs: dict[str, Node] = dict(interfaces)

    instance: dict[str, Node] = {
        "instance-name": _own(e.instance_name),
        "instance-type": t(_required(v.instance_type, "instance-type")),
    }
    if inst.spot_termination_time:
        instance["spot"] = {"termination-time": t(inst.spot_termination_time)}
    instance["virtualization-solution"] = t(v.virtualization_solution
                                            or BUILTIN["virtualization-solution"])
    instance["virtualization-solution-version"] = t(
        v.virtualization_solution_version or BUILTIN["virtualization-solution-version"])
    if v.max_netbw_egress is not None:
        instance["max-netbw-egress"] = t(str(v.max_netbw_egress))
    if v.max_netbw_ingress is not None:
        instance["max-netbw-ingress"] = t(str(v.max_netbw_ingress))
    if inst.last_host_landing_time:
        instance["last-host-landing-time"] = t(inst.last_host_landing_time)

    md: dict[str, Node] = {
        "instance-id": _own(inst.instance_id),
        "instance": instance,
        "hostname": _own(e.hostname),
        "serial-number": _own(e.serial_number),
        "region-id": t(_required(v.region_id, "region-id")),
        "zone-id": t(_required(v.zone_id, "zone-id")),
        "owner-account-id": t(_required(v.owner_account_id, "owner-account-id")),
        "image-id": t(_required(v.image_id, "image-id")),
    }
    if inst.image_product_code:
        market: dict[str, Node] = {"product-code": t(inst.image_product_code)}
        if inst.image_charge_type:
            market["charge-type"] = t(inst.image_charge_type)
        md["image"] = {"market-place": market}
    md |= {
        "network-type": t(BUILTIN["network-type"]),
        "vpc-id": t(nic.vpc_id),
        "vpc-cidr-block": t(nic.vpc_cidr_block),
        "vswitch-id": t(nic.vswitch_id),
        "vswitch-cidr-block": t(nic.vswitch_cidr_block),
        "mac": _own(nic.mac),
        "private-ipv4": primary_ip,  # the same leaf as the interface's
    }
    if len(nic.private_ipv4s) > 1:
        md["sub-private-ipv4-list"] = _crlf(pool, nic.private_ipv4s[1:])
    if inst.public_ipv4:
        md["public-ipv4"] = _own(inst.public_ipv4)
    if inst.eipv4:
        md["eipv4"] = _own(inst.eipv4)
    md["network"] = {"interfaces": {"macs": macs}}
    if inst.disks:
        md["disks"] = {d.serial: {"id": _own(d.id), **({"name": t(d.name)} if d.name else {})}
                       for d in sorted(inst.disks, key=lambda d: d.serial)}
    if inst.public_keys:
        md["public-keys"] = {k: {"openssh-key": t(inst.public_keys[k])}
                             for k in sorted(inst.public_keys)}
    md["dns-conf"] = {"nameservers": _crlf(pool, v.dns_nameservers
                                          or BUILTIN_NAMESERVERS)}
    md["ntp-conf"] = {"ntp-servers": _crlf(pool, v.ntp_servers or BUILTIN_NTP_SERVERS)}
    md["source-address"] = t(v.source_address or BUILTIN["source-address"])
    if v.kms_server:
        md["kms-server"] = t(v.kms_server)
    if v.wsus_server or v.wsus_status_server:
        wsus: dict[str, Node] = {}
        if v.wsus_server:
            wsus["wu-server"] = t(v.wsus_server)
        if v.wsus_status_server:
            wsus["wu-status-server"] = t(v.wsus_status_server)
        md["wsus-server"] = wsus
    md["hibernation"] = {"configured": t("true" if v.hibernation_configured else "false")}
    md["launch-index"] = t(str(inst.launch_index))
    if e.options.tags_exposed:
        tags: dict[str, Node] = {k: t(val) for k, val in sorted(inst.tags.items())
                                 if exposable_tag(k)}
        if tags:
            md["tags"] = {"instance": tags}
    if v.ram_role:
        md["ram"] = {"security-credentials": {v.ram_role: pool.dynamic("credentials",
                                                                      v.ram_role)}}
    return md


_TAG_KEY = re.compile(r"[A-Za-z0-9+\-=.,_:@]{1,128}")


def exposable_tag(key: str) -> bool:
    """SPEC §9: a tag key is exposed only when it can be addressed in a path: 1-128 of
    `A-Z a-z 0-9 + - = . , _ : @`, and not `.` or `..` (clients normalise dot-segments
    away, so the item could never be asked for). Other tags are kept, not listed."""
    return _TAG_KEY.fullmatch(key) is not None and key not in (".", "..")


def _required(value: str | None, name: str) -> str:
    if value is None:
        raise _missing(name)
    return value


def _missing(name: str) -> ValidationError:
    return ValidationError(name, "is required: set it on the instance or in defaults")


def _add_extra(pool: Pool, tree: dict[str, Node], path: str, value: str) -> None:
    *dirs, name = path.split("/")
    node = tree
    for i, part in enumerate(dirs):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValidationError(f"extra.{path}",
                                  f"{'/'.join(dirs[:i + 1])} is an item, not a directory")
        node = child
    if isinstance(node.get(name), dict):
        raise ValidationError(f"extra.{path}", "is a directory, not an item")
    node[name] = _text(pool, value)


def document(e: Effective) -> bytes:
    """The instance identity document (SPEC §5): compact JSON, keys in a fixed order."""
    v, nic = e.values, e.instance.primary
    values = (v.zone_id, e.serial_number, e.instance.instance_id, v.region_id, nic.primary_ip,
              v.owner_account_id, nic.mac, v.image_id, v.instance_type)
    return json.dumps(dict(zip(DOCUMENT_KEYS, values, strict=True)),
                      separators=(",", ":")).encode()


# Directories whose names are one instance's own (MACs, disk serials): their listing is not
# pooled, and the paths below them are not interned (no other instance has them).
_OWN_DIRS = frozenset({"meta-data/network/interfaces/macs", "meta-data/disks"})


def _flatten(pool: Pool, node: dict[str, Node], path: str, out: dict[str, Entry],
             json_view: bool, shared: bool = True) -> dict[str, Any]:
    """Put the listing of directory `node` (at `path`) and everything below it into `out`.
    With `json_view`, also return the directory as `all` shows it: leaves as their text,
    dynamic items left out; else an empty dict."""
    out[path] = _PLACEHOLDER  # the listing goes before its children, as a crawler meets them
    own = path in _OWN_DIRS
    shared = shared and not own
    names = []
    view: dict[str, Any] = {}
    prefix = path + "/"
    for name, child in node.items():
        child_path = prefix + name
        if shared:
            child_path = sys.intern(child_path)
        if isinstance(child, dict):
            names.append(name + "/")
            sub = _flatten(pool, child, child_path, out, json_view, shared)
            if json_view:
                view[name] = sub
        else:
            names.append(name)
            out[child_path] = child
            if json_view and isinstance(child, Leaf):
                view[name] = child.body.decode()
    body = "\n".join(names).encode()
    out[path] = Leaf(body, TEXT) if own else pool.leaf(body)
    return view


_PLACEHOLDER = Leaf(b"", TEXT)


def _tree(pool: Pool, e: Effective) -> tuple[dict[str, Node], bytes]:
    """The instance's tree of items, and its identity document: everything rendering can
    refuse (a required value missing, an extra item in the way of another) is found here;
    flattening the tree into paths cannot fail."""
    inst = e.instance
    meta = _meta_data(pool, e)
    for path in sorted(e.extra):
        _add_extra(pool, meta, path, e.extra[path])
    doc = document(e)
    tree: dict[str, Node] = {
        "dynamic": {"instance-identity": {"document": Leaf(doc, JSON),
                                          "pkcs7": pool.dynamic("pkcs7")}},
        "maintenance": {},
        "meta-data": meta,
    }
    if inst.events:
        events = json.dumps([ev.to_doc() for ev in inst.events], separators=(",", ":"))
        # SPEC §2: text/plain like every item but `all`, credentials and the document.
        tree["maintenance"] = {"active-system-events": pool.leaf(events.encode(), TEXT)}
    if inst.user_data is not None:
        tree["user-data"] = pool.leaf(inst.user_data, OCTET)
    if inst.vendor_data is not None:
        tree["vendor-data"] = pool.leaf(inst.vendor_data, OCTET)
    return tree, doc


def render(e: Effective, pool: Pool | None = None) -> Rendered:
    """Render every path an instance can ask for. Raises ValidationError naming the field."""
    pool = pool or Pool()
    inst = e.instance
    tree, doc = _tree(pool, e)
    entries: dict[str, Entry] = {"": _PLACEHOLDER}
    names = []
    meta_view: dict[str, Any] = {}
    for name, child in tree.items():
        if isinstance(child, dict):
            names.append(name + "/")
            view = _flatten(pool, child, name, entries, name == "meta-data")
            if name == "meta-data":
                meta_view = view
        else:
            names.append(name)
            entries[name] = child
    entries[""] = pool.leaf("\n".join(names).encode())
    all_json = json.dumps(meta_view, separators=(",", ":"), ensure_ascii=False)
    entries["meta-data/all"] = Leaf(all_json.encode(), JSON)
    return Rendered(instance_id=inst.instance_id, vpc_id=inst.vpc_id, options=e.options,
                    entries=entries, document=doc, role=e.values.ram_role)


def check_renders(instance: Instance, e: Effective, pool: Pool | None = None) -> None:
    """Validate what only rendering can tell (required inherited values, extra paths), at
    half the cost of rendering: the tree is built, not flattened. Checking many instances,
    give them one `pool`: what they share is then worked out once."""
    try:
        _tree(pool or Pool(), e)
    except ValidationError as exc:
        raise exc.within(f"instance {instance.instance_id}") from None


# The values `_meta_data` requires (the instance's own or inherited), in the order it asks.
_REQUIRED = (("instance_type", "instance-type"), ("region_id", "region-id"),
             ("zone_id", "zone-id"), ("owner_account_id", "owner-account-id"),
             ("image_id", "image-id"))


def check_serves(instance: Instance, defaults: FleetDefaults, pool: Pool | None = None
                 ) -> None:
    """`check_renders(instance, effective(instance, defaults), pool)`, without building the
    tree when nothing can be in its way: every value was checked when the instance was read,
    so without extra items (which may collide with the tree's own) all that rendering can
    still refuse is a required value that neither the instance nor the defaults set — the
    same error, found in the same order, for a fraction of the cost (an import of 100,000
    instances checks each one). With extra items, the tree is built."""
    if instance.extra or defaults.extra:
        check_renders(instance, effective(instance, defaults), pool)
        return
    own, inherited = instance.values, defaults.values
    for attr, name in _REQUIRED:
        if getattr(own, attr) is None and getattr(inherited, attr) is None:
            raise _missing(name).within(f"instance {instance.instance_id}")
