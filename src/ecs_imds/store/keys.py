"""The keys a fleet keeps in its store: the token key ring, the identity signing key and
certificate, and the builtin credential issuer's secret. Made on first use, once, whichever
server starts first; rotated here."""

from __future__ import annotations

import os
import time

from ecs_imds.protocol.identity import IdentitySigner, generate_signing_identity
from ecs_imds.protocol.tokens import TokenKey, keys_to_keep
from ecs_imds.store import Store

IDENTITY = "identity"
CREDENTIALS = "credentials"
_CERT_MARK = b"-----BEGIN CERTIFICATE-----"


def _identity_blob() -> bytes:
    return b"".join(generate_signing_identity())


def identity_blob(store: Store) -> bytes:
    return store.secret(IDENTITY, _identity_blob)


def identity_signer(store: Store, blob: bytes | None = None) -> IdentitySigner:
    """The signer for the key and certificate in the store (or in `blob`)."""
    key_pem, _, cert = (blob or identity_blob(store)).partition(_CERT_MARK)
    return IdentitySigner(key_pem, _CERT_MARK + cert)


def rotate_identity(store: Store) -> int:
    """A new signing key and certificate; every server signs with it after its next poll."""
    return store.set_secret(IDENTITY, _identity_blob())


def ensure_token_keys(store: Store, now: int | None = None) -> list[TokenKey]:
    """The key ring, with a first key made on first start (once, even when several servers
    start at the same time: they all get the same key)."""
    keys = store.token_keys()
    if not keys:
        now = int(time.time()) if now is None else now
        keys = store.first_token_key(TokenKey.generate(1, now))
    return keys


def rotate_token_key(store: Store, now: int | None = None) -> TokenKey:
    """Add a new minting key; keep older keys only while tokens they minted may live."""
    now = int(time.time()) if now is None else now
    keys = store.token_keys()
    key = TokenKey.generate(max((k.kid for k in keys), default=0) + 1, now)
    store.replace_token_keys(keys_to_keep([*keys, key], now))
    return key


def credential_secret(store: Store) -> bytes:
    """The builtin issuer's secret (RAM credentials are derived from it)."""
    return store.secret(CREDENTIALS, lambda: os.urandom(32))


def rotate_credentials(store: Store) -> int:
    """A new secret for the builtin issuer: every credential derived from the old one is void."""
    return store.set_secret(CREDENTIALS, os.urandom(32))
