"""Who may read metadata (SPEC §4, §6), as one pure decision.

Kept apart from routing so that every path, listing and leaf goes through the same gate.
"""

from __future__ import annotations

from collections.abc import Mapping

from ecs_imds.protocol.catalogue import Rendered
from ecs_imds.protocol.tokens import KeyRing

TOKEN_HEADER = "x-aliyun-ecs-metadata-token"
TTL_HEADER = "x-aliyun-ecs-metadata-token-ttl-seconds"
# A token must never be handed to a proxy (SPEC §4.1): these headers say one is in the way.
PROXY_HEADERS = ("x-forwarded-for", "forwarded")

ALLOWED = 0


def reachable(caller: Rendered | None) -> int:
    """403 for an address that is no instance's, or an instance whose endpoint is off."""
    if caller is None or not caller.options.endpoint_enabled:
        return 403
    return ALLOWED


def token_gate(caller: Rendered, headers: Mapping[str, str], key_ring: KeyRing,
               now: int) -> int:
    """For a read: a token, when present, must be valid (else 401, in both modes);
    when absent, the instance must not require one (else 403)."""
    token = headers.get(TOKEN_HEADER)
    if token is not None:
        return ALLOWED if key_ring.verify(token, caller.instance_id, now) else 401
    return 403 if caller.options.tokens_required else ALLOWED


def proxied(headers: Mapping[str, str]) -> bool:
    return any(name in headers for name in PROXY_HEADERS)


def parse_ttl(value: str | None, maximum: int) -> int | None:
    """The token TTL header: a whole number from 1 to `maximum`, else None (→ 400)."""
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 6:
        return None
    ttl = int(value)
    return ttl if 1 <= ttl <= maximum else None
