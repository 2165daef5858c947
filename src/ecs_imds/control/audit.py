"""The audit log: one JSON line per change an operator made — who, what, when; never a
secret (user data is logged by size, tokens and keys not at all)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any


class JsonLines(logging.Formatter):
    """Log records whose message is a dict, as one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        body = record.msg if isinstance(record.msg, dict) else {"message": record.getMessage()}
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str)


def json_logger(name: str, path: Path | None) -> logging.Logger:
    """A logger writing JSON lines to `path` (or standard error when None)."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    handler: logging.Handler
    if path is None:
        handler = logging.StreamHandler()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
    handler.setFormatter(JsonLines())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


class Audit:
    """Where changes are recorded; `path` is the file the logger writes (the console reads
    it back), None when it writes elsewhere."""

    def __init__(self, logger: logging.Logger, path: Path | None = None) -> None:
        self.logger = logger
        self.path = path

    def record(self, actor: str, action: str, target: str, **details: Any) -> None:
        self.logger.info({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          "actor": actor, "action": action, "target": target, **details})
