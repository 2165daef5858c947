"""Bearer tokens for the control plane: stateless to check, recorded to list and revoke.

A token is `<scope>.<name>.<id>.<expires>.<mac>`: the MAC (HMAC-SHA256 with the fleet's API
secret, kept in the store) covers everything before it, so every server of a fleet checks
every token without asking the store. `admin` tokens may change things, `read` tokens may
only look. A token is refused after its expiry, when its id has been revoked, and when the
secret has been rotated (which is how every token is revoked at once).

Each token issued is recorded in the store (`RECORDS` + its id: never the token itself,
only what it says), so that `admin token list` can show them and `revoke` can name one.
The set of revoked ids and the secret are held in memory and refreshed whenever the store
says the fleet's keys changed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from ecs_imds.store import Store

SCOPES = ("admin", "read")
SECRET_NAME = "api-auth"
RECORDS = "api-token/"  # named values in the store: RECORDS + token id → TokenRecord
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ID = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True, slots=True)
class Principal:
    scope: str
    name: str
    token_id: str
    expires: int

    @property
    def may_write(self) -> bool:
        return self.scope == "admin"


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What the store keeps of a token: who and what for, when, and which secret signed it
    (`secret_id`), so that a listing can tell the tokens a rotation revoked."""

    id: str
    name: str
    scope: str
    issued: int
    expires: int
    secret_id: str
    revoked: int | None = None

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> TokenRecord:
        return cls(**json.loads(raw))

    def revoke(self, at: int) -> TokenRecord:
        return TokenRecord(self.id, self.name, self.scope, self.issued, self.expires,
                           self.secret_id, self.revoked or at)


def secret_id(secret: bytes) -> str:
    """A name for a secret that reveals nothing of it."""
    return hashlib.sha256(b"ecs-imds api secret id\0" + secret).hexdigest()[:12]


class Authority:
    """Issues and checks tokens with one secret; knows which token ids are revoked."""

    def __init__(self, secret: bytes, revoked: Iterable[str] = ()) -> None:
        self.update(secret, revoked)

    def update(self, secret: bytes, revoked: Iterable[str]) -> None:
        """Take a rotated secret and the current set of revoked ids (one assignment each:
        a request being checked sees the old state or the new, never half of it)."""
        self._secret, self.secret_id = secret, secret_id(secret)
        self._revoked = frozenset(revoked)

    def _mac(self, payload: str) -> str:
        digest = hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(self, scope: str, name: str, lifetime: int, now: int) -> tuple[str, TokenRecord]:
        """A new token and the record to keep of it."""
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
        if not _NAME.fullmatch(name):
            raise ValueError("name must be 1-64 letters, digits, _ or -")
        record = TokenRecord(os.urandom(8).hex(), name, scope, now, now + lifetime,
                             self.secret_id)
        payload = f"{scope}.{name}.{record.id}.{record.expires}"
        return f"{payload}.{self._mac(payload)}", record

    def check(self, authorization: str | None, now: float) -> Principal | None:
        """The principal of an `Authorization: Bearer …` header, or None."""
        if not authorization:
            return None
        kind, _, token = authorization.partition(" ")
        if kind.lower() != "bearer":
            return None
        return self.principal(token.strip(), now)

    def principal(self, token: str, now: float) -> Principal | None:
        """Whose a token is, while it is valid; None for anything else."""
        payload, _, mac = token.rpartition(".")
        parts = payload.split(".")
        if len(parts) != 4:
            return None
        scope, name, token_id, expires = parts
        if (scope not in SCOPES or not _NAME.fullmatch(name) or not _ID.fullmatch(token_id)
                or not expires.isdigit() or len(expires) > 12):
            return None
        if not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return None
        if now >= int(expires) or token_id in self._revoked:
            return None
        return Principal(scope, name, token_id, int(expires))


def new_secret() -> bytes:
    return os.urandom(32)


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, readable by its owner only (0600) from the first byte:
    written beside it and renamed over it, so that no reader ever sees half of it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(partial, path)


# -- tokens in the store ----------------------------------------------------------------------
def issue(store: Store, authority: Authority, scope: str, name: str, lifetime: int,
          now: int) -> tuple[str, TokenRecord]:
    """A new token, recorded in the store (its record only, never the token)."""
    token, record = authority.issue(scope, name, lifetime, now)
    store.secret(RECORDS + record.id, record.to_bytes)
    return token, record


def records(store: Store) -> list[TokenRecord]:
    """Every token issued, oldest first."""
    found = [TokenRecord.from_bytes(raw) for raw in store.secrets_named(RECORDS).values()]
    return sorted(found, key=lambda r: (r.issued, r.id))


def revoke(store: Store, token_id: str, now: int) -> TokenRecord | None:
    """Revoke one token, on every server of the fleet; None when no token has that id."""
    if not _ID.fullmatch(token_id):
        return None
    raw = store.secrets_named(RECORDS + token_id).get(RECORDS + token_id)
    if raw is None:
        return None
    record = TokenRecord.from_bytes(raw).revoke(now)
    store.set_secret(RECORDS + token_id, record.to_bytes())
    return record


def rotate_secret(store: Store) -> int:
    """A new API secret (every token issued before is refused by every server once it has
    heard of it); returns the store's new version."""
    return store.set_secret(SECRET_NAME, new_secret())


def refresh(store: Store, authority: Authority) -> bool:
    """The secret and the revoked ids as the store has them now; True if the secret
    changed (tokens written before, such as the admin token file, are void)."""
    secret = store.secret(SECRET_NAME, new_secret)
    revoked = [r.id for r in records(store) if r.revoked is not None]
    changed = secret_id(secret) != authority.secret_id
    authority.update(secret, revoked)
    return changed


def ensure_admin_token(store: Store, authority: Authority, path: Path, lifetime: int,
                       now: int) -> bool:
    """Keep `path` holding a valid admin token with at least half its lifetime ahead (the
    operator's way in on this host); True when a new one was written."""
    try:
        current = authority.principal(path.read_text().strip(), now)
    except OSError:
        current = None
    if current is not None and current.scope == "admin" and \
            current.expires - now >= lifetime // 2:
        return False
    token, _ = issue(store, authority, "admin", "admin", lifetime, now)
    write_private(path, token + "\n")
    return True
