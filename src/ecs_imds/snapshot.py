"""The immutable, in-memory view of the fleet that the data plane serves from.

A snapshot is built beside the one in use and swapped in by one assignment; nothing in it
changes after it is built, so the hot path reads it without locks and never touches the store.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from .catalogue import Dynamic, Rendered
from .tokens import KeyRing


class DynamicSource(Protocol):
    """Computes the answers that depend on secrets and the clock (credentials, PKCS#7).

    Returns (status, body, content type); it never raises for a caller's input.
    """

    def answer(self, entry: Dynamic, caller: Rendered, query: str,
               now: float) -> tuple[int, bytes, bytes]: ...


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    by_address: dict[tuple[str, str], Rendered]
    by_id: dict[str, Rendered]
    key_ring: KeyRing
    dynamic: DynamicSource
    built_at: float = 0.0
    stale: bool = field(default=False, compare=False)

    def identify(self, vpc_id: str, ip: str, aliases: dict[str, str] | None = None
                 ) -> Rendered | None:
        """The instance a request comes from: by the listener's VPC and the peer address.

        `aliases` is a listener's own map from peer address to instance id (the demo's
        127.0.0.1); it is configuration, never something a request can say.
        """
        if aliases:
            alias = aliases.get(ip)
            if alias is not None:
                return self.by_id.get(alias)
        return self.by_address.get((vpc_id, ip))


def index(rendered: Iterable[tuple[Rendered, Iterable[str]]]
          ) -> tuple[dict[tuple[str, str], Rendered], dict[str, Rendered]]:
    """Index instances by (vpc, address) and by id; addresses are normalised."""
    by_address: dict[tuple[str, str], Rendered] = {}
    by_id: dict[str, Rendered] = {}
    for r, addresses in rendered:
        by_id[r.instance_id] = r
        for ip in addresses:
            by_address[(r.vpc_id, normalise_ip(ip))] = r
    return by_address, by_id


def normalise_ip(ip: str) -> str:
    """The canonical text of an address; IPv4-mapped IPv6 becomes plain IPv4."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)
