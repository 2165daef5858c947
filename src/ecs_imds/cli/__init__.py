"""`ecs-imds serve | get | admin …`."""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from ecs_imds.cli.admin import admin, config_of
from ecs_imds.clients.metadata import MetadataClient
from ecs_imds.config import Listener, parse_bind
from ecs_imds.control import fleet
from ecs_imds.demo import DEMO_VPC, demo_fleet
from ecs_imds.errors import CredentialError, MetadataError, ValidationError

DEMO_LISTEN = "127.0.0.1:8080"



@click.group()
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar="ECS_IMDS_CONFIG", help="YAML config file.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              envvar="ECS_IMDS_DATA_DIR", help="Where the embedded store lives.")
@click.option("--store", envvar="ECS_IMDS_STORE",
              help="Store URL: sqlite:///PATH or postgresql://….")
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level.")
def main(config: Path | None, data_dir: Path | None, store: str | None, verbose: bool) -> None:
    """An instance metadata service speaking Alibaba Cloud ECS's protocol."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)


@main.command()
@click.option("--demo", is_flag=True, help="Load the demo fleet and listen on 127.0.0.1:8080.")
@click.option("--listen", "listen", multiple=True, metavar="ADDR:PORT=VPC",
              help="Add a listener serving VPC (repeatable).")
@click.option("--workers", type=click.IntRange(1), metavar="N",
              help="Data plane processes sharing the listeners (SO_REUSEPORT); one per core.")
@click.pass_context
def serve(ctx: click.Context, demo: bool, listen: tuple[str, ...], workers: int | None
          ) -> None:
    """Run the data plane."""
    from ecs_imds.server.process import Service

    cfg = config_of(ctx)
    if workers is not None:
        cfg = replace(cfg, workers=workers)
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
        data = f"--data-dir {cfg.data_dir}"
        click.echo(f"demo fleet loaded into {cfg.data_dir}; 127.0.0.1 is {first}. Try:\n"
                   f"  curl http://{DEMO_LISTEN}/latest/meta-data/\n"
                   f"  ECS_IMDS_ENDPOINT=http://{DEMO_LISTEN} ecs-imds get meta-data/all\n"
                   f"  ecs-imds {data} admin instance list      # the control plane, "
                   f"{service.config.api.unix or service.config.api.bind}"
                   + ("" if service.config.api.unix else
                      f"\n  the console: http://{service.config.api.bind}/console/ (sign in "
                      f"with the token in {service.config.admin_token_path})"))
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


main.add_command(admin)
