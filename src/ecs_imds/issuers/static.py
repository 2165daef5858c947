"""`issuer: static`: fixed RAM credentials from JSON files (or a mapping), for test setups."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ecs_imds.errors import CredentialError
from ecs_imds.protocol.credentials import DEFAULT_LIFETIME, Credential, from_json, load_json

_FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


class StaticIssuer:
    """Fixed credentials per role, for test setups.

    From a directory, `<dir>/<role>.json` is read on every issue, so a test may rewrite it;
    from a mapping (role → SPEC §5 fields) everything is checked up front. `Expiration` is
    optional: without it the credential gets a rolling window of `lifetime` that starts on
    the hour, so clients keep using it without ever seeing it expire.
    """

    def __init__(self, source: str | os.PathLike[str] | Mapping[str, Mapping[str, Any]],
                 lifetime: int = DEFAULT_LIFETIME) -> None:
        self.lifetime = lifetime
        self._directory: Path | None = None
        self._fixed: dict[str, Mapping[str, Any]] = {}
        if isinstance(source, Mapping):
            for role, data in source.items():
                from_json(data, f"static credentials of role {role}", 0, lifetime, False)
                self._fixed[role] = data
        else:
            self._directory = Path(source)
            if not self._directory.is_dir():
                raise CredentialError(f"{self._directory}: not a directory of credentials")

    def issue(self, instance_id: str, role: str, now: float) -> Credential:
        if self._directory is None:
            data = self._fixed.get(role)
            if data is None:
                raise CredentialError(f"no static credentials for role {role}")
            return from_json(data, f"static credentials of role {role}", now,
                              self.lifetime, False)
        if not _FILE_NAME.fullmatch(role):
            raise CredentialError(f"role name {role!r} cannot name a credentials file")
        path = self._directory / f"{role}.json"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise CredentialError(f"{path}: no such credentials file") from None
        except OSError as exc:
            raise CredentialError(f"{path}: cannot read: {exc.strerror}") from None
        return from_json(load_json(raw, str(path)), str(path), now, self.lifetime, False)
