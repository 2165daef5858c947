"""The recent end of the audit log, for the console's Audit page.

The log is this server's own JSON-lines file (control.audit); only its last `TAIL_BYTES`
are read, so a log that has grown for months costs the page no more than a fresh one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TAIL_BYTES = 1 << 20


def recent(path: Path | None, instance_id: str | None, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` records, newest first; only those about `instance_id` if given."""
    if path is None:
        return []
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - TAIL_BYTES))
            tail = f.read()
    except FileNotFoundError:
        return []
    lines = tail.split(b"\n")
    if len(tail) == TAIL_BYTES:
        lines = lines[1:]  # the first one is probably cut
    found: list[dict[str, Any]] = []
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if instance_id and record.get("target") != instance_id:
            continue
        found.append(record)
        if len(found) >= limit:
            break
    return found
