"""Copying a fleet from one store to another (SQLite ⇄ PostgreSQL) without loss.

Everything goes: defaults, instances (in their order), the token key ring (so tokens
already handed out stay valid) and the secrets (so the identity certificate and the RAM
credentials stay the same). It is read in one transaction, written in one, and read back
and compared. Versions and revisions are the target's own: they only order changes within
one store.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecs_imds.errors import SourceEmpty, TargetNotEmpty
from ecs_imds.store.base import Store


@dataclass(frozen=True, slots=True)
class Copied:
    instances: int
    token_keys: int
    secrets: int
    version: int  # the target's version after the copy


def copy_store(source: Store, target: Store, replace: bool = False) -> Copied:
    """Copy everything from `source` into `target`. Without `replace`, a target that already
    holds instances or defaults is refused (keys and secrets made by a server that merely
    started on it are overwritten: the source's are the fleet's)."""
    if not replace and (target.revisions() or target.load_defaults()):
        raise TargetNotEmpty("the target store already holds a fleet (use --replace to "
                             "overwrite it)")
    dump = source.dump()
    if not (dump.instances or dump.defaults or dump.token_keys or dump.secrets):
        raise SourceEmpty("the source store is empty: nothing to copy")
    version = target.restore(dump)
    if target.dump() != dump:
        raise RuntimeError("the copy differs from the source after writing it")
    return Copied(len(dump.instances), len(dump.token_keys), len(dump.secrets), version)
