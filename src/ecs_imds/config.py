"""The server's configuration file (YAML) and its defaults.

Every setting has a default that works on a laptop; see README "Settings" for each one.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ecs_imds.errors import ValidationError
from ecs_imds.protocol.model import HOST_ID
from ecs_imds.store.base import DEFAULT_RETENTION

DEFAULT_ENDPOINT = "http://100.100.100.200"
DEFAULT_API_BIND = "127.0.0.1:9180"


def default_data_dir() -> Path:
    """$XDG_DATA_HOME/ecs-imds, i.e. ~/.local/share/ecs-imds for a user."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ecs-imds"


@dataclass(frozen=True, slots=True)
class Listener:
    """An address the data plane listens on, and the VPC whose instances call it there."""

    host: str
    port: int
    vpc_id: str
    aliases: dict[str, str] = field(default_factory=dict)
    # PROXY protocol v2: the peers (addresses or CIDRs) whose header names the caller;
    # None: the listener does not speak it.
    proxy_trusted: tuple[str, ...] | None = None

    @property
    def bind(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Limits:
    """SPEC §8. Sizes in bytes, times in seconds, rate in requests per second per instance."""

    request_line: int = 2048
    headers: int = 8192
    put_body: int = 64
    rate: float = 1000.0
    burst: float = 2000.0
    idle_timeout: float = 15.0
    request_timeout: float = 5.0
    write_buffer: int = 256 * 1024
    connections_per_source: int = 64
    max_connections: int = 0  # 0: as many as the descriptor limit allows


@dataclass(frozen=True, slots=True)
class CredentialSettings:
    issuer: str = "builtin"
    lifetime: int = 6 * 3600
    refresh: int = 30 * 60
    static_dir: str | None = None
    command: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """The control plane's own listener: TCP (loopback by default) or a Unix socket."""

    bind: str | None = DEFAULT_API_BIND
    unix: str | None = None
    enabled: bool = True
    open_metrics: bool = False  # /metrics without a token, for scrapers
    token_lifetime: int = 30 * 86400  # seconds an API token lives unless asked otherwise
    token_max_lifetime: int = 365 * 86400  # the longest it may be asked to live
    body_limit: int = 256 * 1024 * 1024  # bytes of a request body: ~300k instances as JSON


@dataclass(frozen=True, slots=True)
class Config:
    data_dir: Path = field(default_factory=default_data_dir)
    store: str | None = None
    # A PostgreSQL hot standby the change feed reads from (None: the store itself).
    store_read: str | None = None
    log_retention: float = DEFAULT_RETENTION
    # The hosts whose instances this server serves (None: the whole fleet).
    scope: frozenset[str] | None = None
    listeners: tuple[Listener, ...] = ()
    limits: Limits = field(default_factory=Limits)
    credentials: CredentialSettings = field(default_factory=CredentialSettings)
    poll_interval: float = 0.2
    workers: int = 1
    api: ApiSettings = field(default_factory=ApiSettings)
    audit_log: Path | None = None
    access_log: Path | None = None

    @property
    def audit_path(self) -> Path:
        return self.audit_log or self.data_dir / "audit.log"

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / "admin.token"


def parse_bind(value: str, where: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
        if not sep or not 0 < number < 65536:
            raise ValueError
    except ValueError:
        raise ValidationError(where, f"{value!r} is not ADDRESS:PORT") from None
    return host, number


def _listener(doc: Any, where: str) -> Listener:
    if not isinstance(doc, dict) or not isinstance(doc.get("bind"), str):
        raise ValidationError(where, "needs bind: ADDRESS:PORT and vpc-id")
    host, port = parse_bind(doc["bind"], f"{where}.bind")
    vpc_id = doc.get("vpc-id")
    if not isinstance(vpc_id, str) or not vpc_id:
        raise ValidationError(f"{where}.vpc-id", "is required")
    aliases = doc.get("aliases") or {}
    if not isinstance(aliases, dict):
        raise ValidationError(f"{where}.aliases", "must map addresses to instance ids")
    unknown = set(doc) - {"bind", "vpc-id", "aliases", "proxy-protocol"}
    if unknown:
        raise ValidationError(f"{where}.{sorted(unknown)[0]}", "is not a known setting")
    trusted = None
    if "proxy-protocol" in doc:
        trusted = _proxy_trusted(doc["proxy-protocol"], f"{where}.proxy-protocol")
    return Listener(host, port, vpc_id, {str(k): str(v) for k, v in aliases.items()},
                    trusted)


def _proxy_trusted(doc: Any, where: str) -> tuple[str, ...]:
    """`proxy-protocol: {trusted: [ADDRESS or CIDR, …]}`, as normalised network strings."""
    if not isinstance(doc, dict) or set(doc) != {"trusted"} or not isinstance(
            doc["trusted"], list) or not doc["trusted"]:
        raise ValidationError(where, "needs trusted: [the proxy's addresses or CIDRs]")
    networks = []
    for i, item in enumerate(doc["trusted"]):
        try:
            networks.append(str(ipaddress.ip_network(str(item), strict=False)))
        except ValueError:
            raise ValidationError(f"{where}.trusted[{i}]",
                                  f"{item!r} is not an address or CIDR") from None
    return tuple(networks)


def _section(doc: dict[str, Any], name: str, cls: Any, where: str) -> Any:
    sub = doc.get(name) or {}
    if not isinstance(sub, dict):
        raise ValidationError(name, "must be a mapping")
    names = {f.replace("_", "-"): f for f in cls.__dataclass_fields__}
    values: dict[str, Any] = {}
    for key, value in sub.items():
        if key not in names:
            raise ValidationError(f"{name}.{key}", "is not a known setting")
        default = getattr(cls(), names[key])
        if isinstance(default, float | int) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValidationError(f"{name}.{key}", "must be a non-negative number")
            value = type(default)(value)
        elif isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValidationError(f"{name}.{key}", "must be a list of strings")
            value = tuple(value)
        values[names[key]] = value
    return cls(**values)


def _api(doc: Any) -> ApiSettings:
    if doc is False:
        return ApiSettings(enabled=False)
    if not isinstance(doc, dict):
        raise ValidationError("api", "must be false or have bind: ADDRESS:PORT or unix: PATH")
    settings: ApiSettings = _section(
        {"api": {k: v for k, v in doc.items() if k not in ("bind", "unix")}}, "api",
        ApiSettings, "api")
    if not isinstance(settings.open_metrics, bool):
        raise ValidationError("api.open-metrics", "must be true or false")
    for key in ("token-lifetime", "token-max-lifetime", "body-limit"):
        if getattr(settings, key.replace("-", "_")) < 1:
            raise ValidationError(f"api.{key}", "must be at least 1")
    if settings.token_lifetime > settings.token_max_lifetime:
        raise ValidationError("api.token-lifetime", "must not exceed api.token-max-lifetime")
    if doc.get("bind"):
        parse_bind(str(doc["bind"]), "api.bind")
    if doc.get("unix"):
        return replace(settings, bind=None, unix=str(doc["unix"]))
    return replace(settings, bind=str(doc.get("bind") or DEFAULT_API_BIND))


def _store(doc: Any) -> tuple[str | None, str | None, float]:
    """`store: URL`, or `store: {url, read-url, change-log-retention}`."""
    if doc is None or isinstance(doc, str):
        return doc or None, None, DEFAULT_RETENTION
    if not isinstance(doc, dict) or set(doc) - {"url", "read-url", "change-log-retention"}:
        raise ValidationError("store", "must be a URL, or have url, read-url and "
                              "change-log-retention")
    url, read_url = doc.get("url"), doc.get("read-url")
    for key, value in (("url", url), ("read-url", read_url)):
        if value is not None and not isinstance(value, str):
            raise ValidationError(f"store.{key}", "must be a URL")
    if read_url and not (url or "").startswith(("postgresql://", "postgres://")):
        raise ValidationError("store.read-url", "needs a PostgreSQL store.url (the primary "
                              "the control plane writes to)")
    if read_url and not read_url.startswith(("postgresql://", "postgres://")):
        raise ValidationError("store.read-url", "must be a postgresql:// URL (a hot standby)")
    retention = doc.get("change-log-retention", DEFAULT_RETENTION)
    if isinstance(retention, bool) or not isinstance(retention, int | float) or retention < 0:
        raise ValidationError("store.change-log-retention", "must be a number of seconds")
    return url or None, read_url or None, float(retention)


def _scope(doc: Any) -> frozenset[str] | None:
    """`scope: {hosts: [HOST, …]}`: serve only the instances placed on those hosts."""
    if doc is None:
        return None
    hosts = doc.get("hosts") if isinstance(doc, dict) and set(doc) == {"hosts"} else None
    if not isinstance(hosts, list) or not hosts:
        raise ValidationError("scope", "needs hosts: [the hosts (dedicated-host-id) whose "
                              "instances this server serves]; leave scope out to serve all")
    for i, host in enumerate(hosts):
        if not isinstance(host, str) or not HOST_ID.fullmatch(host):
            raise ValidationError(f"scope.hosts[{i}]", f"{host!r} is not a host id (letters, "
                                  "digits, . _ : -)")
    return frozenset(hosts)


def load(path: Path | None, **overrides: Any) -> Config:
    """The config file (if any) with command-line overrides applied on top."""
    doc: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValidationError("", f"{path} must hold a mapping")
        doc = loaded or {}
    known = {"data-dir", "store", "scope", "listeners", "limits", "credentials",
             "poll-interval", "workers", "api", "audit-log", "access-log"}
    for key in doc:
        if key not in known:
            raise ValidationError(str(key), "is not a known setting")
    creds = _section(doc, "credentials", CredentialSettings, "credentials")
    if creds.issuer not in ("builtin", "static", "command"):
        raise ValidationError("credentials.issuer", "must be builtin, static or command")
    if creds.issuer == "static" and not creds.static_dir:
        raise ValidationError("credentials.static-dir", "is required for the static issuer")
    if creds.issuer == "command" and not creds.command:
        raise ValidationError("credentials.command", "is required for the command issuer")
    api = _api(doc.get("api", {}))
    listeners = doc.get("listeners") or []
    if not isinstance(listeners, list):
        raise ValidationError("listeners", "must be a list")
    store, store_read, retention = _store(doc.get("store"))
    config = Config(
        data_dir=Path(doc["data-dir"]) if doc.get("data-dir") else default_data_dir(),
        store=store,
        store_read=store_read,
        log_retention=retention,
        scope=_scope(doc.get("scope")),
        listeners=tuple(_listener(d, f"listeners[{i}]") for i, d in enumerate(listeners)),
        limits=_section(doc, "limits", Limits, "limits"),
        credentials=creds,
        poll_interval=float(doc.get("poll-interval", 0.2)),
        workers=int(doc.get("workers", 1)),
        api=api,
        audit_log=Path(doc["audit-log"]) if doc.get("audit-log") else None,
        access_log=Path(doc["access-log"]) if doc.get("access-log") else None,
    )
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(config, **changes) if changes else config
