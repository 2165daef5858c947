"""The secrets a fleet keeps in its store: the identity signing key and certificate, and
the RAM credential issuer's secret. Made on first use, once, whichever server starts first."""

from __future__ import annotations

import os

from ecs_imds.config import CredentialSettings
from ecs_imds.protocol.credentials import BuiltinIssuer, CommandIssuer, Issuer, StaticIssuer
from ecs_imds.protocol.identity import IdentitySigner, generate_signing_identity
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


def credential_issuer(store: Store, settings: CredentialSettings) -> Issuer:
    if settings.issuer == "static":
        assert settings.static_dir is not None
        return StaticIssuer(settings.static_dir)
    if settings.issuer == "command":
        return CommandIssuer(list(settings.command))
    return BuiltinIssuer(store.secret(CREDENTIALS, lambda: os.urandom(32)),
                         lifetime=settings.lifetime, refresh=settings.refresh)
