"""The server's configuration file (YAML), its defaults, and its validation.

Every setting is one row of `SETTINGS`: its dotted name (`limits.rate`), how a value is
read (a parser that raises `ValidationError` with what to do), its default, and whether a
running server applies a new value on SIGHUP. To add a setting, add a row and a field of
the same name (dashes → underscores) to the dataclass of its section (`SECTIONS`).

`load` reads a file and reports every problem at once (`ConfigError`), each as one line
naming the file and the setting in one notation: `listeners[0].bind`, `limits.rate`.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ecs_imds.errors import ConfigError, ValidationError
from ecs_imds.protocol.model import HOST_ID
from ecs_imds.store.base import DEFAULT_RETENTION, StoreSettings

DEFAULT_ENDPOINT = "http://100.100.100.200"
DEFAULT_API_BIND = "127.0.0.1:9180"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


def default_data_dir() -> Path:
    """$XDG_DATA_HOME/ecs-imds, i.e. ~/.local/share/ecs-imds for a user."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ecs-imds"


@dataclass(frozen=True, slots=True)
class Listener:
    """An address the data plane listens on, and the VPC whose instances call it there."""

    host: str
    port: int  # 0: any free port (the server reports the one it got)
    vpc_id: str
    # Source address → instance id, for loopback and tests. The running data plane reads
    # this very dict, so a reload (SIGHUP) updates it in place.
    aliases: dict[str, str] = field(default_factory=dict)
    # PROXY protocol v2: the peers (addresses or CIDRs) whose header names the caller;
    # None: the listener does not speak it.
    proxy_trusted: tuple[str, ...] | None = None

    @property
    def bind(self) -> str:
        return join_bind(self.host, self.port)


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

    @property
    def url(self) -> str:
        """How a client reaches it (an http:// or unix:// URL)."""
        return f"unix://{self.unix}" if self.unix else f"http://{self.bind}"


@dataclass(frozen=True, slots=True)
class Config:
    data_dir: Path = field(default_factory=default_data_dir)
    store: str | None = None
    # A PostgreSQL hot standby the change feed reads from (None: the store itself).
    store_read: str | None = None
    log_retention: float = DEFAULT_RETENTION
    # Timeouts, the connection pool's size, the staleness bound, the backoff's cap.
    store_settings: StoreSettings = field(default_factory=StoreSettings)
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
    log_level: str = "info"
    log_format: str = "text"

    @property
    def audit_path(self) -> Path:
        return self.audit_log or self.data_dir / "audit.log"

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / "admin.token"

    @property
    def store_path(self) -> Path | None:
        """The SQLite file, or None for a PostgreSQL store."""
        if not self.store:
            return self.data_dir / "ecs-imds.db"
        if self.store.startswith("sqlite:///"):
            return Path(self.store.removeprefix("sqlite://"))
        return None


def loopback_aliases(instance_ids: list[str]) -> dict[str, str]:
    """127.0.0.1 for the first instance, 127.0.0.2 for the next…: on loopback, a caller
    picks the instance it stands for by its source address (`curl --interface 127.0.0.2`)."""
    first = ipaddress.ip_address("127.0.0.1")
    return {str(first + i): iid for i, iid in enumerate(instance_ids)}


# -- parsers: (value, where) → the setting's value, or ValidationError saying what to do ------
Parser = Callable[[Any, str], Any]


def join_bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_bind(value: str, where: str) -> tuple[str, int]:
    host, sep, port = str(value).rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
        if not sep or not 0 <= number < 65536:
            raise ValueError
    except ValueError:
        raise ValidationError(where, f"{value!r} is not ADDRESS:PORT; give e.g. "
                                     "127.0.0.1:8080 or [::1]:8080") from None
    return host, number


def number(minimum: float = 0, maximum: float | None = None, integer: bool = False,
           unit: str = "") -> Parser:
    """A number in [minimum, maximum]; a whole number when `integer`."""
    kind = "a whole number" if integer else "a number"
    span = f" from {minimum:g}" + (f" to {maximum:g}" if maximum is not None else "")

    def parse(value: Any, where: str) -> Any:
        ok = isinstance(value, int) or (isinstance(value, float) and not integer)
        if (isinstance(value, bool) or not ok or value < minimum
                or (maximum is not None and value > maximum)):
            raise ValidationError(where, f"got {value!r}; give {kind}{span}{unit}")
        return int(value) if integer else float(value)
    return parse


