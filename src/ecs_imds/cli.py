"""`ecs-imds serve | get | admin …`."""

from __future__ import annotations

import logging
import sys
import time
import uuid
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import click
import yaml

from . import fleet
from .client import MetadataClient, MetadataError
from .config import Config, Listener, load, parse_bind
from .credentials import CredentialError
from .errors import ValidationError
from .store import Store, open_store

DEMO_VPC = "vpc-demo000001"
DEMO_LISTEN = "127.0.0.1:8080"


def demo_fleet() -> dict[str, Any]:
    return yaml.safe_load(resources.files("ecs_imds").joinpath("demo/fleet.yaml").read_text())


def _config(ctx: click.Context) -> Config:
    opts = ctx.find_root().params
    try:
        return load(opts.get("config"), data_dir=opts.get("data_dir"), store=opts.get("store"))
    except ValidationError as exc:
        raise click.ClickException(f"config: {exc}") from None


def _store(ctx: click.Context) -> Store:
    cfg = _config(ctx)
    return open_store(cfg.store, cfg.data_dir)


def read_fleet_file(path: str) -> Any:
    """A fleet file, YAML or JSON (JSON is YAML), or - for standard input."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise click.ClickException(f"{path}: not YAML or JSON: {exc}") from None


@click.group()
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar="ECS_IMDS_CONFIG", help="YAML config file.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              envvar="ECS_IMDS_DATA_DIR", help="Where the embedded store lives.")
@click.option("--store", envvar="ECS_IMDS_STORE", help="Store URL (sqlite:///path).")
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level.")
def main(config: Path | None, data_dir: Path | None, store: str | None, verbose: bool) -> None:
    """An instance metadata service speaking Alibaba Cloud ECS's protocol."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--demo", is_flag=True, help="Load the demo fleet and listen on 127.0.0.1:8080.")
@click.option("--listen", "listen", multiple=True, metavar="ADDR:PORT=VPC",
              help="Add a listener serving VPC (repeatable).")
