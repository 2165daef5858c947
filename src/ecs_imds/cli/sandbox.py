"""`ecs-imds sandbox [--fleet FILE] [--instance ID] [--mode normal|hardened] -- CMD…`."""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING

import click

from ecs_imds.cli.settings import Problems
from ecs_imds.errors import ValidationError

if TYPE_CHECKING:  # imported when run: every other command loads no test harness nor httpx
    from ecs_imds.testing.sandbox import Sandbox


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--fleet", "fleet_file", type=click.Path(exists=True, dir_okay=False),
              help="The fleet (YAML or JSON); default the demo fleet.")
@click.option("--instance", "instance_id", metavar="ID",
              help="Who CMD is: an instance of the fleet (default its first).")
@click.option("--mode", metavar="normal|hardened",
              help="hardened: tokens required; normal: optional (default: as in the fleet).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def sandbox(fleet_file: str | None, instance_id: str | None, mode: str | None,
            command: tuple[str, ...]) -> None:
    """Run CMD as an ECS instance: in a fresh network namespace where 100.100.100.200:80 is
    ecs-imds serving that instance, and nothing else is reachable. The exit status is CMD's
    (128+N when a signal N ended it); the namespace and the server end with CMD.

    As root it uses `ip netns` and a veth pair; as another user an unprivileged user +
    network namespace, where the kernel allows one."""
    from ecs_imds.testing.sandbox import Sandbox, SandboxUnavailable

    try:
        box = Sandbox(fleet_file, instance_id, mode)
    except ValidationError as exc:
        raise Problems(exc) from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        box.start()
    except SandboxUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except RuntimeError as exc:
        raise click.ClickException(str(exc).splitlines()[0]) from None
    try:
        status = _run(box, command)
    finally:
        box.close()
    sys.exit(status)


def _run(box: Sandbox, command: tuple[str, ...]) -> int:
    """Run CMD, passing on the signals that would stop us; its exit status, shell style."""
    from ecs_imds.testing.sandbox import die_with_parent

    try:
        proc = box.popen(command, preexec_fn=die_with_parent)
    except OSError as exc:
        raise click.ClickException(f"{command[0]}: {exc.strerror}") from None

    def forward(signum: int, frame: FrameType | None) -> None:
        proc.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    code = proc.wait()
    return 128 - code if code < 0 else code