def choice(*options: str) -> Parser:
    def parse(value: Any, where: str) -> str:
        if value not in options:
            raise ValidationError(where, f"{value!r} is not allowed; give one of "
                                         f"{', '.join(options)}")
        return str(value)
    return parse


def text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(where, f"{value!r} is not a string; give a non-empty string")
    return value


def path(value: Any, where: str) -> Path:
    return Path(os.path.expanduser(text(value, where)))


def strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(
            isinstance(v, str) and v for v in value):
        raise ValidationError(where, "must be a list of strings, e.g. [/usr/bin/broker, --json]")
    return tuple(value)


def store_url(value: Any, where: str) -> str:
    """`sqlite:///PATH` (its directory must exist: a typo must not start an empty fleet) or
    a PostgreSQL URL."""
    url = text(value, where)
    if url.startswith("sqlite:///"):
        directory = Path(url.removeprefix("sqlite://")).parent
        if not directory.is_dir():
            raise ValidationError(where, f"directory {directory} of {url} does not exist; "
                                         "create it or correct the URL")
        return url
    if url.startswith(("postgresql://", "postgres://")):
        return url
    raise ValidationError(where, f"{url!r} is not a store URL; give sqlite:///PATH or "
                                 "postgresql://USER@HOST/DB")


# What `store:` may say besides url, read-url and change-log-retention (StoreSettings).
STORE_SETTINGS: dict[str, Parser] = {
    "connect-timeout": number(1, 600, unit=" seconds"),
    "statement-timeout": number(1, 86400, unit=" seconds"),
    "pool-size": number(2, 10000, integer=True, unit=" connections"),
    "stale-after": number(0.5, 3600, unit=" seconds"),
    "retry-max": number(0.1, 3600, unit=" seconds"),
}
STORE_KEYS = ("url", "read-url", "change-log-retention", *STORE_SETTINGS)


def store(doc: Any, where: str) -> tuple[str | None, str | None, float, StoreSettings]:
    """`store: URL`, or `store: {url, read-url, change-log-retention, …}`: the store, the
    hot standby the change feed reads from, how long the change log keeps its rows, and
    how the server deals with a database that is slow, hung or full (STORE_SETTINGS)."""
    if doc is None or isinstance(doc, str):
        return doc and store_url(doc, where), None, DEFAULT_RETENTION, StoreSettings()
    if not isinstance(doc, dict):
        raise ValidationError(where, f"must be a URL, or have {', '.join(STORE_KEYS)}")
    unknown = sorted(set(doc) - set(STORE_KEYS), key=str)
    if unknown:
        raise _unknown(f"{where}.{unknown[0]}", STORE_KEYS)
    settings = StoreSettings(**{key.replace("-", "_"): parse(doc[key], f"{where}.{key}")
                                for key, parse in STORE_SETTINGS.items() if key in doc})
    url = store_url(doc["url"], f"{where}.url") if doc.get("url") is not None else None
    read_url = doc.get("read-url")
    if read_url is not None:
        read_url = store_url(read_url, f"{where}.read-url")
        if not (url or "").startswith(("postgresql://", "postgres://")):
            raise ValidationError(f"{where}.read-url", "needs a PostgreSQL store.url (the "
                                                       "primary the control plane writes to)")
        if not read_url.startswith(("postgresql://", "postgres://")):
            raise ValidationError(f"{where}.read-url", "must be a postgresql:// URL (a hot "
                                                       "standby)")
    retention = number(0, unit=" seconds")(doc.get("change-log-retention", DEFAULT_RETENTION),
                                           f"{where}.change-log-retention")
    return url, read_url, retention, settings


def scope(doc: Any, where: str) -> frozenset[str] | None:
    """`scope: {hosts: [HOST, …]}`: serve only the instances placed on those hosts."""
    if doc is None:
        return None
    hosts = doc.get("hosts") if isinstance(doc, dict) and set(doc) == {"hosts"} else None
    if not isinstance(hosts, list) or not hosts:
        raise ValidationError(where, "needs hosts: [the hosts (dedicated-host-id) whose "
                                     "instances this server serves]; leave scope out to serve "
                                     "all")
    for i, host in enumerate(hosts):
        if not isinstance(host, str) or not HOST_ID.fullmatch(host):
            raise ValidationError(f"{where}.hosts[{i}]", f"{host!r} is not a host id "
                                                         "(letters, digits, . _ : -)")
    return frozenset(hosts)


