"""Bearer tokens for the control plane, stateless like the instances' tokens.

A token is `<scope>.<name>.<mac>`: the MAC (HMAC-SHA256 with a secret kept in the store)
covers scope and name, so every server of a fleet verifies every token, and nothing but
the secret has to be stored. `admin` tokens may change things, `read` tokens may only look.
Rotating the secret revokes every token at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path

SCOPES = ("admin", "read")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
SECRET_NAME = "api-auth"


@dataclass(frozen=True, slots=True)
class Principal:
    scope: str
    name: str

    @property
    def may_write(self) -> bool:
        return self.scope == "admin"


class Authority:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, scope: str, name: str) -> str:
        digest = hmac.new(self._secret, f"{scope}.{name}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(self, scope: str, name: str) -> str:
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
        if not _NAME.fullmatch(name):
            raise ValueError("name must be 1-64 letters, digits, _ or -")
        return f"{scope}.{name}.{self._mac(scope, name)}"

    def check(self, authorization: str | None) -> Principal | None:
        """The principal of an `Authorization: Bearer …` header, or None."""
        if not authorization:
            return None
        kind, _, token = authorization.partition(" ")
        if kind.lower() != "bearer":
            return None
        parts = token.strip().split(".")
        if len(parts) != 3 or parts[0] not in SCOPES or not _NAME.fullmatch(parts[1]):
            return None
        if not hmac.compare_digest(parts[2].encode(), self._mac(parts[0], parts[1]).encode()):
            return None
        return Principal(parts[0], parts[1])


def new_secret() -> bytes:
    return os.urandom(32)


def write_admin_token(path: Path, token: str) -> bool:
    """Write the admin token (mode 0600) unless the file exists; True when written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return True
