"""The records of a fleet and the validation of operator input.

A fleet file (and every row of the store) holds documents whose keys are SPEC's own words
(`instance-id`, `http-tokens`, ...). Each record parses its document strictly — unknown keys
and bad values are refused with the field named — and writes it back in one canonical form,
so that import followed by export gives back the same bytes.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any, Self

from ecs_imds.errors import ValidationError

USER_DATA_LIMIT = 16 * 1024
MAX_TOKEN_TTL = 21600

# SPEC §9: refused in one-line strings (C0, DEL, C1, U+2028/2029); CR, LF and NUL in any.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_LINE_BREAKS = re.compile("[\r\n\x00]")
_INSTANCE_ID = re.compile(r"i-[a-z0-9]{1,40}")
_RESOURCE_ID = re.compile(r"[a-z]{1,8}-[A-Za-z0-9]{1,40}")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
# A host's name as operators write it: a dedicated host id (`dh-bp1…`), a hypervisor's
# hostname or FQDN. `*` and the empty name are the store's own (store.base.FLEET).
HOST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class _Reader:
    """Takes typed values out of one document, naming the field in every complaint."""

    def __init__(self, doc: Any, where: str = "", items: bool = False) -> None:
        """`items`: `doc` stands for a list (its keys are indexes, named `[i]`)."""
        if not isinstance(doc, dict):
            raise ValidationError(where, "must be a mapping")
        self.doc = doc
        self.where = where
        self.items = items
        self.seen: set[str] = set()

    def path(self, key: str | int) -> str:
        if self.items:
            return f"{self.where}[{key}]"
        return f"{self.where}.{key}" if self.where else str(key)

    def fail(self, key: str | int, message: str) -> ValidationError:
        return ValidationError(self.path(key), message)

    def raw(self, key: str) -> Any:
        self.seen.add(key)
        return self.doc.get(key)

    def string(self, key: str, pattern: re.Pattern[str] | None = None, *,
               required: bool = False, check: Callable[[str], None] | None = None,
               max_len: int = 1024, numeric: bool = False, text: bool = False
               ) -> str | None:
        """A one-line string: no control characters (SPEC §9: C0, DEL, C1, U+2028/2029 —
        they would rewrite an operator's terminal). With `text` (tag values, extra items,
        keys), only line breaks and NUL are refused. YAML reads some bare words as numbers
        (a MAC can become a base-60 integer), so numbers are refused unless `numeric`."""
        self.seen.add(key)
        value = self.doc.get(key)
        if value is None and not required:  # most optional fields are not given
            return None
        if (type(value) is str and 0 < len(value) <= max_len and check is None
                and not (_LINE_BREAKS if text else _CONTROL).search(value)
                and (pattern is None or pattern.fullmatch(value))):
            return value  # the common case, without a second call; else say what is wrong
        return self.check_string(key, value, pattern, required, check, max_len, numeric, text)

    def check_string(self, key: str | int, value: Any, pattern: re.Pattern[str] | None,
                     required: bool, check: Callable[[str], None] | None, max_len: int,
                     numeric: bool, text: bool) -> str | None:
        """`string`'s checks of `value`, given here (an item of a list, which has no key
        of its own in a mapping) and named `key`. A fleet file holds millions of strings:
        the common case, a plain string, costs a type test, a length test and a regex."""
        if value is None:
            if required:
                raise self.fail(key, "is required")
            return None
        if type(value) is not str:
            if numeric and isinstance(value, int | float) and not isinstance(value, bool):
                value = str(value)
            elif not isinstance(value, str):
                raise self.fail(key, "must be a string (quote it in YAML)")
        if not value or len(value) > max_len:
            raise self.fail(key, f"must be 1 to {max_len} characters")
        unwanted = (_LINE_BREAKS if text else _CONTROL).search(value)
        if unwanted:
            raise self.fail(key, f"must not hold the control character "
                                 f"U+{ord(unwanted.group()):04X} (one line of text)")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.fail(key, f"{value!r} is not of the form {pattern.pattern}")
        if check is not None:
            try:
                check(value)
            except ValueError as exc:
                raise self.fail(key, str(exc)) from None
        return str(value)

    def integer(self, key: str, lo: int, hi: int) -> int | None:
        value = self.raw(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.fail(key, f"must be a whole number from {lo} to {hi}")
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str | None:
        value = self.raw(key)
        if value is None:
            return None
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}")
        return str(value)

    def boolean(self, key: str) -> bool | None:
        value = self.raw(key)
        if value is None or isinstance(value, bool):
            return value
        raise self.fail(key, "must be true or false")

    def strings(self, key: str, check: Callable[[str], None] | None = None
                ) -> tuple[str, ...] | None:
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self.fail(key, "must be a list")
        items = _Reader({}, self.path(key), items=True)  # names the items in complaints
        return tuple([items.check_string(i, v, None, True, check, 1024, False, False) or ""
                      for i, v in enumerate(value)])

    def mapping(self, key: str, key_pattern: re.Pattern[str] | None = None
                ) -> dict[str, str] | None:
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(key, "must be a mapping")
        sub = _Reader(value, self.path(key))
        out: dict[str, str] = {}
        for name in value:
            if not isinstance(name, str) or (key_pattern and not key_pattern.fullmatch(name)) \
                    or _CONTROL.search(name):
                raise sub.fail(repr(name) if isinstance(name, str) else str(name),
                               "is not an allowed name")
            out[name] = sub.string(name, max_len=65536, required=True, text=True) or ""
        return out

    def records(self, key: str, parse: Callable[[Any, str], Any]) -> tuple[Any, ...] | None:
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self.fail(key, "must be a list")
        return tuple(parse(item, f"{self.path(key)}[{i}]") for i, item in enumerate(value))

    def data(self, key: str) -> bytes | None:
        """User data and vendor data: `key` as text, or `key-base64` for arbitrary bytes."""
        text, b64 = self.raw(key), self.raw(f"{key}-base64")
        if text is not None and b64 is not None:
            raise self.fail(key, f"give {key} or {key}-base64, not both")
        if text is not None:
            if not isinstance(text, str):
                raise self.fail(key, "must be a string")
            blob = text.encode()
        elif b64 is not None:
            try:
                blob = base64.b64decode(str(b64), validate=True)
            except ValueError:
                raise self.fail(f"{key}-base64", "is not valid base64") from None
        else:
            return None
        if len(blob) > USER_DATA_LIMIT:
            raise self.fail(key, f"is {len(blob)} bytes, more than {USER_DATA_LIMIT}")
        return blob

    def done(self) -> None:
        if self.doc.keys() <= self.seen:
            return
        unknown = [str(k) for k in self.doc if k not in self.seen]
        raise self.fail(unknown[0], "is not a known field")


# A dotted quad that ipaddress accepts (each of four ASCII decimals 0-255, no leading
# zero): recognised by one regex, ten times faster than parsing it; ipaddress says what is
# wrong with anything else.
_DOTTED_QUAD = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                          r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")


def _ipv4(value: str) -> None:
    if not _DOTTED_QUAD.fullmatch(value):
        ipaddress.IPv4Address(value)


def _ipv4_int(value: str) -> int:
    """A valid dotted quad (`_ipv4`) as its number."""
    a, b, c, d = value.split(".")
    return int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d)


def _ipv6(value: str) -> None:
    """SPEC §9: an address has one canonical form, so IPv4-mapped IPv6 is refused (it would
    name, as another spelling, an instance's IPv4 address)."""
    if ipaddress.IPv6Address(value).ipv4_mapped is not None:
        raise ValueError(f"{value} is an IPv4-mapped address: give the IPv4 address "
                         "in private-ipv4s instead")


@functools.lru_cache(maxsize=4096)
def _ipv4_network(value: str) -> ipaddress.IPv4Network:
    """A CIDR block, parsed once: the interfaces of a fleet share a few (and parsing one
    costs more than the rest of an interface together)."""
    return ipaddress.IPv4Network(value)


def _ipv4_net(value: str) -> None:
    _ipv4_network(value)


@functools.lru_cache(maxsize=4096)
def _ipv4_span(value: str) -> tuple[int, int]:
    """The first and last address of a CIDR block, as numbers."""
    network = _ipv4_network(value)
    return int(network.network_address), int(network.broadcast_address)


@functools.lru_cache(maxsize=4096)
def _ipv4_subnet_of(inner: str, outer: str) -> bool:
    return _ipv4_network(inner).subnet_of(_ipv4_network(outer))


def _ipv6_net(value: str) -> None:
    ipaddress.IPv6Network(value)


def _uuid(value: str) -> None:
    uuid.UUID(value)


def _timestamp(value: str) -> None:
    if not _TIMESTAMP.fullmatch(value):
        raise ValueError(f"{value!r} is not a UTC time like 2020-04-07T17:03:00Z")


def _drop_empty(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` without its None, [] and {} values (false, 0 and "" stay)."""
    return {k: v for k, v in doc.items()
            if v or (v is not None and not isinstance(v, list | dict))}


def _data_doc(key: str, blob: bytes | None) -> dict[str, str | None]:
    if blob is None:
        return {}
    try:
        return {key: blob.decode()}
    except UnicodeDecodeError:
        return {f"{key}-base64": base64.b64encode(blob).decode()}


@dataclass(frozen=True, slots=True)
class MetadataOptions:
    """SPEC §6: how an instance may reach the service (ModifyInstanceMetadataOptions)."""

    http_endpoint: str = "enabled"
    http_tokens: str = "optional"
    hop_limit: int = 1
    instance_metadata_tags: str = "disabled"

    @classmethod
    def from_doc(cls, doc: Any, where: str, base: MetadataOptions | None = None) -> Self:
        base = base or cls()
        r = _Reader(doc, where)
        opts = cls(
            http_endpoint=r.choice("http-endpoint", ("enabled", "disabled")) or base.http_endpoint,
            http_tokens=r.choice("http-tokens", ("optional", "required")) or base.http_tokens,
            hop_limit=r.integer("http-put-response-hop-limit", 1, 64) or base.hop_limit,
            instance_metadata_tags=r.choice("instance-metadata-tags", ("enabled", "disabled"))
            or base.instance_metadata_tags,
        )
        r.done()
        return opts

    def to_doc(self) -> dict[str, Any]:
        return {
            "http-endpoint": self.http_endpoint,
            "http-tokens": self.http_tokens,
            "http-put-response-hop-limit": self.hop_limit,
            "instance-metadata-tags": self.instance_metadata_tags,
        }

    @property
    def tokens_required(self) -> bool:
        return self.http_tokens == "required"

    @property
    def endpoint_enabled(self) -> bool:
        return self.http_endpoint == "enabled"

    @property
    def tags_exposed(self) -> bool:
        return self.instance_metadata_tags == "enabled"


@dataclass(frozen=True, slots=True)
class NetworkInterface:
    """One ENI. The first private address is the primary one."""

    mac: str
    network_interface_id: str
    vpc_id: str
    vswitch_id: str
    private_ipv4s: tuple[str, ...]
    vswitch_cidr_block: str
    vpc_cidr_block: str
    netmask: str | None = None
    gateway: str | None = None
    ipv4_prefixes: tuple[str, ...] = ()
    ipv6s: tuple[str, ...] = ()
    ipv6_prefixes: tuple[str, ...] = ()
    ipv6_gateway: str | None = None
    vswitch_ipv6_cidr_block: str | None = None
    vpc_ipv6_cidr_blocks: tuple[str, ...] = ()

    @classmethod
    def from_doc(cls, doc: Any, where: str) -> Self:
        r = _Reader(doc, where)
        nic = cls(
            mac=r.string("mac", _MAC, required=True) or "",
            network_interface_id=r.string("network-interface-id", _RESOURCE_ID,
                                          required=True) or "",
            vpc_id=r.string("vpc-id", _RESOURCE_ID, required=True) or "",
            vswitch_id=r.string("vswitch-id", _RESOURCE_ID, required=True) or "",
            private_ipv4s=r.strings("private-ipv4s", _ipv4) or (),
            vswitch_cidr_block=r.string("vswitch-cidr-block", required=True,
                                        check=_ipv4_net) or "",
            vpc_cidr_block=r.string("vpc-cidr-block", required=True, check=_ipv4_net) or "",
            netmask=r.string("netmask", check=_ipv4),
            gateway=r.string("gateway", check=_ipv4),
            ipv4_prefixes=r.strings("ipv4-prefixes", _ipv4_net) or (),
            ipv6s=r.strings("ipv6s", _ipv6) or (),
            ipv6_prefixes=r.strings("ipv6-prefixes", _ipv6_net) or (),
            ipv6_gateway=r.string("ipv6-gateway", check=_ipv6),
            vswitch_ipv6_cidr_block=r.string("vswitch-ipv6-cidr-block", check=_ipv6_net),
            vpc_ipv6_cidr_blocks=r.strings("vpc-ipv6-cidr-blocks", _ipv6_net) or (),
        )
        r.done()
        if not nic.private_ipv4s:
            raise r.fail("private-ipv4s", "needs at least the primary address")
        first, last = _ipv4_span(nic.vswitch_cidr_block)
        for i, ip in enumerate(nic.private_ipv4s):
            if not first <= _ipv4_int(ip) <= last:
                raise r.fail(f"private-ipv4s[{i}]",
                             f"{ip} is outside {_ipv4_network(nic.vswitch_cidr_block)}")
        if not _ipv4_subnet_of(nic.vswitch_cidr_block, nic.vpc_cidr_block):
            raise r.fail("vswitch-cidr-block", f"{_ipv4_network(nic.vswitch_cidr_block)} "
                                               f"is outside {nic.vpc_cidr_block}")
        return nic

    def to_doc(self) -> dict[str, Any]:
        return _drop_empty({
            "mac": self.mac,
            "network-interface-id": self.network_interface_id,
            "vpc-id": self.vpc_id,
            "vswitch-id": self.vswitch_id,
            "private-ipv4s": list(self.private_ipv4s),
            "vswitch-cidr-block": self.vswitch_cidr_block,
            "vpc-cidr-block": self.vpc_cidr_block,
            "netmask": self.netmask,
            "gateway": self.gateway,
            "ipv4-prefixes": list(self.ipv4_prefixes),
            "ipv6s": list(self.ipv6s),
            "ipv6-prefixes": list(self.ipv6_prefixes),
            "ipv6-gateway": self.ipv6_gateway,
            "vswitch-ipv6-cidr-block": self.vswitch_ipv6_cidr_block,
            "vpc-ipv6-cidr-blocks": list(self.vpc_ipv6_cidr_blocks),
        })

    @property
    def primary_ip(self) -> str:
        return self.private_ipv4s[0]

    @property
    def effective_netmask(self) -> str:
        return self.netmask or str(ipaddress.IPv4Network(self.vswitch_cidr_block).netmask)

    @property
    def effective_gateway(self) -> str:
        """Alibaba's VPC gateway is the vSwitch's third-from-last address (x.x.x.253 in a /24)."""
        if self.gateway:
            return self.gateway
        return str(ipaddress.IPv4Network(self.vswitch_cidr_block).broadcast_address - 2)

    @property
    def has_ipv6(self) -> bool:
        return bool(self.vpc_ipv6_cidr_blocks or self.ipv6s or self.vswitch_ipv6_cidr_block)


@dataclass(frozen=True, slots=True)
class Disk:
    serial: str
    id: str
    name: str | None = None

    @classmethod
    def from_doc(cls, doc: Any, where: str) -> Self:
        r = _Reader(doc, where)
        disk = cls(serial=r.string("serial", _SEGMENT, required=True) or "",
                   id=r.string("id", _RESOURCE_ID, required=True) or "",
                   name=r.string("name", max_len=128))
        r.done()
        return disk

    def to_doc(self) -> dict[str, Any]:
        return _drop_empty({"serial": self.serial, "id": self.id, "name": self.name})


@dataclass(frozen=True, slots=True)
class SystemEvent:
    """An active system event (SPEC §3, `maintenance/active-system-events`)."""

    event_id: str
    event_type: str
    event_cycle_status: str
    not_before: str
    reason: str = ""

    @classmethod
    def from_doc(cls, doc: Any, where: str) -> Self:
        r = _Reader(doc, where)
        event = cls(
            event_id=r.string("EventId", _RESOURCE_ID, required=True) or "",
            event_type=r.string("EventType", required=True, max_len=64) or "",
            event_cycle_status=r.string("EventCycleStatus", required=True, max_len=64) or "",
            not_before=r.string("NotBefore", required=True, check=_timestamp) or "",
            # to_doc writes an absent reason as "" (every served event has a Reason).
            reason="" if r.raw("Reason") == "" else r.string("Reason", max_len=512) or "",
        )
        r.done()
        return event

    def to_doc(self) -> dict[str, str]:
        return {"EventId": self.event_id, "EventType": self.event_type,
                "EventCycleStatus": self.event_cycle_status, "NotBefore": self.not_before,
                "Reason": self.reason}


def _extra_path(value: str) -> None:
    parts = value.split("/")
    if not all(_SEGMENT.fullmatch(p) for p in parts):
        raise ValueError(f"{value!r} must be /-separated names of letters, digits, . _ -")
    if parts[:2] == ["ram", "security-credentials"] or parts[0] == "all":
        raise ValueError(f"{value!r} is reserved")


def _check_extra(extra: dict[str, str] | None, where: str) -> dict[str, str]:
    for path in extra or {}:
        try:
            _extra_path(path)
        except ValueError as exc:
            raise ValidationError(f"{where}.{path}", str(exc)) from None
    return dict(extra or {})


# Values an instance inherits from the fleet defaults when it does not set them.
@dataclass(frozen=True, slots=True)
class Inheritable:
    """The items that fleet defaults give every instance, and an instance may override."""

    region_id: str | None = None
    zone_id: str | None = None
    owner_account_id: str | None = None
    image_id: str | None = None
    instance_type: str | None = None
    virtualization_solution: str | None = None
    virtualization_solution_version: str | None = None
    max_netbw_egress: int | None = None
    max_netbw_ingress: int | None = None
    dns_nameservers: tuple[str, ...] | None = None
    ntp_servers: tuple[str, ...] | None = None
    source_address: str | None = None
    kms_server: str | None = None
    wsus_server: str | None = None
    wsus_status_server: str | None = None
    hibernation_configured: bool | None = None
    ram_role: str | None = None

    @staticmethod
    def read(r: _Reader) -> dict[str, Any]:
        return {
            "region_id": r.string("region-id", _RESOURCE_ID_LOOSE),
            "zone_id": r.string("zone-id", _RESOURCE_ID_LOOSE),
            "owner_account_id": r.string("owner-account-id", _ACCOUNT_ID,
                                         numeric=True),
            "image_id": r.string("image-id", max_len=128),
            "instance_type": r.string("instance-type", max_len=64),
            "virtualization_solution": r.string("virtualization-solution", max_len=64),
            "virtualization_solution_version": r.string("virtualization-solution-version",
                                                        max_len=64, numeric=True),
            "max_netbw_egress": r.integer("max-netbw-egress", 0, 10**9),
            "max_netbw_ingress": r.integer("max-netbw-ingress", 0, 10**9),
            "dns_nameservers": r.strings("dns-nameservers"),
            "ntp_servers": r.strings("ntp-servers"),
            "source_address": r.string("source-address", max_len=256),
            "kms_server": r.string("kms-server", max_len=256),
            "wsus_server": r.string("wsus-server", max_len=256),
            "wsus_status_server": r.string("wsus-status-server", max_len=256),
            "hibernation_configured": r.boolean("hibernation-configured"),
            "ram_role": r.string("ram-role", _ROLE_NAME),
        }

    def inheritable_doc(self) -> dict[str, Any]:
        return {
            "region-id": self.region_id,
            "zone-id": self.zone_id,
            "owner-account-id": self.owner_account_id,
            "image-id": self.image_id,
            "instance-type": self.instance_type,
            "virtualization-solution": self.virtualization_solution,
            "virtualization-solution-version": self.virtualization_solution_version,
            "max-netbw-egress": self.max_netbw_egress,
            "max-netbw-ingress": self.max_netbw_ingress,
            "dns-nameservers": None if self.dns_nameservers is None
            else list(self.dns_nameservers),
            "ntp-servers": None if self.ntp_servers is None else list(self.ntp_servers),
            "source-address": self.source_address,
            "kms-server": self.kms_server,
            "wsus-server": self.wsus_server,
            "wsus-status-server": self.wsus_status_server,
            "hibernation-configured": self.hibernation_configured,
            "ram-role": self.ram_role,
        }


_RESOURCE_ID_LOOSE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_ACCOUNT_ID = re.compile(r"\d{1,20}")
_HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,63}")
_ROLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_INHERITABLE = tuple(f.name for f in fields(Inheritable))


@dataclass(frozen=True, slots=True)
class FleetDefaults:
    """What every instance inherits unless it says otherwise."""

    values: Inheritable = field(default_factory=Inheritable)
    metadata_options: MetadataOptions = field(default_factory=MetadataOptions)
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_doc(cls, doc: Any, where: str = "defaults") -> Self:
        r = _Reader(doc or {}, where)
        values = Inheritable(**Inheritable.read(r))
        opts = r.raw("metadata-options")
        defaults = cls(
            values=values,
            metadata_options=MetadataOptions.from_doc(opts or {}, r.path("metadata-options")),
            extra=_check_extra(r.mapping("extra"), r.path("extra")),
        )
        r.done()
        return defaults

    def to_doc(self) -> dict[str, Any]:
        doc = self.values.inheritable_doc()
        if self.metadata_options != MetadataOptions():
            doc["metadata-options"] = self.metadata_options.to_doc()
        doc["extra"] = self.extra
        return _drop_empty(doc)


@dataclass(frozen=True, slots=True)
class Instance:
    """One ECS instance as the operator described it; None means "inherit the default"."""

    instance_id: str
    network_interfaces: tuple[NetworkInterface, ...]
    values: Inheritable = field(default_factory=Inheritable)
    # Placement: the host the instance runs on (ECS's DedicatedHostId). A server scoped to
    # hosts serves only the instances placed on them; it is never shown to the instance.
    dedicated_host_id: str | None = None
    instance_name: str | None = None
    hostname: str | None = None
    serial_number: str | None = None
    last_host_landing_time: str | None = None
    image_product_code: str | None = None
    image_charge_type: str | None = None
    public_ipv4: str | None = None
    eipv4: str | None = None
    launch_index: int = 0
    disks: tuple[Disk, ...] = ()
    public_keys: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    user_data: bytes | None = None
    vendor_data: bytes | None = None
    metadata_options: dict[str, Any] | None = None
    extra: dict[str, str] = field(default_factory=dict)
    spot_termination_time: str | None = None
    events: tuple[SystemEvent, ...] = ()

    @classmethod
    def from_doc(cls, doc: Any, where: str = "instance") -> Self:
        r = _Reader(doc, where)
        instance_id = r.string("instance-id", _INSTANCE_ID, required=True) or ""
        if where == "instance":
            r.where = where = f"instance {instance_id}"
        values = Inheritable(**Inheritable.read(r))
        opts = r.raw("metadata-options")
        if opts is not None:
            MetadataOptions.from_doc(opts, r.path("metadata-options"))  # validate now
        instance = cls(
            instance_id=instance_id,
            values=values,
            dedicated_host_id=r.string("dedicated-host-id", HOST_ID),
            instance_name=r.string("instance-name", max_len=128),
            hostname=r.string("hostname", _HOSTNAME),
            serial_number=r.string("serial-number", check=_uuid),
            last_host_landing_time=r.string("last-host-landing-time", max_len=64),
            image_product_code=r.string("image-product-code", max_len=128),
            image_charge_type=r.string("image-charge-type", max_len=64),
            public_ipv4=r.string("public-ipv4", check=_ipv4),
            eipv4=r.string("eipv4", check=_ipv4),
            launch_index=r.integer("launch-index", 0, 10**6) or 0,
            network_interfaces=r.records("network-interfaces", NetworkInterface.from_doc) or (),
            disks=r.records("disks", Disk.from_doc) or (),
            public_keys=r.mapping("public-keys", _SEGMENT) or {},
            tags=r.mapping("tags") or {},
            user_data=r.data("user-data"),
            vendor_data=r.data("vendor-data"),
            metadata_options=opts,
            extra=_check_extra(r.mapping("extra"), r.path("extra")),
            spot_termination_time=r.string("spot-termination-time", check=_timestamp),
            events=r.records("events", SystemEvent.from_doc) or (),
        )
        r.done()
        instance._check_consistency(r)
        return instance

    def _check_consistency(self, r: _Reader) -> None:
        if not self.network_interfaces:
            raise r.fail("network-interfaces", "needs at least the primary interface")
        vpcs = {nic.vpc_id for nic in self.network_interfaces}
        if len(vpcs) > 1:
            raise r.fail("network-interfaces", "all interfaces must be in one VPC")
        seen: set[str] = set()
        for i, nic in enumerate(self.network_interfaces):
            for key, value in (("mac", nic.mac), ("private-ipv4s", nic.private_ipv4s)):
                for v in (value,) if isinstance(value, str) else value:
                    if v in seen:
                        raise r.fail(f"network-interfaces[{i}].{key}", f"{v} is used twice")
                    seen.add(v)
        serials = [d.serial for d in self.disks]
        if len(set(serials)) != len(serials):
            raise r.fail("disks", "serials must be unique")

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"instance-id": self.instance_id}
        doc |= {
            "instance-name": self.instance_name,
            "hostname": self.hostname,
            "serial-number": self.serial_number,
        }
        doc |= self.values.inheritable_doc()
        doc |= {
            "dedicated-host-id": self.dedicated_host_id,
            "last-host-landing-time": self.last_host_landing_time,
            "image-product-code": self.image_product_code,
            "image-charge-type": self.image_charge_type,
            "public-ipv4": self.public_ipv4,
            "eipv4": self.eipv4,
            "launch-index": self.launch_index or None,
            "network-interfaces": [nic.to_doc() for nic in self.network_interfaces],
            "disks": [d.to_doc() for d in self.disks],
            "public-keys": self.public_keys,
            "tags": self.tags,
        }
        doc |= _data_doc("user-data", self.user_data)
        doc |= _data_doc("vendor-data", self.vendor_data)
        doc |= {
            "metadata-options": self.metadata_options,
            "extra": self.extra,
            "spot-termination-time": self.spot_termination_time,
            "events": [e.to_doc() for e in self.events],
        }
        return _drop_empty(doc)

    @property
    def vpc_id(self) -> str:
        return self.network_interfaces[0].vpc_id

    @property
    def primary(self) -> NetworkInterface:
        return self.network_interfaces[0]

    def addresses(self) -> Iterator[str]:
        """Every address the instance may call from: all private IPv4s and IPv6s."""
        for nic in self.network_interfaces:
            yield from nic.private_ipv4s
            yield from (canonical_ipv6(ip) for ip in nic.ipv6s)


def canonical_ipv6(ip: str) -> str:
    """SPEC §9: an address has one canonical form (a valid IPv4 string already is one)."""
    return str(ipaddress.IPv6Address(ip))


@dataclass(frozen=True, slots=True)
class Effective:
    """An instance with its defaults applied: what the catalogue renders."""

    instance: Instance
    values: Inheritable
    options: MetadataOptions
    extra: dict[str, str]
    hostname: str
    instance_name: str
    serial_number: str


def effective(instance: Instance, defaults: FleetDefaults) -> Effective:
    """Apply the fleet defaults to one instance."""
    inherited = {name: getattr(instance.values, name) for name in _INHERITABLE}
    for name, value in inherited.items():
        if value is None:
            inherited[name] = getattr(defaults.values, name)
    bare = instance.instance_id.removeprefix("i-")
    hostname = instance.hostname or f"iZ{bare}Z"
    options = defaults.metadata_options
    if instance.metadata_options is not None:
        options = MetadataOptions.from_doc(instance.metadata_options, "metadata-options",
                                           base=options)
    return Effective(
        instance=instance,
        values=replace(defaults.values, **inherited),
        options=options,
        extra=defaults.extra | instance.extra,
        hostname=hostname,
        instance_name=instance.instance_name or hostname,
        serial_number=instance.serial_number
        or str(uuid.uuid5(uuid.NAMESPACE_URL, f"ecs-imds:{instance.instance_id}")),
    )


@dataclass(frozen=True, slots=True)
class Fleet:
    defaults: FleetDefaults
    instances: tuple[Instance, ...]

    @classmethod
    def from_doc(cls, doc: Any) -> Self:
        r = _Reader(doc if doc is not None else {}, "")
        defaults = FleetDefaults.from_doc(r.raw("defaults") or {})

        def parse(item: Any, where: str) -> Instance:
            iid = item.get("instance-id") if isinstance(item, dict) else None
            label = f"{where} ({iid})" if isinstance(iid, str) else where
            return Instance.from_doc(item, label)

        instances = r.records("instances", parse) or ()
        r.done()
        check_unique(instances)
        return cls(defaults=defaults, instances=instances)

    def to_doc(self) -> dict[str, Any]:
        return {"defaults": self.defaults.to_doc(),
                "instances": [i.to_doc() for i in self.instances]}


def check_unique(instances: tuple[Instance, ...] | list[Instance]) -> None:
    """No two instances share an id, nor an address within one VPC (SPEC §1: the caller is
    found by VPC and source address, so such a fleet could not be served)."""
    ids: set[str] = set()
    owners: dict[tuple[str, str], str] = {}
    for i, inst in enumerate(instances):
        where = f"instances[{i}] ({inst.instance_id})"
        if inst.instance_id in ids:
            raise ValidationError(f"{where}.instance-id", "appears twice")
        ids.add(inst.instance_id)
        for ip in inst.addresses():
            other = owners.setdefault((inst.vpc_id, ip), inst.instance_id)
            if other != inst.instance_id:
                raise ValidationError(f"{where}.network-interfaces",
                                      f"{ip} in {inst.vpc_id} already belongs to {other}")