def listeners(value: Any, where: str) -> tuple[Listener, ...]:
    if not isinstance(value, list):
        raise ValidationError(where, "must be a list of {bind: ADDRESS:PORT, vpc-id: VPC}")
    problems: list[ValidationError] = []
    out = []
    for i, doc in enumerate(value):
        try:
            out.append(_listener(doc, f"{where}[{i}]"))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return tuple(out)


def _listener(doc: Any, where: str) -> Listener:
    if not isinstance(doc, dict):
        raise ConfigError([ValidationError(where, "must be a mapping with bind and vpc-id")])
    problems: list[ValidationError] = []

    def get(key: str, parse: Parser, default: Any = None) -> Any:
        if key not in doc:
            if default is None:
                problems.append(ValidationError(f"{where}.{key}", "is required"))
            return default
        try:
            return parse(doc[key], f"{where}.{key}")
        except ValidationError as exc:
            problems.append(exc)
            return default

    for key in sorted(set(doc) - {"bind", "vpc-id", "aliases", "proxy-protocol"}, key=str):
        problems.append(_unknown(f"{where}.{key}", ("bind", "vpc-id", "aliases",
                                                    "proxy-protocol")))
    host, port = get("bind", parse_bind) or ("", 0)
    vpc_id = get("vpc-id", text)
    aliases = get("aliases", _aliases, {})
    trusted = get("proxy-protocol", _proxy_trusted, ())
    if problems:
        raise ConfigError(problems)
    return Listener(host, port, vpc_id, aliases, trusted or None)


def _aliases(doc: Any, where: str) -> dict[str, str]:
    if not isinstance(doc, dict):
        raise ValidationError(where, "must map source addresses to instance ids")
    for address in doc:
        try:
            ipaddress.ip_address(str(address))
        except ValueError:
            raise ValidationError(f"{where}.{address}", "is not an IP address") from None
    return {str(k): str(v) for k, v in doc.items()}


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


def api(doc: Any, where: str) -> ApiSettings:
    """`false`, or `{bind: ADDRESS:PORT | unix: PATH, open-metrics, token-lifetime,
    token-max-lifetime, body-limit}`; as an option (`serve --api`): `off`, `unix:PATH` or
    `ADDRESS:PORT`."""
    if isinstance(doc, str):
        doc = (False if doc in ("off", "false") else {"unix": doc.removeprefix("unix:")}
               if doc.startswith("unix:") else {"bind": doc})
    if doc is False:
        return ApiSettings(enabled=False)
    if not isinstance(doc, dict):
        raise ValidationError(where, "must be false or have bind: ADDRESS:PORT or unix: PATH")
    known = ("bind", "unix", *API_SETTINGS)
    unknown = sorted(set(doc) - set(known), key=str)
    if unknown:
        raise _unknown(f"{where}.{unknown[0]}", known)
    values = {key.replace("-", "_"): parse(doc[key], f"{where}.{key}")
              for key, parse in API_SETTINGS.items() if key in doc}
    settings = ApiSettings(**values)
    if settings.token_lifetime > settings.token_max_lifetime:
        raise ValidationError(f"{where}.token-lifetime", "must not exceed "
                                                         "api.token-max-lifetime")
    if doc.get("unix"):
        return replace(settings, bind=None, unix=str(doc["unix"]))
    bind = str(doc.get("bind") or DEFAULT_API_BIND)
    parse_bind(bind, f"{where}.bind")
    return replace(settings, bind=bind)


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(where, f"got {value!r}; give true or false")
    return value


API_SETTINGS: dict[str, Parser] = {
    "open-metrics": boolean,
    "token-lifetime": number(1, integer=True, unit=" seconds"),
    "token-max-lifetime": number(1, integer=True, unit=" seconds"),
    "body-limit": number(1, integer=True, unit=" bytes"),
}


@dataclass(frozen=True, slots=True)
class Setting:
    parse: Parser
    help: str
    reload: bool = False  # a running server applies a new value on SIGHUP
    into: tuple[str, ...] = ()  # the Config fields a tuple value spreads over (else its own)


