"""`ecs-imds serve | get | verify-identity | config check | sandbox | admin …`."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click
import yaml

from ecs_imds import logs
from ecs_imds.cli.admin import admin
from ecs_imds.cli.sandbox import sandbox
from ecs_imds.cli.settings import Problems, config_of, read_config
from ecs_imds.clients.metadata import MetadataClient
from ecs_imds.config import (
    LOG_FORMATS,
    LOG_LEVELS,
    Config,
    Listener,
    effective,
    loopback_aliases,
    parse_bind,
    read_yaml,
)
from ecs_imds.control import fleet
from ecs_imds.demo import DEMO_VPC, demo_fleet
from ecs_imds.errors import CredentialError, MetadataError, ValidationError

DEMO_LISTEN = "127.0.0.1:8080"


@click.group()
@click.version_option(version("ecs-imds"), prog_name="ecs-imds")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar="ECS_IMDS_CONFIG", help="YAML config file.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              envvar="ECS_IMDS_DATA_DIR", help="Where the embedded store lives.")
@click.option("--store", envvar="ECS_IMDS_STORE",
              help="Store URL: sqlite:///PATH or postgresql://….")
@click.option("--log-level", type=click.Choice(LOG_LEVELS),
              help="The server's log: this level and above (default info).")
@click.option("--log-format", type=click.Choice(LOG_FORMATS),
              help="text for people, json (one object a line) for collectors.")
@click.option("-v", "--verbose", is_flag=True, help="Same as --log-level debug.")
@click.pass_context
def main(ctx: click.Context, config: Path | None, data_dir: Path | None, store: str | None,
         log_level: str | None, log_format: str | None, verbose: bool) -> None:
    """An instance metadata service speaking Alibaba Cloud ECS's protocol."""
    if verbose and log_level is None:
        ctx.params["log_level"] = log_level = "debug"
    logs.configure(log_level or "info", log_format or "text")


@main.command()
@click.option("--demo", is_flag=True,
              help="Load the demo fleet; without listeners, listen on 127.0.0.1:8080.")
@click.option("--fleet", "fleet_file", type=click.Path(exists=True, dir_okay=False),
              help="Load this fleet file into the store at start (replacing the fleet).")
@click.option("--listen", "listen", multiple=True, metavar="ADDR:PORT=VPC",
              help="Add a listener serving VPC (repeatable).")
@click.option("--api", "api", metavar="ADDR:PORT|unix:PATH|off",
              help="The control plane's listener (default: the config's, 127.0.0.1:9180).")
@click.option("--workers", type=click.IntRange(1), metavar="N",
              help="Data plane processes sharing the listeners (SO_REUSEPORT); one per core.")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Once serving, write the addresses actually listened on here (JSON).")
@click.pass_context
def serve(ctx: click.Context, demo: bool, fleet_file: str | None, listen: tuple[str, ...],
          api: str | None, workers: int | None, ready_file: Path | None) -> None:
    """Run the data plane and the control plane until SIGINT/SIGTERM (SIGHUP: reload)."""
    from ecs_imds.server.process import Ready, Service

    cfg = config_of(ctx, api=api, workers=workers)
    extra = [_listen_option(item) for item in listen]
    doc = demo_fleet() if demo else _fleet_file(fleet_file) if fleet_file else None
    listeners = (*cfg.listeners, *extra)
    origins = [f"listeners[{i}].bind" for i in range(len(cfg.listeners))] + [
        "--listen"] * len(extra) + ["--demo"]
    if demo and not listeners:
        host, port = parse_bind(DEMO_LISTEN, "demo")
        ids = [i["instance-id"] for i in (doc or {}).get("instances", [])]
        listeners = (Listener(host, port, DEMO_VPC, loopback_aliases(ids)),)
    if not listeners:
        raise click.ClickException("no listeners: give --listen, a config file, or --demo")
    cfg = replace(cfg, listeners=listeners)
    try:
        service = Service.open(cfg)
    except ValidationError as exc:
        raise Problems(_located(exc, ctx, origins)) from None
    try:
        if doc is not None:
            fleet.import_fleet(service.store, doc, replace=True)
    except ValidationError as exc:
        raise Problems(exc.within(fleet_file or "demo fleet", ": ")) from None
    except CredentialError as exc:
        raise click.ClickException(f"credentials: {exc}") from None

    def ready(what: Ready) -> None:
        if ready_file is not None:
            _write_ready_file(ready_file, what)
        if demo:
            click.echo(_banner(ctx, service.config, what, doc or {}))

    service.on_ready = ready
    service.reload = lambda: _reloaded(ctx, cfg, extra, api, workers)
    try:
        service.run()
    except ValidationError as exc:
        raise Problems(_located(exc, ctx, origins)) from None


