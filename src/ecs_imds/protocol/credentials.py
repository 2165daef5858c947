"""RAM role credentials (SPEC §5): the record, its JSON body, the `Issuer` interface, and the
built-in issuer, which is pure.

`BuiltinIssuer` derives STS-shaped credentials from one secret. The rotation schedule is a
pure function of (secret, instance, role, now), so every server of a fleet serves the same
current credential at the same moment without talking to the others, and `verify` tells a
relying service (a fake STS or OSS in a test setup) whose credential it holds. The issuers
that read files or run programs are in `ecs_imds.issuers`; they parse what they read with
`from_json` here.

Secrets never appear in a `repr`, an exception message or a log line: a credential in a log is
a credential handed to whoever reads the log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from ecs_imds.errors import CredentialError

log = logging.getLogger(__name__)

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
DEFAULT_LIFETIME = 6 * 3600
DEFAULT_REFRESH = 30 * 60


@dataclass(frozen=True, slots=True)
class Credential:
    """One STS credential; times are epoch seconds (UTC)."""

    access_key_id: str
    access_key_secret: str = field(repr=False)
    security_token: str = field(repr=False)
    expiration: int
    last_updated: int


def format_time(epoch: int) -> str:
    """SPEC §5's time format: UTC, whole seconds, `Z` suffix."""
    return datetime.fromtimestamp(epoch, UTC).strftime(TIME_FORMAT)


def render(credential: Credential) -> bytes:
    """The body of `…/ram/security-credentials/<role>`, laid out exactly as Alibaba's.

    Clients parse it as JSON, but people diff it against the real service, so the layout
    (2-space indent, ` : ` separators, key order, no trailing newline) is kept byte for byte.
    """
    pairs = (
        ("AccessKeyId", credential.access_key_id),
        ("AccessKeySecret", credential.access_key_secret),
        ("Expiration", format_time(credential.expiration)),
        ("SecurityToken", credential.security_token),
        ("LastUpdated", format_time(credential.last_updated)),
        ("Code", "Success"),
    )
    lines = ",\n".join(f"  {json.dumps(k)} : {json.dumps(v)}" for k, v in pairs)
    return ("{\n" + lines + "\n}").encode()


class Issuer(Protocol):
    """Hands out the current credential of a role for an instance.

    Raises CredentialError when none can be had; never for the instance or role given, which
    the caller has already checked against the instance's attached role.
    """

    def issue(self, instance_id: str, role: str, now: float) -> Credential: ...


# --- the built-in issuer ------------------------------------------------------------------

