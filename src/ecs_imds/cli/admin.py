"""`ecs-imds admin …`: the operators' commands, each a call to the control plane's API.

The API's URL and token come from `--api`/`--api-token`, ECS_IMDS_API/ECS_IMDS_API_TOKEN, or
the config file (its `api` listener and the admin token the server wrote in its data dir).
Tables for people, `--json` for programs.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ecs_imds.cli.fleetfile import describe_plan, progress_bar, read_fleet_file
from ecs_imds.cli.settings import config_of
from ecs_imds.cli.tables import pairs, printable, show, table
from ecs_imds.control import fleet
from ecs_imds.errors import ControlPlaneError, OutcomeUnknown

if TYPE_CHECKING:  # imported where used: `ecs-imds serve` loads no HTTP client nor rich
    from rich.table import Table

    from ecs_imds.clients.control import AdminClient

T = TypeVar("T")


class Admin:
    def __init__(self, ctx: click.Context, url: str | None, token: str | None,
                 as_json: bool) -> None:
        self.ctx = ctx
        self._url, self._token = url, token
        self.as_json = as_json
        self.wide = False
        self._client: AdminClient | None = None

    @property
    def client(self) -> AdminClient:
        if self._client is None:
            cfg = config_of(self.ctx)
            if self._url is None and not cfg.api.enabled:
                where = self.ctx.find_root().params.get("config") or "the config"
                raise click.ClickException(
                    f"the server has no API (api: false in {where}): set api: in it, or "
                    f"give --api URL of a server that has one")
            url = self._url or (f"unix://{cfg.api.unix}" if cfg.api.unix
                                else f"http://{cfg.api.bind}")
            token = self._token
            if token is None:
                try:
                    token = cfg.admin_token_path.read_text().strip()
                except OSError:
                    raise click.ClickException(
                        f"no API token: give --api-token or ECS_IMDS_API_TOKEN, or run where "
                        f"{cfg.admin_token_path} is readable") from None
            from ecs_imds.clients.control import AdminClient

            self._client = AdminClient(url, token)
        return self._client

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.attempt(lambda: self.client.json(method, path, **kwargs), path)

    def attempt(self, request: Callable[[], T], path: str = "") -> T:
        """`request()`, its failures said in one line: and when a change was sent and the
        answer lost, what to look at before trying again."""
        try:
            return request()
        except OutcomeUnknown as exc:
            raise click.ClickException(f"outcome unknown: {printable(exc)} — check with "
                                       f"`{_check_with(path)}` before trying again") from None
        except ControlPlaneError as exc:
            raise click.ClickException(printable(exc)) from None

    def show(self, data: Any, shown: Callable[[Any], Table] | None = None) -> None:
        """`data` as JSON (`--json`), or as the table `shown` makes of it."""
        if self.as_json or shown is None:
            click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            show(shown(data), self.wide)


pass_admin = click.make_pass_decorator(Admin)


def _check_with(path: str) -> str:
    """The command that shows whether a change to `path` was made."""
    parts = path.strip("/").split("/")
    if parts[:2] == ["v1", "instances"] and len(parts) > 2:
        return f"ecs-imds admin instance get {parts[2]}"
    return {"api-tokens": "ecs-imds admin token list", "defaults": "ecs-imds admin defaults get",
            "fleet": "ecs-imds admin export"}.get(parts[1] if len(parts) > 1 else "",
                                                  "ecs-imds admin status")


def _setting(name: str) -> Callable[[click.Context, click.Parameter, bool], None]:
    def set_on_admin(ctx: click.Context, _: click.Parameter, value: bool) -> None:
        if value:
            setattr(ctx.find_object(Admin), name, True)

    return set_on_admin


def output(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--json` and `--wide` on a command itself: `admin instance list --json` works as
    well as `admin --json instance list`."""
    command = click.option("--json", "as_json", is_flag=True, expose_value=False,
                           callback=_setting("as_json"),
                           help="Print JSON instead of tables.")(command)
    return click.option("--wide", is_flag=True, expose_value=False, callback=_setting("wide"),
                        help="Print every column of a table in full.")(command)