SETTINGS: dict[str, Setting] = {
    "data-dir": Setting(path, "the SQLite store, generated keys, the admin token"),
    "store": Setting(store, "sqlite:///PATH or postgresql://… (default: in data-dir), or "
                     "{url, read-url, change-log-retention, connect-timeout, "
                     "statement-timeout, pool-size, stale-after, retry-max}",
                     into=("store", "store_read", "log_retention", "store_settings")),
    "scope": Setting(scope, "{hosts: [...]}: serve only the instances placed there"),
    "listeners": Setting(listeners, "the data plane's addresses, one per VPC", reload=True),
    "limits.request-line": Setting(number(64, integer=True, unit=" bytes"), "longer → 414"),
    "limits.headers": Setting(number(256, integer=True, unit=" bytes"), "more → 431"),
    "limits.put-body": Setting(number(0, integer=True, unit=" bytes"), "more → 413"),
    "limits.rate": Setting(number(0, unit=" requests/s (0: no limit)"), "per instance → 429"),
    "limits.burst": Setting(number(0, unit=" requests"), "an instance may send at once"),
    "limits.idle-timeout": Setting(number(0.1, unit=" seconds"), "keep-alive idle time"),
    "limits.request-timeout": Setting(number(0.1, unit=" seconds"), "first byte to end"),
    "limits.write-buffer": Setting(number(4096, integer=True, unit=" bytes"),
                                   "answers unread past it → cut off"),
    "limits.connections-per-source": Setting(number(1, integer=True, unit=" connections"),
                                             "more from one address → closed"),
    "limits.max-connections": Setting(number(0, integer=True, unit=" connections (0: as the "
                                             "descriptor limit allows)"), "in all"),
    "credentials.issuer": Setting(choice("builtin", "static", "command"), "RAM credentials"),
    "credentials.lifetime": Setting(number(60, integer=True, unit=" seconds"), "builtin"),
    "credentials.refresh": Setting(number(0, integer=True, unit=" seconds"), "builtin"),
    "credentials.static-dir": Setting(text, "static: <role>.json files"),
    "credentials.command": Setting(strings, "command: prints the credential JSON"),
    "poll-interval": Setting(number(0.01, 3600, unit=" seconds, e.g. 0.2"), "store polling"),
    "workers": Setting(number(1, 256, integer=True, unit=", e.g. 2"), "data plane processes"),
    "api": Setting(api, "the control plane's listener, or false"),
    "audit-log": Setting(path, "the control plane's audit log"),
    "access-log": Setting(path, "the data plane's access log (off when unset)"),
    "log-level": Setting(choice(*LOG_LEVELS), "the server's log", reload=True),
    "log-format": Setting(choice(*LOG_FORMATS), "the server's log", reload=True),
}

# Where a dotted section's settings go: `limits.rate` → Limits.rate.
SECTIONS: dict[str, type[Any]] = {"limits": Limits, "credentials": CredentialSettings}


def _unknown(where: str, known: tuple[str, ...]) -> ValidationError:
    return ValidationError(where, f"is not a known setting; known here: {', '.join(known)}")


def _flatten(doc: Mapping[str, Any], problems: list[ValidationError]) -> dict[str, Any]:
    """`{limits: {rate: 1}}` → `{"limits.rate": 1}`; unknown names are problems."""
    flat: dict[str, Any] = {}
    top = tuple(dict.fromkeys(name.split(".")[0] for name in SETTINGS))
    for key, value in doc.items():
        key = str(key)
        if key in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                problems.append(ValidationError(key, "must be a mapping of settings"))
                continue
            known = tuple(n.split(".", 1)[1] for n in SETTINGS if n.startswith(key + "."))
            for sub, subvalue in value.items():
                name = f"{key}.{sub}"
                if name in SETTINGS:
                    flat[name] = subvalue
                else:
                    problems.append(_unknown(name, known))
        elif key in SETTINGS:
            flat[key] = value
        else:
            problems.append(_unknown(key, top))
    return flat


def _build(values: Mapping[str, Any]) -> Config:
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for name, value in values.items():
        section, _, key = name.rpartition(".")
        if SETTINGS[name].into:
            top.update(zip(SETTINGS[name].into, value, strict=True))
        else:
            (sections[section] if section else top)[key.replace("-", "_")] = value
    for name, cls in SECTIONS.items():
        top[name] = cls(**sections[name])
    return Config(**top)


