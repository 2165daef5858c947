"""Where RAM credentials come from (`credentials.issuer` in the config): the builtin issuer
(derived from a secret in the store), static JSON files, or an operator's command."""

from __future__ import annotations

from ecs_imds.config import CredentialSettings
from ecs_imds.issuers.command import CommandIssuer
from ecs_imds.issuers.static import StaticIssuer
from ecs_imds.protocol.credentials import BuiltinIssuer, Issuer
from ecs_imds.store import Store, keys


def open_issuer(store: Store, settings: CredentialSettings) -> Issuer:
    if settings.issuer == "static":
        assert settings.static_dir is not None
        return StaticIssuer(settings.static_dir)
    if settings.issuer == "command":
        return CommandIssuer(list(settings.command))
    return BuiltinIssuer(keys.credential_secret(store), lifetime=settings.lifetime,
                         refresh=settings.refresh)


__all__ = ["CommandIssuer", "StaticIssuer", "open_issuer"]
