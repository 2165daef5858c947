"""A server reads its secrets (identity key and certificate, credential secret, API secret
and token records) again only when the store says they changed: each secret carries the
version that last replaced it, and a fleet change that is not a secret (a token key, the
defaults) costs one small query, not the identity blob. A store whose history changed is
read in full."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ecs_imds.config import ApiSettings, Config
from ecs_imds.control.auth import SECRET_NAME
from ecs_imds.server.process import Service
from ecs_imds.store import keys, open_store


def test_secrets_are_read_again_only_when_their_version_moved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    service = Service.open(Config(data_dir=tmp_path, api=ApiSettings(enabled=False)))
    other = open_store(None, tmp_path)  # another server of the fleet
    read: list[str] = []
    secret = service.store.secret

    def spy(name: str, make: Any) -> bytes:
        read.append(name)
        return secret(name, make)

    monkeypatch.setattr(service.store, "secret", spy)
    try:
        service.reload_secrets()
        service.reload_secrets()
        assert read == []  # nothing moved: nothing read
        keys.rotate_token_key(other)  # a fleet change, not a secret
        service.reload_secrets()
        assert read == []
        signer = service.signer
        keys.rotate_identity(other)
        service.reload_secrets()
        assert read == [keys.IDENTITY] and service.signer is not signer
        assert service.signer.cert_pem == keys.identity_signer(other).cert_pem
        read.clear()
        issuer = service.issuer
        keys.rotate_credentials(other)
        service.reload_secrets()
        assert set(read) == {keys.CREDENTIALS} and service.issuer is not issuer
        read.clear()
        service.reload_secrets(everything=True)  # another history: everything again
        assert {keys.IDENTITY, keys.CREDENTIALS, SECRET_NAME} <= set(read)
    finally:
        other.close()
        service.store.close()
