"""Fleet files on the operator's side of `admin import`: reading them, showing what an
import would change, and following an import's progress to its end on the server."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import yaml

from ecs_imds.cli.tables import printable

# PyYAML's C parser, where libyaml is there: five times faster on a large fleet.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_fleet_file(path: str) -> Any:
    """A fleet file, or - for standard input: JSON (a `.json` name, or text that starts
    with `{`) is read with `json`, anything else as YAML."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path}: cannot be read: "
                                   f"{getattr(exc, 'strerror', None) or exc}") from None
    if path.endswith(".json") or text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"{path}: not JSON: {exc.msg} at line {exc.lineno} "
                                       f"column {exc.colno}") from None
    try:
        return yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1} column {where.column + 1}" if where else ""
        raise click.ClickException(f"{path}: not YAML or JSON{at}: "
                                   f"{getattr(exc, 'problem', None) or exc}") from None


def describe_plan(plan: dict[str, Any]) -> str:
    """What a dry run found, for people: every id it would add, change or remove."""
    lines = [f"would add {len(plan['Added'])}, change {len(plan['Changed'])}, remove "
             f"{len(plan['Removed'])} instances ({plan['Unchanged']} unchanged)"]
    for word, ids in (("add", plan["Added"]), ("change", plan["Changed"]),
                      ("remove", plan["Removed"])):
        lines += [f"  {word:<6} {printable(i)}" for i in ids]
    for key, (before, after) in plan["Defaults"].items():
        lines.append(f"  defaults.{printable(key)}: {printable(json.dumps(before))} -> "
                     f"{printable(json.dumps(after))}")
    if not plan["Defaults"]:
        lines.append("  defaults unchanged")
    return "\n".join(lines)


_STAGES = {"upload": "uploading", "parse": "parsing", "validate": "validating",
           "write": "writing"}


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A progress report for `AdminClient.import_fleet`: a bar on a terminal, else none."""
    if not enabled:
        yield lambda stage, done, total: None
        return
    from rich.console import Console  # here: `ecs-imds serve` loads no rich
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("uploading", total=None)

        def report(stage: str, done: int, total: int) -> None:
            bar.update(task, description=_STAGES.get(stage, stage), completed=done,
                       total=total or None)

        yield report
