"""Tables for people: what `admin` prints when not asked for JSON.

Everything shown comes from the fleet, and the fleet comes from whoever wrote it: a value
holding ESC could repaint the operator's terminal, a U+2028 could fake a line. Every cell
is therefore made printable (control characters escaped, as Python writes them) and set as
plain text, never as rich markup. Ids are never cut: a table too wide for the terminal is
printed wider (the terminal wraps it) rather than ellipsised, because the next command
needs the id whole; `--wide` prints every column in full.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: `ecs-imds serve` loads no rich
    from rich.table import Table

# C0, DEL and C1 controls, the line and paragraph separators, and the bidirectional
# overrides and isolates that reorder what a terminal shows.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(value: object) -> str:
    """`value` as text with every control character escaped (`\\x1b`, `\\u2028`, …)."""
    text = "" if value is None else str(value)
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def table(columns: Iterable[str], rows: Iterable[Iterable[Any]], ids: Iterable[str] = (),
          title: str | None = None) -> Table:
    """A table whose `ids` columns are never wrapped nor cut."""
    from rich.table import Table
    from rich.text import Text

    cells = [[printable(cell) for cell in row] for row in rows]
    columns = list(columns)
    keep = set(ids)
    result = Table(title=None if title is None else Text(printable(title)))
    for i, name in enumerate(columns):
        longest = max((len(row[i]) for row in cells), default=0)
        if name in keep:
            result.add_column(name, no_wrap=True, min_width=max(longest, len(name)))
        else:
            result.add_column(name)
    for row in cells:
        result.add_row(*(Text(cell) for cell in row))
    return result


def pairs(title: str, data: Mapping[str, Any]) -> Table:
    """Names and values, two columns: names are never cut."""
    shown = table(["name", "value"], data.items(), ids=["name"], title=title)
    shown.show_header = False
    return shown


def show(shown: Table, wide: bool = False) -> None:
    """Print a table no narrower than its ids need (or, `wide`, than every cell needs)."""
    from rich.console import Console

    console = Console()
    needs = Console(width=100_000).measure(shown)
    width = needs.maximum if wide else max(console.width, needs.minimum)
    Console(width=width).print(shown, crop=False)