def _located(exc: ValidationError, ctx: click.Context, origins: list[str]) -> ValidationError:
    """A start-up error named where the setting came from: the config file or an option
    (`origins`: where each listener came from, in order)."""
    field = exc.field
    if field.startswith("listeners["):
        field = origins[int(field[10:].split("]")[0])]
    elif field.startswith("api.") and ctx.params.get("api"):
        field = "--api"
    config = ctx.find_root().params.get("config")
    if config and field and not field.startswith("--"):
        field = f"{config}: {field}"
    return ValidationError(field, exc.message)


def _listen_option(item: str) -> Listener:
    bind, _, vpc = item.partition("=")
    try:
        host, port = parse_bind(bind, "--listen")
    except ValidationError as exc:
        raise Problems(exc) from None
    if not vpc:
        raise click.ClickException("--listen needs ADDR:PORT=VPC-ID")
    return Listener(host, port, vpc)


def _fleet_file(path: str) -> Any:
    try:
        return read_yaml(Path(path))
    except ValidationError as exc:
        raise Problems(exc) from None


def _reloaded(ctx: click.Context, started: Config, extra: list[Listener], api: str | None,
              workers: int | None) -> Config:
    """The config as a reload sees it: the file anew, the command line's listeners kept."""
    cfg = read_config(ctx, api=api, workers=workers)
    listeners = (*cfg.listeners, *extra) or started.listeners
    return replace(cfg, listeners=listeners)


def _write_ready_file(path: Path, what: Any) -> None:
    doc = {"pid": os.getpid(), "api": what.api,
           "listeners": [{"bind": lst.bind, "vpc-id": lst.vpc_id, "aliases": lst.aliases}
                         for lst in what.listeners]}
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(doc, indent=1))
    part.replace(path)  # whoever waits for it never reads half of it


def _banner(ctx: click.Context, cfg: Config, what: Any, doc: dict[str, Any]) -> str:
    """How to reach what now serves, as commands that run exactly as printed."""
    names = {i["instance-id"]: i.get("instance-name", "") for i in doc.get("instances", [])}
    prog = sys.argv[0] if "/" in sys.argv[0] else "ecs-imds"
    root = ctx.find_root().params
    where = (f" --config {root['config']}" if root.get("config") else
             f" --data-dir {root['data_dir']}" if root.get("data_dir") else "")
    lines = [f"serving the demo fleet from {cfg.data_dir}"]
    first = what.listeners[0]
    for lst in what.listeners:
        lines.append(f"  listener {lst.bind} for {lst.vpc_id}; callers by source address:")
        lines += [f"    {addr:<15} {iid}  {names.get(iid, '')}" for addr, iid in
                  lst.aliases.items()] or ["    (no aliases: instances' own addresses)"]
    lines.append(f"  control plane {what.api or 'off'}; admin token in {cfg.admin_token_path}")
    if what.api and what.api.startswith("http://"):
        lines.append(f"  the console: {what.api}/console/ (sign in with that token)")
    url = f"http://{first.bind}"
    lines += ["Try:", f"  curl {url}/latest/meta-data/"]
    for addr in list(first.aliases)[2:3]:
        lines.append(f"  curl --interface {addr} {url}/latest/meta-data/instance-id")
    api = "" if what.api == cfg.api.url else f" --api {what.api}"
    lines += [f"  ECS_IMDS_ENDPOINT={url} {prog} get --token meta-data/instance/instance-name",
              f"  {prog}{where} admin{api} instance list"]
    return "\n".join(lines)


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


@main.command("verify-identity")
@click.option("--document", type=click.File("rb"), required=True,
              help="The identity document as the instance sent it.")
@click.option("--signature", type=click.File("rb"), required=True,
              help="The pkcs7 body (base64, PEM armour optional).")
@click.option("--cert", type=click.File("rb"), required=True,
              help="The service's certificate (`admin identity-cert`).")
@click.option("--audience", metavar="X",
              help="Require a signature made for exactly this audience (pkcs7?audience=X).")
def verify_identity(document: Any, signature: Any, cert: Any, audience: str | None) -> None:
    """Check an identity document and its signature, as a relying service would."""
    from ecs_imds.protocol.identity import verify

    if not verify(document.read(), signature.read(), cert.read(), audience):
        raise click.ClickException("Verification failure")
    click.echo("Verification successful")


@main.group("config")
def config_group() -> None:
    """The config file."""


@config_group.command("check")
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False,
                                                        path_type=Path))
@click.pass_context
def config_check(ctx: click.Context, file: Path | None) -> None:
    """Validate FILE (default: --config) and print the settings in force, defaults included.
    Every problem is reported, one line each; the exit status is 1 if there is any."""
    root = ctx.find_root()
    if file is not None:
        root.params["config"] = file
    cfg = config_of(ctx)
    click.echo(yaml.safe_dump(effective(cfg), sort_keys=False, allow_unicode=True), nl=False)
    click.echo(f"{root.params.get('config') or '(no config file)'}: OK", err=True)


main.add_command(admin)
main.add_command(sandbox)
