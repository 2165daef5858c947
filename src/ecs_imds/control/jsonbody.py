"""JSON request bodies, parsed without stopping the event loop the data plane shares.

`json.loads` is one C call: it holds the GIL from the first byte to the last, so parsing a
fleet file in a thread stops the event loop all the same (15 MB, 20,000 instances: 0.15 s
quiet, with the collector's walks several times that). `loads` decodes a large body a piece
at a time instead — each member of the top-level object, and each element of the arrays
among them (the instances), by a call of its own — so the loop runs between pieces; with the
collector paused (`ecs_imds.collector`). The result, and the errors, are `json.loads`'s.
"""

from __future__ import annotations

import asyncio
import json
import re
from json.decoder import JSONDecodeError
from typing import Any

from ecs_imds.collector import paused

# Bodies larger than this are parsed on a thread, in pieces.
PARSE_ON_LOOP = 64 * 1024
# ... and larger than this (a fleet file), their document is frozen (ecs_imds.collector).
FREEZE_ABOVE = 1024 * 1024

_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


async def parse(body: bytes) -> Any:
    """The body's JSON document; ValueError (or UnicodeDecodeError) when it is not one."""
    if len(body) <= PARSE_ON_LOOP:
        return json.loads(body)
    return await asyncio.to_thread(_parse_paused, body)


def _parse_paused(body: bytes) -> Any:
    with paused(freeze=len(body) > FREEZE_ABOVE):
        return loads(body.decode(json.detect_encoding(body)))


def loads(text: str) -> Any:
    """`json.loads(text)`, a piece at a time (see the module's docstring)."""
    i = _skip(text, 0)
    if not text.startswith("{", i):
        return json.loads(text)
    doc: dict[str, Any] = {}
    i = _skip(text, i + 1)
    if text.startswith("}", i):
        return _end(text, i + 1, doc)
    while True:
        if not text.startswith('"', i):
            raise JSONDecodeError("Expecting property name enclosed in double quotes", text, i)
        key, i = _DECODER.raw_decode(text, i)  # a string: it starts with a quote
        i = _skip(text, i)
        if not text.startswith(":", i):
            raise JSONDecodeError("Expecting ':' delimiter", text, i)
        i = _skip(text, i + 1)
        value, i = _array(text, i) if text.startswith("[", i) else _DECODER.raw_decode(text, i)
        doc[key] = value
        i = _skip(text, i)
        if text.startswith("}", i):
            return _end(text, i + 1, doc)
        if not text.startswith(",", i):
            raise JSONDecodeError("Expecting ',' delimiter", text, i)
        i = _skip(text, i + 1)


def _array(text: str, i: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    i = _skip(text, i + 1)
    if text.startswith("]", i):
        return items, i + 1
    while True:
        item, i = _DECODER.raw_decode(text, i)
        items.append(item)
        i = _skip(text, i)
        if text.startswith("]", i):
            return items, i + 1
        if not text.startswith(",", i):
            raise JSONDecodeError("Expecting ',' delimiter", text, i)
        i = _skip(text, i + 1)


def _skip(text: str, i: int) -> int:
    match = _SPACE.match(text, i)
    assert match is not None  # `*`: it always matches
    return match.end()


def _end(text: str, i: int, doc: dict[str, Any]) -> dict[str, Any]:
    if _skip(text, i) != len(text):
        raise JSONDecodeError("Extra data", text, i)
    return doc
