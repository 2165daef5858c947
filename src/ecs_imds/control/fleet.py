"""Operator-level changes to the fleet: validated whole, written in one transaction.

A fleet file or change that fails validation leaves the store exactly as it was. A write
costs the same in a fleet of a thousand instances as in one of a hundred thousand: it reads
and writes only what it changes, renders the instance once (to check it can be served),
and leaves the uniqueness of addresses to the store's index, which names the instance that
holds an address already.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from ecs_imds.errors import AddressTaken, Conflict, InstanceNotFound, ValidationError
from ecs_imds.protocol.catalogue import check_renders
from ecs_imds.protocol.model import Fleet, FleetDefaults, Instance, canonical_ipv6, effective
from ecs_imds.store import Store, StoredInstance


def validate(defaults: FleetDefaults, instances: Sequence[Instance], where: str = "instances"
             ) -> None:
    """What only rendering can tell (required inherited values, extra paths), for each
    instance under `defaults`; the error names it as `where[i] (its id)`."""
    for i, inst in enumerate(instances):
        try:
            check_renders(inst, effective(inst, defaults))
        except ValidationError as exc:
            raise ValidationError(f"{where}[{i}] ({inst.instance_id})." +
                                  exc.field.split(".", 1)[-1], exc.message) from None


def address_taken(exc: AddressTaken, instances: Sequence[Instance], where: str | None
                  ) -> ValidationError:
    """The store's refusal as the operator's error: the claiming instance's field (in the
    document `where`, or alone when None) and the instance that holds the address."""
    for i, inst in enumerate(instances):
        if inst.instance_id == exc.claimant:
            field = _address_field(inst, exc.address)
            prefix = "" if where is None else f"{where}[{i}] ({inst.instance_id})."
            return ValidationError(prefix + field, f"{exc.address} in {exc.vpc_id} "
                                   f"already belongs to {exc.owner}")
    return ValidationError("network-interfaces", str(exc))


def _address_field(inst: Instance, address: str) -> str:
    for n, nic in enumerate(inst.network_interfaces):
        for k, ip in enumerate(nic.private_ipv4s):
            if ip == address:
                return f"network-interfaces[{n}].private-ipv4s[{k}]"
        for k, ip in enumerate(nic.ipv6s):
            if canonical_ipv6(ip) == address:
                return f"network-interfaces[{n}].ipv6s[{k}]"
    return "network-interfaces"


def import_fleet(store: Store, doc: Any, replace: bool = False) -> int:
    """Load a fleet document (defaults and instances). Without `replace`, instances already
    in the store and not in the document are kept, and so are the defaults when the
    document has none. Returns the new store version."""
    fleet = Fleet.from_doc(doc)
    has_defaults = isinstance(doc, dict) and doc.get("defaults") is not None
    stored = store.load_defaults()
    defaults = fleet.defaults if has_defaults or replace else FleetDefaults.from_doc(stored)
    validate(defaults, fleet.instances)
    if not replace and has_defaults and defaults.to_doc() != stored:
        # New defaults: the instances kept must still be served under them.
        given = {i.instance_id for i in fleet.instances}
        validate(defaults, [Instance.from_doc(s.doc) for s in store.load_instances()
                            if s.instance_id not in given], "stored instances")
    try:
        return store.write_fleet(defaults.to_doc() if has_defaults or replace else None,
                                 [i.to_doc() for i in fleet.instances], replace=replace)
    except AddressTaken as exc:
        raise address_taken(exc, fleet.instances, "instances") from None


def _defaults(store: Store) -> FleetDefaults:
    return FleetDefaults.from_doc(store.load_defaults())


def read_instance(store: Store, instance_id: str) -> StoredInstance:
    found = store.load_instances([instance_id])
    if not found:
        raise InstanceNotFound(instance_id)
    return found[0]


def write_instance(store: Store, doc: Any, expect: int | None) -> tuple[Instance, int]:
    """Validate one instance document and write it if its revision is still `expect`
    (0: a new instance). Returns it in canonical form and its revision."""
    inst = Instance.from_doc(doc)
    try:
        check_renders(inst, effective(inst, _defaults(store)))
    except ValidationError as exc:
        raise ValidationError(exc.field.split(".", 1)[-1], exc.message) from None
    try:
        return inst, store.put_instance(inst.to_doc(), expect)
    except AddressTaken as exc:
        raise address_taken(exc, [inst], None) from None


def modify_instance(store: Store, instance_id: str, mutate: Callable[[dict[str, Any]], None],
                    expect: int | None = None) -> tuple[Instance, int]:
    """Read, change with `mutate`, validate and write one instance. With `expect`, the
    write happens only at that revision; without, a concurrent change makes it start over
    on the newer document, so no update is ever lost."""
    while True:
        current = read_instance(store, instance_id)
        if expect is not None and current.revision != expect:
            raise Conflict(instance_id, current.revision)
        doc = copy.deepcopy(current.doc)
        mutate(doc)
        if doc.get("instance-id") != instance_id:
            raise ValidationError("instance-id", "cannot be changed")
        try:
            return write_instance(store, doc, current.revision)
        except Conflict:
            if expect is not None:
                raise


def delete_instance(store: Store, instance_id: str, expect: int | None = None) -> int:
    try:
        return store.delete_instance(instance_id, expect)
    except Conflict as exc:
        if exc.current == 0:
            raise InstanceNotFound(instance_id) from None
        raise


def set_defaults(store: Store, doc: Any) -> tuple[FleetDefaults, int]:
    """Replace the fleet defaults; every instance must still render under them (the one
    write whose cost grows with the fleet: it changes what every instance sees)."""
    defaults = FleetDefaults.from_doc(doc)
    validate(defaults, [Instance.from_doc(s.doc) for s in store.load_instances()])
    return defaults, store.write_fleet(defaults.to_doc(), [])


def export_fleet(store: Store) -> dict[str, Any]:
    """The fleet in the canonical form `import_fleet` reads."""
    instances = tuple(Instance.from_doc(s.doc) for s in store.load_instances())
    return Fleet(FleetDefaults.from_doc(store.load_defaults()), instances).to_doc()


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (user data, scripts) as YAML literal blocks, readable in a diff."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value and "\r" not in value else None
    if "\x85" in value:  # PyYAML writes NEL raw, then reads it back as a line break
        style = '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(doc: dict[str, Any], as_json: bool = False) -> str:
    """A fleet document as text: YAML (the default) or JSON."""
    if as_json:
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