def _check(config: Config, problems: list[ValidationError]) -> None:
    """Rules that tie settings together."""
    creds = config.credentials
    if creds.issuer == "static" and not creds.static_dir:
        problems.append(ValidationError("credentials.static-dir",
                                        "is required for the static issuer; give a directory"))
    if creds.issuer == "command" and not creds.command:
        problems.append(ValidationError("credentials.command",
                                        "is required for the command issuer; give the argv"))
    heartbeat = max(1.0, config.poll_interval)  # how often the change feed reads the store
    if config.store_settings.stale_after < 2 * heartbeat:
        problems.append(ValidationError("store.stale-after", f"must be at least twice "
                                        f"max(1 s, poll-interval); give {2 * heartbeat:g} "
                                        "or more"))
    if config.workers > 1:
        for i, lst in enumerate(config.listeners):
            if lst.port == 0:
                problems.append(ValidationError(f"listeners[{i}].bind", "port 0 (any free "
                                                "port) needs workers: 1; give a port"))


def read_yaml(file: Path) -> Any:
    """A YAML document; a syntax error is one line with its place and what to do."""
    try:
        return yaml.load(file.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        place = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(file)
        problem = ValidationError(place, f"not valid YAML ({exc.problem}); fix the syntax")
    except yaml.YAMLError as exc:
        problem = ValidationError(str(file), f"not valid YAML ({exc}); fix the syntax")
    except UnicodeDecodeError:
        problem = ValidationError(str(file), "is not UTF-8 text; save it as UTF-8")
    except OSError as exc:
        problem = ValidationError(str(file), f"cannot be read ({exc.strerror}); check the "
                                             "path and its permissions")
    raise ConfigError([problem])


def load(file: Path | None, **overrides: Any) -> Config:
    """The config file (if any) with command-line overrides on top (`data_dir="…"`: named
    as the option `--data-dir` in errors); every problem at once in one `ConfigError`,
    each located as `FILE: SETTING`."""
    doc: Any = {}
    if file is not None:
        doc = read_yaml(file)
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise ConfigError([ValidationError(str(file), "must hold a mapping of settings "
                                                          "(data-dir: …)")])
    problems: list[ValidationError] = []
    values: dict[str, Any] = {}
    for name, value in _flatten(doc, problems).items():
        try:
            values[name] = SETTINGS[name].parse(value, name)
        except ConfigError as exc:
            problems.extend(exc.problems)
        except ValidationError as exc:
            problems.append(exc)
    options: list[ValidationError] = []
    for key, value in overrides.items():
        if value is not None:
            name = key.replace("_", "-")
            try:
                values[name] = SETTINGS[name].parse(str(value), f"--{name}")
            except ValidationError as exc:
                options.append(exc)
    config = _build(values)
    _check(config, problems)
    if problems or options:
        raise ConfigError(problems, str(file) if file is not None else "", options)
    return config


def effective(config: Config) -> dict[str, Any]:
    """Every setting with the value in force (for `config check`), in file notation."""
    out: dict[str, Any] = {}
    for name in SETTINGS:
        section, _, key = name.rpartition(".")
        owner = getattr(config, section) if section else config
        out[name] = getattr(owner, key.replace("-", "_"))
    url = config.store or f"sqlite://{config.store_path}"
    out["data-dir"] = str(config.data_dir)
    settings = {key: getattr(config.store_settings, key.replace("-", "_"))
                for key in STORE_SETTINGS}
    out["store"] = url if (config.store_read, config.log_retention, config.store_settings) == (
        None, DEFAULT_RETENTION, StoreSettings()) else {
        "url": url, "read-url": config.store_read,
        "change-log-retention": config.log_retention, **settings}
    out["scope"] = {"hosts": sorted(config.scope)} if config.scope else None
    out["listeners"] = [{"bind": lst.bind, "vpc-id": lst.vpc_id,
                         **({"aliases": lst.aliases} if lst.aliases else {}),
                         **({"proxy-protocol": {"trusted": list(lst.proxy_trusted)}}
                            if lst.proxy_trusted else {})} for lst in config.listeners]
    out["api"] = False if not config.api.enabled else {
        **({"unix": config.api.unix} if config.api.unix else {"bind": config.api.bind}),
        **{key: getattr(config.api, key.replace("-", "_")) for key in API_SETTINGS}}
    out["audit-log"] = str(config.audit_path)
    out["access-log"] = str(config.access_log) if config.access_log else None
    out["credentials.command"] = list(config.credentials.command)
    return out


def differences(old: Config, new: Config) -> list[str]:
    """The settings whose values differ, by name."""
    a, b = effective(old), effective(new)
    return [name for name in SETTINGS if a[name] != b[name]]


