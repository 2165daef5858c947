"""Operator-level changes to the fleet: validated whole, written in one transaction.

A fleet file or change that fails validation leaves the store exactly as it was. A write
costs the same in a fleet of a thousand instances as in one of a hundred thousand: it reads
and writes only what it changes, checks it can be served (`catalogue.check_serves`), and
leaves the uniqueness of addresses to the store's index, which names the instance that
holds an address already.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from ecs_imds.collector import release
from ecs_imds.errors import AddressTaken, Conflict, InstanceNotFound, ValidationError
from ecs_imds.protocol.catalogue import Pool, check_serves
from ecs_imds.protocol.model import Fleet, FleetDefaults, Instance, canonical_ipv6
from ecs_imds.store import Store, StoredInstance


def validate(defaults: FleetDefaults, instances: Sequence[Instance], where: str = "instances",
             progress: Callable[[int], None] | None = None) -> None:
    """What only rendering can tell (required inherited values, extra paths), for each
    instance under `defaults`; the error names it as `where[i] (its id)`. `progress` hears
    how many are done, every thousand."""
    pool = Pool()
    for i, inst in enumerate(instances):
        try:
            check_serves(inst, defaults, pool)
        except ValidationError as exc:
            raise ValidationError(f"{where}[{i}] ({inst.instance_id})." +
                                  exc.field.split(".", 1)[-1], exc.message) from None
        if progress is not None and i % 1000 == 999:
            progress(i + 1)
    if progress is not None:
        progress(len(instances))


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


# Stages of an import, as its progress reports them: (stage, done, total).
Progress = Callable[[str, int, int], None]


def no_progress(stage: str, done: int, total: int) -> None:
    """Progress that nobody watches."""


def defaults_after(stored: dict[str, Any], doc: Any, replace: bool) -> dict[str, Any] | None:
    """The fleet defaults a fleet document leaves in the store; None when it leaves them
    as they are.

    Without `replace`, the document's `defaults` are a JSON merge patch (RFC 7396) on the
    stored ones: a key given replaces that key (a mapping, such as `metadata-options` or
    `extra`, is merged key by key), `null` removes a key, a key not given is kept. With
    `replace` the document is the whole fleet: its defaults replace the stored ones, and a
    document without defaults leaves none."""
    given = doc.get("defaults") if isinstance(doc, dict) else None
    if replace:
        return FleetDefaults.from_doc(given or {}).to_doc()
    if given is None:
        return None
    if not isinstance(given, dict):
        raise ValidationError("defaults", "must be a mapping")
    merged = copy.deepcopy(stored)
    merge_patch(merged, given)
    return FleetDefaults.from_doc(merged).to_doc()


def import_fleet(store: Store, doc: Any, replace: bool = False,
                 note: tuple[str, bytes] | None = None, progress: Progress = no_progress
                 ) -> int:
    """Load a fleet document (defaults and instances). Without `replace`, instances already
    in the store and not in the document are kept, and the document's defaults are merged
    into the stored ones (`defaults_after`). `note` is written with it (see
    `Store.write_fleet`). Returns the new store version."""
    progress("parse", 0, 1)
    fleet = Fleet.from_doc(doc)
    stored = store.load_defaults()
    after = defaults_after(stored, doc, replace)
    defaults = FleetDefaults.from_doc(stored if after is None else after)
    total = len(fleet.instances)
    validate(defaults, fleet.instances, progress=lambda done: progress("validate", done, total))
    if not replace and after is not None and after != stored:
        # New defaults: the instances kept must still be served under them.
        given = {i.instance_id for i in fleet.instances}
        validate(defaults, [Instance.from_doc(s.doc) for s in store.load_instances()
                            if s.instance_id not in given], "stored instances")
    progress("write", 0, total)
    docs = [i.to_doc() for i in fleet.instances]
    try:
        version = store.write_fleet(after, docs, replace=replace, note=note)
    except AddressTaken as exc:
        raise address_taken(exc, fleet.instances, "instances") from None
    finally:
        release(docs)
    progress("write", total, total)
    return version


def plan_import(store: Store, doc: Any, replace: bool = False) -> dict[str, Any]:
    """What importing `doc` would change, without changing anything: the instances it
    would add, change and remove, and the defaults it would change (key: [before, after]).
    Everything is validated as the import would (an error raises the same)."""
    fleet = Fleet.from_doc(doc)
    stored_defaults = store.load_defaults()
    after = defaults_after(stored_defaults, doc, replace)
    defaults = FleetDefaults.from_doc(stored_defaults if after is None else after)
    validate(defaults, fleet.instances)
    current = {s.instance_id: s.doc for s in store.load_instances(
        [i.instance_id for i in fleet.instances])}
    given = {i.instance_id: i.to_doc() for i in fleet.instances}
    removed = sorted(set(store.revisions()) - set(given)) if replace else []
    changes = {} if after is None else {
        key: [stored_defaults.get(key), after.get(key)]
        for key in sorted({*stored_defaults, *after})
        if stored_defaults.get(key) != after.get(key)}
    return {"Added": sorted(i for i in given if i not in current),
            "Changed": sorted(i for i, d in given.items() if i in current and current[i] != d),
            "Unchanged": sum(1 for i, d in given.items() if current.get(i) == d),
            "Removed": removed, "Defaults": changes}


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7396 JSON merge patch, in place: null deletes, objects merge, the rest replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_patch(target[key], value)
        else:
            target[key] = value


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
        check_serves(inst, _defaults(store))
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