@click.group()
@click.option("--api", envvar="ECS_IMDS_API", help="http://HOST:PORT or unix:///PATH.")
@click.option("--api-token", envvar="ECS_IMDS_API_TOKEN", help="Bearer token.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_context
def admin(ctx: click.Context, api: str | None, api_token: str | None, as_json: bool) -> None:
    """Operate the fleet through the control plane's API."""
    ctx.obj = Admin(ctx, api, api_token, as_json)


# -- the fleet as a whole -----------------------------------------------------------------------
IMPORT_HELP = """Load a fleet file (YAML or JSON; - for standard input), validated whole: all
of it or nothing.

\b
Instances in FILE are created or replaced. The `defaults` in FILE are merged into the
defaults in the store, key by key (a JSON merge patch, RFC 7396): a key in FILE replaces
that key (`metadata-options` and `extra` merge their own keys), a key set to null removes
it, a key FILE does not name keeps its stored value. Instances not in FILE are kept.

\b
With --replace, FILE is the whole fleet: instances not in it are deleted and its defaults
replace the stored ones entirely (none in FILE: none left). A --replace that would delete
instances (an empty FILE: all of them) needs --yes, or a yes at the prompt.

--dry-run shows what would change (instances added, changed, removed; defaults changed)
and changes nothing. Every import carries an idempotency key: if the answer is lost, the
same command with --idempotency-key KEY is safe (an import made is not made twice).
"""


@admin.command("import", help=IMPORT_HELP)
@click.argument("file")
@click.option("--replace", is_flag=True, help="FILE is the whole fleet (see above).")
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@click.option("--yes", is_flag=True, help="Allow --replace to delete instances.")
@click.option("--idempotency-key", metavar="KEY",
              help="Send the import again under the KEY a lost answer named.")
@output
@pass_admin
def import_(adm: Admin, file: str, replace: bool, dry_run: bool, yes: bool,
            idempotency_key: str | None) -> None:
    doc = read_fleet_file(file)
    body = json.dumps(doc, ensure_ascii=False).encode()
    empty = not (isinstance(doc, dict) and doc.get("instances"))
    if dry_run or (replace and not yes):
        plan = adm.attempt(lambda: adm.client.plan_import(body, replace))
        if dry_run:
            click.echo(json.dumps(plan) if adm.as_json else describe_plan(plan))
            return
        if plan["Removed"]:
            _confirm_removal(file, plan["Removed"], empty)
    key = idempotency_key or uuid.uuid4().hex
    try:
        with progress_bar(sys.stderr.isatty() and not adm.as_json) as report:
            result = adm.client.import_fleet(body, replace, key, report)
    except OutcomeUnknown as exc:
        again = " ".join(["ecs-imds", "admin", "import", file, *(["--replace", "--yes"]
                          if replace else []), "--idempotency-key", key])
        raise click.ClickException(
            f"{file}: the import's outcome is unknown: {printable(exc)} — check with "
            f"`{again}` (safe: an import already made is not made again)") from None
    except ControlPlaneError as exc:
        raise click.ClickException(f"{file}: {printable(exc)}; nothing was changed") from None
    if adm.as_json:
        click.echo(json.dumps(result))
        return
    made = "was already imported" if result["Replayed"] else "imported"
    click.echo(f"{made}: {result['Instances']} instances (store version {result['Version']})",
               err=True)


def _confirm_removal(file: str, removed: list[str], empty: bool) -> None:
    """A --replace that deletes instances goes ahead only when the operator says so."""
    what = (f"{file} holds no instance: --replace would delete all {len(removed)} "
            "instances" if empty else
            f"--replace would delete {len(removed)} instances not in {file}: "
            + ", ".join(printable(i) for i in removed[:10])
            + (" …" if len(removed) > 10 else ""))
    if sys.stdin.isatty() and click.confirm(f"{what}. Go ahead?", err=True):
        return
    raise click.ClickException(f"{what}; nothing was changed (give --yes to go ahead)")


@admin.command("export")
@output
@pass_admin
def export(adm: Admin) -> None:
    """Write the fleet out in the form `import` reads (YAML; JSON with --json)."""
    click.echo(fleet.dump(adm.call("GET", "/v1/fleet"), adm.as_json), nl=False)


@admin.group()
def defaults() -> None:
    """What every instance inherits."""


@defaults.command("get")
@output
@pass_admin
def defaults_get(adm: Admin) -> None:
    click.echo(fleet.dump(adm.call("GET", "/v1/defaults"), adm.as_json), nl=False)


@defaults.command("set")
@click.argument("file")
@pass_admin
def defaults_set(adm: Admin, file: str) -> None:
    """Replace the defaults, all of them, with FILE's mapping (YAML or JSON): a key FILE
    does not name is removed (to change some keys only, `import` a file with `defaults`)."""
    adm.call("PUT", "/v1/defaults", json=read_fleet_file(file))
    click.echo("defaults replaced", err=True)


# -- instances ----------------------------------------------------------------------------------
@admin.group()
def instance() -> None:
    """List, show, create, replace and delete instances."""


def _instances_table(data: dict[str, Any]) -> Table:
    rows = []
    for doc in data["instances"]:
        nic = doc["network-interfaces"][0]
        opts = doc.get("metadata-options") or {}
        rows.append([doc["instance-id"], doc.get("instance-name", ""), nic["vpc-id"],
                     nic["private-ipv4s"][0], doc.get("ram-role", ""),
                     opts.get("http-tokens", "(default)")])
    shown = table(["instance-id", "name", "vpc-id", "private-ipv4", "ram-role", "tokens"],
                  rows, ids=["instance-id", "vpc-id", "private-ipv4", "ram-role"])
    if data["next-page-token"]:
        shown.caption = f"more: --page-token {printable(data['next-page-token'])}"
    return shown


@instance.command("list")
@click.option("--vpc-id")
@click.option("--region-id")
@click.option("--tag", help="KEY or KEY=VALUE")
@click.option("--page-size", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--page-token")
@output
@pass_admin
def instance_list(adm: Admin, /, **filters: Any) -> None:
    params = {k.replace("_", "-"): v for k, v in filters.items() if v is not None}
    adm.show(adm.call("GET", "/v1/instances", params=params), _instances_table)


@instance.command("get")
@click.argument("instance_id")
@output
@pass_admin
def instance_get(adm: Admin, instance_id: str) -> None:
    click.echo(fleet.dump(adm.call("GET", f"/v1/instances/{instance_id}"), adm.as_json),
               nl=False)


@instance.command("put")
@click.argument("file")
@pass_admin
def instance_put(adm: Admin, file: str) -> None:
    """Create or replace the instance FILE describes (YAML or JSON)."""
    doc = read_fleet_file(file)
    if not isinstance(doc, dict) or "instance-id" not in doc:
        raise click.ClickException(f"{file}: an instance needs instance-id")
    adm.call("PUT", f"/v1/instances/{doc['instance-id']}", json=doc)
    click.echo(f"{doc['instance-id']} written", err=True)


@instance.command("delete")
@click.argument("instance_id")
@pass_admin
def instance_delete(adm: Admin, instance_id: str) -> None:
    adm.call("DELETE", f"/v1/instances/{instance_id}")
    click.echo(f"{instance_id} deleted", err=True)


@admin.command("options")
@click.argument("instance_id")
@click.option("--http-endpoint", type=click.Choice(["enabled", "disabled"]))
@click.option("--http-tokens", type=click.Choice(["optional", "required"]))
@click.option("--hop-limit", type=int, help="http-put-response-hop-limit, 1-64")
@click.option("--instance-metadata-tags", type=click.Choice(["enabled", "disabled"]))
@output
@pass_admin
def options(adm: Admin, instance_id: str, http_endpoint: str | None, http_tokens: str | None,
            hop_limit: int | None, instance_metadata_tags: str | None) -> None:
    """Show or change (ModifyInstanceMetadataOptions) an instance's metadata options."""
    body = {k: v for k, v in {"HttpEndpoint": http_endpoint, "HttpTokens": http_tokens,
                              "HttpPutResponseHopLimit": hop_limit,
                              "InstanceMetadataTags": instance_metadata_tags}.items()
            if v is not None}
    path = f"/v1/instances/{instance_id}/metadata-options"
    data = adm.call("PATCH", path, json=body) if body else adm.call("GET", path)
    adm.show(data, lambda d: pairs("metadata options", d))


@admin.command("role")
@click.argument("instance_id")
@click.argument("role_name", required=False)
@click.option("--detach", is_flag=True)
@output
@pass_admin
def role(adm: Admin, instance_id: str, role_name: str | None, detach: bool) -> None:
    """Attach ROLE_NAME to an instance (AttachInstanceRamRole), or --detach it."""
    path = f"/v1/instances/{instance_id}/ram-role"
    if detach == bool(role_name):
        raise click.UsageError("give ROLE_NAME or --detach")
    data = (adm.call("DELETE", path) if detach
            else adm.call("PUT", path, json={"RamRoleName": role_name}))
    adm.show(data, lambda d: pairs("RAM role", d))


@admin.command("user-data")
@click.argument("instance_id")
@click.option("--set", "source", type=click.File("rb"), help="File with the new user data.")
@click.option("--delete", is_flag=True)
@pass_admin
def user_data(adm: Admin, instance_id: str, source: Any, delete: bool) -> None:
    """Print an instance's user data, or --set it from a file, or --delete it."""
    import base64

    path = f"/v1/instances/{instance_id}/user-data"
    if source is not None:
        adm.call("PUT", path, json={"UserData": base64.b64encode(source.read()).decode()})
    elif delete:
        adm.call("DELETE", path)
    else:
        data = adm.call("GET", path)["UserData"]
        if data is None:
            raise click.ClickException(f"{instance_id} has no user data")
        sys.stdout.buffer.write(base64.b64decode(data))


@admin.command("tags")
@click.argument("instance_id")
@click.argument("tags", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--remove", "remove", multiple=True, metavar="KEY")
@output
@pass_admin
def tags(adm: Admin, instance_id: str, tags: tuple[str, ...], remove: tuple[str, ...]) -> None:
    """Show tags, set KEY=VALUE pairs (others kept), or --remove KEY."""
    path = f"/v1/instances/{instance_id}/tags"
    data = adm.call("GET", path)
    if tags:
        new = dict(data["Tags"])
        for item in tags:
            key, sep, value = item.partition("=")
            if not sep:
                raise click.UsageError(f"{item!r} is not KEY=VALUE")
            new[key] = value
        data = adm.call("PUT", path, json={"Tags": new})
    for key in remove:
        data = adm.call("DELETE", f"{path}/{key}")
    adm.show(data, lambda d: pairs(f"tags of {instance_id}", d["Tags"]))


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@admin.command("spot")
@click.argument("instance_id")
@click.option("--at", "at", metavar="TIME", help="Reclaim time, e.g. 2026-11-28T17:03:00Z.")
@click.option("--in", "in_", type=click.IntRange(0), metavar="SECONDS",
              help="Reclaim this many seconds from now.")
@click.option("--cancel", is_flag=True, help="No reclaim scheduled any more.")
@output
@pass_admin
def spot(adm: Admin, instance_id: str, at: str | None, in_: int | None, cancel: bool) -> None:
    """Schedule (or cancel) a spot instance's reclaim: `instance/spot/termination-time`."""
    if [at is not None, in_ is not None, cancel].count(True) != 1:
        raise click.UsageError("give exactly one of --at, --in, --cancel")
    path = f"/v1/instances/{instance_id}/spot"
    if cancel:
        data = adm.call("DELETE", path)
    else:
        when = at or _utc(time.time() + (in_ or 0))
        data = adm.call("PUT", path, json={"TerminationTime": when})
    adm.show(data, lambda d: pairs("spot reclaim", d))


@admin.group()
def event() -> None:
    """Active system events (`maintenance/active-system-events`)."""


@event.command("list")
@click.argument("instance_id")
@output
@pass_admin
def event_list(adm: Admin, instance_id: str) -> None:
    columns = ["EventId", "EventType", "EventCycleStatus", "NotBefore", "Reason"]
    adm.show(adm.call("GET", f"/v1/instances/{instance_id}/events"),
             lambda data: table(columns, ([e[k] for k in columns] for e in data["Events"]),
                                ids=["EventId"]))


@event.command("add")
@click.argument("instance_id")
@click.option("--type", "event_type", required=True,
              help="EventType, e.g. SystemMaintenance.Reboot.")
@click.option("--not-before", help="UTC time; default now.")
@click.option("--reason", default="", help="Why (free text).")
@click.option("--status", default="Scheduled", show_default=True, help="EventCycleStatus.")
@click.option("--id", "event_id", help="EventId; default a new e-… id.")
@output
@pass_admin
def event_add(adm: Admin, instance_id: str, event_type: str, not_before: str | None,
              reason: str, status: str, event_id: str | None) -> None:
    """Add an active system event to an instance; prints its EventId."""
    body = {"EventType": event_type, "NotBefore": not_before, "Reason": reason,
            "EventCycleStatus": status, "EventId": event_id}
    data = adm.call("POST", f"/v1/instances/{instance_id}/events",
                    json={k: v for k, v in body.items() if v is not None})
    click.echo(json.dumps(data) if adm.as_json else data["EventId"])


@event.command("cancel")
@click.argument("instance_id")
@click.argument("event_id")
@pass_admin
def event_cancel(adm: Admin, instance_id: str, event_id: str) -> None:
    """Remove an event from the instance's active events."""
    adm.call("DELETE", f"/v1/instances/{instance_id}/events/{event_id}")
    click.echo(f"{event_id} cancelled", err=True)


# -- keys, identity, credentials, health -------------------------------------------------------
@admin.group()
def rotate() -> None:
    """Replace a key or secret of the fleet (every server takes it within a poll interval)."""


@rotate.command("token-key")
@output
@pass_admin
def rotate_token_key(adm: Admin) -> None:
    """Mint instance tokens with a new key; tokens of older keys stay valid until they
    expire."""
    data = adm.call("POST", "/v1/keys/token/rotate")
    click.echo(json.dumps(data) if adm.as_json else f"token key {data['KeyId']} now mints")


@rotate.command("identity-key")
@output
@pass_admin
def rotate_identity_key(adm: Admin) -> None:
    """A new identity signing key and certificate (publish the new `identity-cert`)."""
    data = adm.call("POST", "/v1/keys/identity/rotate")
    click.echo(json.dumps(data) if adm.as_json else "identity key rotated")


@rotate.command("api-secret")
@output
@pass_admin
def rotate_api_secret(adm: Admin) -> None:
    """A new secret for API tokens: every API token issued before is refused, on every
    server; each server writes a new admin token file on its host."""
    data = adm.call("POST", "/v1/keys/api-secret/rotate")
    if adm.as_json:
        click.echo(json.dumps(data))
        return
    where = data["AdminTokenFile"] or "the data dir of each server"
    click.echo(f"API secret rotated: every API token issued before is refused.\n"
               f"A new admin token is in {printable(where)} (on the server's host); "
               f"issue others with `ecs-imds admin token create`.")


@rotate.command("credentials")
@output
@pass_admin
def rotate_credentials(adm: Admin) -> None:
    """A new secret for the builtin RAM credential issuer: every instance is served new
    credentials at once, and the old ones no longer verify."""
    data = adm.call("POST", "/v1/keys/credentials/rotate")
    click.echo(json.dumps(data) if adm.as_json else
               "credential secret rotated: instances are served new RAM credentials")


@admin.command("identity-cert")
@pass_admin
def identity_cert(adm: Admin) -> None:
    """Print the certificate that verifies instance identity signatures (PEM)."""
    try:
        click.echo(adm.client.request("GET", "/v1/identity/certificate").text, nl=False)
    except ControlPlaneError as exc:
        raise click.ClickException(printable(exc)) from None


@admin.command("verify-credential")
@click.argument("access_key_id")
@click.argument("security_token")
@output
@pass_admin
def verify_credential(adm: Admin, access_key_id: str, security_token: str) -> None:
    """Say which instance and role a builtin RAM credential belongs to, and if it is valid."""
    data = adm.call("POST", "/v1/credentials/verify",
                    json={"AccessKeyId": access_key_id, "SecurityToken": security_token})
    if adm.as_json:
        click.echo(json.dumps(data))
    else:
        state = "valid" if data["Valid"] else "expired"
        click.echo(printable(f"instance {data['InstanceId']} role {data['RoleName']} issued "
                             f"{data['LastUpdated']} expires {data['Expiration']}: {state}"))
    if not data["Valid"]:
        adm.ctx.exit(1)


@admin.group()
def token() -> None:
    """Bearer tokens for the API: create, list, revoke."""


@token.command("create")
@click.argument("name")
@click.option("--scope", type=click.Choice(["read", "admin"]), default="read",
              show_default=True)
@click.option("--lifetime", type=click.IntRange(1), metavar="SECONDS",
              help="How long it is valid (default and maximum: the server's "
                   "api.token-lifetime and api.token-max-lifetime).")
@output
@pass_admin
def token_create(adm: Admin, name: str, scope: str, lifetime: int | None) -> None:
    """Issue a bearer token for the API (read-only by default); prints the token."""
    body: dict[str, Any] = {"Name": name, "Scope": scope}
    if lifetime is not None:
        body["Lifetime"] = lifetime
    data = adm.call("POST", "/v1/api-tokens", json=body)
    if adm.as_json:
        click.echo(json.dumps(data))
    else:
        click.echo(data["Token"])
        click.echo(f"token {data['Id']} ({scope}) expires {data['Expiration']}", err=True)


_TOKEN_COLUMNS = ["Id", "Name", "Scope", "State", "Issued", "Expiration", "Revoked"]


@token.command("list")
@output
@pass_admin
def token_list(adm: Admin) -> None:
    """Every API token issued (never the tokens themselves): id, name, scope, state."""
    adm.show(adm.call("GET", "/v1/api-tokens"),
             lambda data: table(_TOKEN_COLUMNS, ([t[k] for k in _TOKEN_COLUMNS]
                                                 for t in data["Tokens"]), ids=["Id"]))


@token.command("revoke")
@click.argument("token_id")
@output
@pass_admin
def token_revoke(adm: Admin, token_id: str) -> None:
    """Refuse one API token from now on, on every server (TOKEN_ID from `token list`)."""
    data = adm.call("DELETE", f"/v1/api-tokens/{token_id}")
    adm.show(data, lambda d: pairs("revoked", d))


@admin.command("status")
@output
@pass_admin
def status(adm: Admin) -> None:
    """Is the server ready, and how fresh is its snapshot?"""
    client = adm.client
    try:
        data = client.http.get("/readyz").json()
    except Exception as exc:  # any failure to reach it is the answer
        raise click.ClickException(f"control plane unreachable: {exc}") from None
    adm.show(data, lambda d: pairs("status", d))
    if not data.get("ready"):
        adm.ctx.exit(1)


@admin.command("migrate")
@click.option("--from", "source", metavar="URL",
              help="The store to copy from (default: the configured store).")
@click.option("--to", "target", metavar="URL", required=True,
              help="The store to copy to: sqlite:///PATH or postgresql://…")
@click.option("--replace", is_flag=True, help="Overwrite a target that already holds a fleet.")
@pass_admin
def migrate(adm: Admin, source: str | None, target: str, replace: bool) -> None:
    """Copy the whole fleet to another store (SQLite ⇄ PostgreSQL): instances, defaults,
    token keys, secrets. Works on the stores directly, not through the API."""
    from ecs_imds.errors import SourceEmpty, TargetNotEmpty
    from ecs_imds.store import open_store
    from ecs_imds.store.migrate import copy_store

    cfg = config_of(adm.ctx)
    try:
        src = open_store(source or cfg.store, cfg.data_dir)
        dst = open_store(target, cfg.data_dir)
        copied = copy_store(src, dst, replace=replace)
    except (SourceEmpty, TargetNotEmpty, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"copied {copied.instances} instances, {copied.token_keys} token keys and "
               f"{copied.secrets} secrets (target store version {copied.version})", err=True)
