"""The headers that matter to access (SPEC §4): the token, its TTL, and a proxy in the way.

`decide` applies them; the byte-level fast path looks for the same names.
"""

from __future__ import annotations

from collections.abc import Mapping

TOKEN_HEADER = "x-aliyun-ecs-metadata-token"
TTL_HEADER = "x-aliyun-ecs-metadata-token-ttl-seconds"
# A token must never be handed to a proxy (SPEC §4.1): these headers say one is in the way.
PROXY_HEADERS = ("x-forwarded-for", "forwarded")


def proxied(headers: Mapping[str, str]) -> bool:
    return any(name in headers for name in PROXY_HEADERS)


def parse_ttl(value: str | None, maximum: int) -> int | None:
    """The token TTL header: a whole number from 1 to `maximum`, else None (→ 400). White
    space around it is not part of the value (HTTP's optional white space)."""
    if value is None:
        return None
    value = value.strip(" \t")
    if not value.isascii() or not value.isdigit() or len(value) > 6:
        return None
    ttl = int(value)
    return ttl if 1 <= ttl <= maximum else None
