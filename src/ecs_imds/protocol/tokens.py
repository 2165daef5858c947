"""Stateless session tokens (SPEC §4): HMAC-SHA256 over (key id, instance id, expiry, nonce).

A token is `base64url(kid:u32 expiry:u32 nonce:8 bytes mac:32 bytes)`, 64 ASCII characters.
The instance id is not in the token, it is bound by the MAC: a token verifies only for the
instance it was minted for, on any server holding the key ring, across restarts. Rotation
adds a key; older keys keep verifying until every token they minted has expired.
"""

from __future__ import annotations

import base64
import hmac
import itertools
import os
import re
import struct
from dataclasses import dataclass

from ecs_imds.protocol.model import MAX_TOKEN_TTL

_HEAD = struct.Struct(">IIQ")
_MAC_LEN = 32
_DOMAIN = b"ecs-imds token v1\0"
_SHAPE = re.compile(r"[A-Za-z0-9_-]{64}")


@dataclass(frozen=True, slots=True)
class TokenKey:
    kid: int
    secret: bytes
    created_at: int

    @classmethod
    def generate(cls, kid: int, now: int) -> TokenKey:
        return cls(kid=kid, secret=os.urandom(32), created_at=now)


def _mac(secret: bytes, instance_id: str, head: bytes) -> bytes:
    return hmac.digest(secret, b"%s%s\0%s" % (_DOMAIN, instance_id.encode(), head), "sha256")


class KeyRing:
    """The keys a server mints and verifies with; the newest one mints.

    Verification remembers the tokens it found valid (token → instance, expiry), so an
    instance that sends the same token with every request costs one dict lookup, not an
    HMAC. Only valid tokens are remembered, a key ring never changes its keys, and an entry
    is used only while `now` is before its expiry: the answer is the same as verifying again.
    """

    __slots__ = ("_by_kid", "_valid", "current", "keys")

    # Bounds the memory of remembered tokens; past it the memory starts over (they verify again).
    REMEMBERED = 65536

    def __init__(self, keys: list[TokenKey]) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        self.keys = list(keys)
        self._by_kid = {k.kid: k for k in keys}
        self.current = max(keys, key=lambda k: (k.created_at, k.kid))
        self._valid: dict[str, tuple[str, int]] = {}

    @property
    def kids(self) -> list[int]:
        return sorted(self._by_kid)

    def mint(self, instance_id: str, now: int, ttl: int, nonce: int | None = None) -> str:
        if not 1 <= ttl <= MAX_TOKEN_TTL:
            raise ValueError("ttl out of range")
        if nonce is None:
            nonce = int.from_bytes(os.urandom(8), "big")
        key = self.current
        head = _HEAD.pack(key.kid, now + ttl, nonce)
        return base64.urlsafe_b64encode(head + _mac(key.secret, instance_id, head)).decode()

    def verify(self, token: str, instance_id: str, now: int) -> bool:
        """True only for an unexpired token minted for this instance by a key we hold."""
        known = self._valid.get(token)
        if known is not None and known[0] == instance_id:
            return now < known[1]
        if not _SHAPE.fullmatch(token):
            return False
        raw = base64.urlsafe_b64decode(token)
        head, mac = raw[:_HEAD.size], raw[_HEAD.size:]
        kid, expiry, _ = _HEAD.unpack(head)
        key = self._by_kid.get(kid)
        if key is None or expiry <= now:
            return False
        if not hmac.compare_digest(mac, _mac(key.secret, instance_id, head)):
            return False
        if len(self._valid) >= self.REMEMBERED:
            self._valid.clear()
        self._valid[token] = (instance_id, expiry)
        return True


def keys_to_keep(keys: list[TokenKey], now: int) -> list[TokenKey]:
    """After a rotation: the newest key, and every older key that may still have live tokens
    (one whose successor was created less than the longest TTL ago)."""
    ordered = sorted(keys, key=lambda k: (k.created_at, k.kid))
    keep = [ordered[-1]]
    for older, newer in itertools.pairwise(ordered):
        if newer.created_at + MAX_TOKEN_TTL > now:
            keep.append(older)
    return sorted(keep, key=lambda k: k.kid)