_ALPHANUMERIC = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_TOKEN_PREFIX = "CAIS"
_TOKEN_VERSION = 1
_HEAD = struct.Struct(">BqqH")
_MAC_LEN = 32
_MAX_TOKEN = 4096
_TOKEN_SHAPE = re.compile(r"CAIS[A-Za-z0-9_-]+")
_KEY_ID_SHAPE = re.compile(r"STS\.[A-Za-z0-9]{25}")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a genuine credential says about itself: whose it is and until when it is valid."""

    instance_id: str
    role: str
    issued: int
    expires: int
    valid: bool


def _alphanumeric(digest: bytes, length: int) -> str:
    number = int.from_bytes(digest, "big")
    chars = []
    for _ in range(length):
        number, digit = divmod(number, len(_ALPHANUMERIC))
        chars.append(_ALPHANUMERIC[digit])
    return "".join(chars)


class BuiltinIssuer:
    """Deterministic credentials derived from `secret`, rotated on a fleet-wide schedule.

    Credentials of one (instance, role) start every `lifetime - refresh` seconds and each
    lives `lifetime`, so the next one is served from `refresh` seconds before the current
    one expires while the current one stays valid until its Expiration. The schedule is
    shifted by an offset derived from (instance, role) so that a fleet does not refresh all
    at once.

    The SecurityToken carries (instance, role, issued, expires) in the clear plus a MAC; the
    AccessKeyId and AccessKeySecret are MACs of the same, so the pair can be checked by
    anyone holding the secret and forged by no one else.
    """

    def __init__(self, secret: bytes, lifetime: int = DEFAULT_LIFETIME,
                 refresh: int = DEFAULT_REFRESH) -> None:
        if len(secret) < 16:
            raise ValueError("the credential secret must be at least 16 bytes")
        if lifetime <= 0 or not 0 <= refresh < lifetime:
            raise ValueError("need lifetime > 0 and 0 <= refresh < lifetime")
        self.lifetime = int(lifetime)
        self.refresh = int(refresh)
        self._schedule_key = self._subkey(secret, b"schedule")
        self._token_key = self._subkey(secret, b"token")
        self._key_id_key = self._subkey(secret, b"access key id")
        self._secret_key = self._subkey(secret, b"access key secret")

    @staticmethod
    def _subkey(secret: bytes, label: bytes) -> bytes:
        """One key per use, so that no MAC of one kind can stand in for another."""
        return hmac.new(secret, b"ecs-imds credentials v1\0" + label, hashlib.sha256).digest()

    @property
    def step(self) -> int:
        """Seconds between the starts of two successive credentials."""
        return self.lifetime - self.refresh

    def period(self, instance_id: str, role: str, now: float) -> tuple[int, int]:
        """(issued, expires) of the credential served at `now`."""
        scope = instance_id.encode() + b"\0" + role.encode()
        digest = hmac.new(self._schedule_key, scope, hashlib.sha256).digest()
        offset = int.from_bytes(digest[:8], "big") % self.step
        issued = offset + (math.floor(now) - offset) // self.step * self.step
        return issued, issued + self.lifetime

    def issue(self, instance_id: str, role: str, now: float) -> Credential:
        issued, expires = self.period(instance_id, role, now)
        payload = self._payload(instance_id, role, issued, expires)
        mac = hmac.new(self._token_key, payload, hashlib.sha256).digest()
        token = base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode()
        return Credential(
            access_key_id=self._access_key_id(payload),
            access_key_secret=_alphanumeric(
                hmac.new(self._secret_key, payload, hashlib.sha512).digest(), 44),
            security_token=_TOKEN_PREFIX + token,
            expiration=expires,
            last_updated=issued,
        )

    def verify(self, access_key_id: str, security_token: str, now: float) -> Verdict | None:
        """Whose credential this is and whether it is still valid; None if not one of ours.

        Never raises: the input comes from whoever presents the credential.
        """
        payload = self._authentic_payload(access_key_id, security_token)
        if payload is None:
            return None
        parsed = self._parse_payload(payload)
        if parsed is None:
            return None
        instance_id, role, issued, expires = parsed
        return Verdict(instance_id, role, issued, expires, valid=now < expires)

    @staticmethod
    def _payload(instance_id: str, role: str, issued: int, expires: int) -> bytes:
        instance, name = instance_id.encode(), role.encode()
        if len(instance) > 0xFFFF or len(name) > 0xFFFF:
            raise ValueError("instance id or role name too long")
        return (_HEAD.pack(_TOKEN_VERSION, issued, expires, len(instance)) + instance
                + len(name).to_bytes(2, "big") + name)

    def _access_key_id(self, payload: bytes) -> str:
        digest = hmac.new(self._key_id_key, payload, hashlib.sha256).digest()
        return "STS." + _alphanumeric(digest, 25)

    def _authentic_payload(self, access_key_id: object, security_token: object
                           ) -> bytes | None:
        """The token's payload if its MAC and the AccessKeyId both check out."""
        if not isinstance(access_key_id, str) or not isinstance(security_token, str):
            return None
        if len(security_token) > _MAX_TOKEN or not _TOKEN_SHAPE.fullmatch(security_token):
            return None
        if not _KEY_ID_SHAPE.fullmatch(access_key_id):
            return None
        encoded = security_token[len(_TOKEN_PREFIX):]
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except ValueError:
            return None
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != encoded:
            return None  # only the canonical encoding: one credential, one spelling
        if len(raw) <= _MAC_LEN:
            return None
        payload, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
        expected = hmac.new(self._token_key, payload, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            return None
        if not hmac.compare_digest(access_key_id.encode(),
                                   self._access_key_id(payload).encode()):
            return None
        return payload

    @staticmethod
    def _parse_payload(payload: bytes) -> tuple[str, str, int, int] | None:
        if len(payload) < _HEAD.size:
            return None
        version, issued, expires, instance_len = _HEAD.unpack_from(payload)
        if version != _TOKEN_VERSION:
            return None
        rest = payload[_HEAD.size:]
        if len(rest) < instance_len + 2:
            return None
        instance, rest = rest[:instance_len], rest[instance_len:]
        role_len = int.from_bytes(rest[:2], "big")
        role = rest[2:]
        if len(role) != role_len:
            return None
        try:
            return instance.decode(), role.decode(), issued, expires
        except UnicodeDecodeError:
            return None


# --- credentials from JSON (static files and external commands) ---------------------------

_REQUIRED = ("AccessKeyId", "AccessKeySecret", "SecurityToken")
_CODE_SHAPE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def parse_time(value: str) -> int:
    """An ISO 8601 time (SPEC's `…Z` form, or with an offset; naive means UTC) → epoch."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def _string_field(data: Mapping[str, Any], name: str, where: str) -> str:
    value = data.get(name)
    if value is None:
        raise CredentialError(f"{where}: field {name} is missing")
    if not isinstance(value, str) or not value:
        raise CredentialError(f"{where}: field {name} is not a non-empty string")
    return value


def _time_field(data: Mapping[str, Any], name: str, where: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise CredentialError(f"{where}: field {name} is not a string")
    try:
        return parse_time(value)
    except ValueError:
        raise CredentialError(
            f"{where}: field {name} is not a time like 2026-11-28T15:44:50Z") from None


def from_json(data: object, where: str, now: float, lifetime: int,
               require_expiration: bool) -> Credential:
    """A Credential from SPEC §5's JSON. Messages name fields, never their values."""
    if not isinstance(data, dict):
        raise CredentialError(f"{where}: expected a JSON object")
    code = data.get("Code", "Success")
    if code != "Success":
        shown = code if isinstance(code, str) and _CODE_SHAPE.fullmatch(code) else "(unprintable)"
        raise CredentialError(f"{where}: Code is {shown}, not Success")
    key_id, secret, token = (_string_field(data, name, where) for name in _REQUIRED)
    expiration = _time_field(data, "Expiration", where)
    last_updated = _time_field(data, "LastUpdated", where)
    if expiration is None:
        if require_expiration:
            raise CredentialError(f"{where}: field Expiration is missing")
        # A rolling window: always hours ahead, so SDKs neither refresh constantly nor expire.
        last_updated = math.floor(now) - math.floor(now) % 3600
        expiration = last_updated + lifetime
    if last_updated is None:
        last_updated = min(math.floor(now), expiration)
    return Credential(key_id, secret, token, expiration, last_updated)


def load_json(raw: bytes, where: str) -> object:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CredentialError(
            f"{where}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except ValueError:
        raise CredentialError(f"{where}: invalid JSON (not UTF-8 text)") from None