@click.pass_context
def serve(ctx: click.Context, demo: bool, listen: tuple[str, ...]) -> None:
    """Run the data plane."""
    from .service import Service

    cfg = _config(ctx)
    listeners = list(cfg.listeners)
    for item in listen:
        bind, _, vpc = item.partition("=")
        try:
            host, port = parse_bind(bind, "--listen")
        except ValidationError as exc:
            raise click.ClickException(str(exc)) from None
        if not vpc:
            raise click.ClickException("--listen needs ADDR:PORT=VPC-ID")
        listeners.append(Listener(host, port, vpc))
    try:
        service = Service.open(replace(cfg, listeners=tuple(listeners)))
    except (CredentialError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    if demo:
        doc = demo_fleet()
        fleet.import_fleet(service.store, doc, replace=True)
        first = doc["instances"][0]["instance-id"]
        if not listeners:
            host, port = parse_bind(DEMO_LISTEN, "demo")
            listeners.append(Listener(host, port, DEMO_VPC, {"127.0.0.1": first}))
        service.config = replace(service.config, listeners=tuple(listeners))
        click.echo(f"demo fleet loaded into {cfg.data_dir}; 127.0.0.1 is {first}. Try:\n"
                   f"  curl http://{DEMO_LISTEN}/latest/meta-data/\n"
                   f"  ECS_IMDS_ENDPOINT=http://{DEMO_LISTEN} ecs-imds get meta-data/all")
    if not service.config.listeners:
        raise click.ClickException("no listeners: give --listen, a config file, or --demo")
    service.run()


@main.command()
@click.argument("path")
@click.option("--token", "use_token", is_flag=True, help="Use a session token (hardening mode).")
@click.option("--ttl", default=21600, show_default=True, help="Token TTL in seconds.")
@click.option("--endpoint", envvar="ECS_IMDS_ENDPOINT", help="Default http://100.100.100.200.")
def get(path: str, use_token: bool, ttl: int, endpoint: str | None) -> None:
    """Read PATH (e.g. meta-data/instance-id) from inside an instance."""
    try:
        client = MetadataClient(endpoint or "", use_token=use_token, token_ttl=ttl)
        body = client.get(path)
    except (MetadataError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    sys.stdout.buffer.write(body)
    if sys.stdout.isatty() and not body.endswith(b"\n"):
        sys.stdout.write("\n")


@main.group()
def admin() -> None:
    """Operate on the store."""


@admin.command("import")
@click.argument("file")
@click.option("--replace", is_flag=True, help="Delete instances that are not in FILE.")
@click.pass_context
def import_(ctx: click.Context, file: str, replace: bool) -> None:
    """Load a fleet file (YAML or JSON), validated whole: all of it or nothing."""
    doc = read_fleet_file(file)
    store = _store(ctx)
    try:
        version = fleet.import_fleet(store, doc, replace=replace)
    except ValidationError as exc:
        raise click.ClickException(f"{file}: {exc}; nothing was changed") from None
    count = len((doc or {}).get("instances") or [])
    click.echo(f"imported {count} instances (store version {version})", err=True)


@admin.command("export")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of YAML.")
@click.pass_context
def export(ctx: click.Context, as_json: bool) -> None:
    """Write the fleet out in the form `import` reads."""
    click.echo(fleet.dump(fleet.export_fleet(_store(ctx)), as_json), nl=False)


@admin.command("rotate-token-key")
@click.pass_context
def rotate_token_key(ctx: click.Context) -> None:
    """Mint new tokens with a new key; tokens of older keys stay valid until they expire."""
    key = fleet.rotate_token_key(_store(ctx))
    click.echo(f"token key {key.kid} now mints new tokens")


@admin.command("verify-credential")
@click.argument("access_key_id")
@click.argument("security_token")
@click.pass_context
def verify_credential(ctx: click.Context, access_key_id: str, security_token: str) -> None:
    """Say which instance and role a builtin RAM credential belongs to, and if it is valid."""
    from .credentials import BuiltinIssuer, format_time
    from .service import credential_issuer

    cfg = _config(ctx)
    if cfg.credentials.issuer != "builtin":
        raise click.ClickException("only credentials of the builtin issuer can be verified")
    issuer = credential_issuer(_store(ctx), cfg.credentials)
    assert isinstance(issuer, BuiltinIssuer)
    verdict = issuer.verify(access_key_id, security_token, time.time())
    if verdict is None:
        raise click.ClickException("not a credential of this fleet")
    state = "valid" if verdict.valid else "expired"
    click.echo(f"instance {verdict.instance_id} role {verdict.role} issued "
               f"{format_time(verdict.issued)} expires {format_time(verdict.expires)}: {state}")
    if not verdict.valid:
        ctx.exit(1)


@admin.command("identity-cert")
@click.pass_context
def identity_cert(ctx: click.Context) -> None:
    """Print the certificate that verifies instance identity signatures (PEM)."""
    from .service import identity_signer

    click.echo(identity_signer(_store(ctx)).cert_pem.decode(), nl=False)


@main.command("verify-identity")
@click.option("--document", type=click.File("rb"), required=True,
              help="The identity document as the instance sent it.")
@click.option("--signature", type=click.File("rb"), required=True,
              help="The pkcs7 body (base64, PEM armour optional).")
@click.option("--cert", type=click.File("rb"), required=True,
              help="The service's certificate (`admin identity-cert`).")
def verify_identity(document: Any, signature: Any, cert: Any) -> None:
    """Check an identity document and its signature, as a relying service would."""
    from .identity import verify

    if not verify(document.read(), signature.read(), cert.read()):
        raise click.ClickException("Verification failure")
    click.echo("Verification successful")


def _set_instance(ctx: click.Context, instance_id: str, mutate: Any) -> None:
    try:
        _, version = fleet.modify_instance(_store(ctx), instance_id, mutate)
    except fleet.NotFound:
        raise click.ClickException(f"no instance {instance_id}") from None
    except ValidationError as exc:
        raise click.ClickException(f"{exc}; nothing was changed") from None
    click.echo(f"{instance_id} changed (store version {version})", err=True)


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@admin.command("spot")
@click.argument("instance_id")
@click.option("--at", "at", metavar="TIME", help="Reclaim time, e.g. 2026-11-28T17:03:00Z.")
@click.option("--in", "in_", type=click.IntRange(0), metavar="SECONDS",
              help="Reclaim this many seconds from now.")
@click.option("--cancel", is_flag=True, help="No reclaim scheduled any more.")
@click.pass_context
def spot(ctx: click.Context, instance_id: str, at: str | None, in_: int | None,
         cancel: bool) -> None:
    """Schedule (or cancel) a spot instance's reclaim: `instance/spot/termination-time`."""
    if sum(x is not None and x is not False for x in (at, in_, cancel or None)) != 1:
        raise click.UsageError("give exactly one of --at, --in, --cancel")
    when = None if cancel else at or _utc(time.time() + (in_ or 0))

    def mutate(doc: dict[str, Any]) -> None:
        doc.pop("spot-termination-time", None)
        if when:
            doc["spot-termination-time"] = when

    _set_instance(ctx, instance_id, mutate)


@admin.group()
def event() -> None:
    """Active system events (`maintenance/active-system-events`)."""


@event.command("add")
@click.argument("instance_id")
@click.option("--type", "event_type", required=True,
              help="EventType, e.g. SystemMaintenance.Reboot.")
@click.option("--not-before", help="UTC time; default now.")
@click.option("--reason", default="", help="Why (free text).")
@click.option("--status", default="Scheduled", show_default=True, help="EventCycleStatus.")
@click.option("--id", "event_id", help="EventId; default a new e-… id.")
@click.pass_context
def event_add(ctx: click.Context, instance_id: str, event_type: str, not_before: str | None,
              reason: str, status: str, event_id: str | None) -> None:
    """Add an active system event to an instance."""
    event_id = event_id or f"e-{uuid.uuid4().hex[:20]}"
    record = {"EventId": event_id, "EventType": event_type, "EventCycleStatus": status,
              "NotBefore": not_before or _utc(time.time()), "Reason": reason}

    def mutate(doc: dict[str, Any]) -> None:
        doc["events"] = [e for e in doc.get("events", []) if e["EventId"] != event_id]
        doc["events"].append(record)

    _set_instance(ctx, instance_id, mutate)
    click.echo(event_id)


@event.command("cancel")
@click.argument("instance_id")
@click.argument("event_id")
@click.pass_context
def event_cancel(ctx: click.Context, instance_id: str, event_id: str) -> None:
    """Remove an event from the instance's active events."""

    def mutate(doc: dict[str, Any]) -> None:
        events = doc.get("events", [])
        if not any(e["EventId"] == event_id for e in events):
            raise ValidationError("events", f"no active event {event_id}")
        doc["events"] = [e for e in events if e["EventId"] != event_id]

    _set_instance(ctx, instance_id, mutate)
