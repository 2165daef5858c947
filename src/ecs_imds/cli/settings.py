"""The config every command reads, and how a bad one is reported: one line a problem."""

from __future__ import annotations

from typing import IO, Any

import click

from ecs_imds import logs
from ecs_imds.config import Config, load
from ecs_imds.errors import ConfigError, ValidationError


class Problems(click.ClickException):
    """Bad input: each problem on a line of its own (`Error: FILE: SETTING: what to do`)."""

    def __init__(self, error: ValidationError) -> None:
        self.lines = error.lines if isinstance(error, ConfigError) else [str(error)]
        super().__init__(self.lines[0])

    def show(self, file: IO[Any] | None = None) -> None:
        for line in self.lines:
            click.echo(f"Error: {line}", err=True)


def read_config(ctx: click.Context, **overrides: Any) -> Config:
    """The config file and the global options of the command line (and `overrides`, given as
    the command's own options); ValidationError if any of it is bad."""
    opts = ctx.find_root().params
    data_dir = opts.get("data_dir")
    return load(opts.get("config"), data_dir=str(data_dir) if data_dir else None,
                store=opts.get("store"), log_level=opts.get("log_level"),
                log_format=opts.get("log_format"), **overrides)


def config_of(ctx: click.Context, **overrides: Any) -> Config:
    """`read_config`, its problems reported one line each; the log follows what it says."""
    try:
        config = read_config(ctx, **overrides)
    except ValidationError as exc:
        raise Problems(exc) from None
    logs.configure(config.log_level, config.log_format)
    return config
