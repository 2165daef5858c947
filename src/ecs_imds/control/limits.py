"""Bounds on what a request may bring: a body of at most `limit` bytes (413), and JSON
nested at most `MAX_DEPTH` levels (400).

Both are checked once, here, before any route reads the body, so no route and no parser
can be made to take unbounded memory, or to recurse until Python gives up (a 500 with a
traceback). A body is read as it arrives and refused as soon as it passes the limit; a
Content-Length above it is refused before a byte of the body is read.
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Fleet files nest six levels (fleet, instances, instance, interfaces, interface, addresses).
MAX_DEPTH = 32

# A body is scanned this many bytes at a time (a little more, to end past an escape), the
# GIL let go between slices (each holds it about a millisecond): the data plane's event
# loop runs meanwhile.
SCAN_SLICE = 256 * 1024
_NOT_MARKS = bytes(b for b in range(256) if b not in b'"[]{}')


def brackets_of(body: bytes, size: int = SCAN_SLICE) -> bytes:
    """The brackets of a JSON text outside its strings, in order (a string left open runs
    to the end of the text), found a slice at a time with bytes methods, not a regex (a
    78 MB fleet file: 0.3 s, not 2 s). In a slice, escapes go first (a backslash and the
    byte after it: `\\\\` pairs, then `\\"`, each in one left-to-right pass; a slice
    never ends on a backslash, so never inside an escape), then every byte but quotes and
    brackets, then each two adjacent quotes (a string without brackets, or the seam
    between two strings with none between them); what is left is split at its quotes,
    every other piece outside a string. JSON has backslashes only in strings; in a text
    that is not JSON they may pair up otherwise than a parser would, and one or the other
    refuses the text."""
    parts: list[bytes] = []
    inside = 0  # whether the slice begins inside a string
    pos, end = 0, len(body)
    while pos < end:
        cut = min(pos + size, end)
        while cut < end and body[cut - 1] == 0x5C:  # a backslash: the escape goes on
            cut += 1
        marks = (body[pos:cut].replace(b"\\\\", b"").replace(b'\\"', b"")
                 .translate(None, _NOT_MARKS).replace(b'""', b""))
        pieces = marks.split(b'"')
        parts += pieces[inside::2]
        inside ^= (len(pieces) - 1) & 1
        pos = cut
    return b"".join(parts)


def nested_deeper(body: bytes, depth: int = MAX_DEPTH) -> bool:
    """Whether a JSON text nests arrays and objects deeper than `depth` (or is not JSON at
    all, when its brackets do not pair up). Linear: strings are cut out, every other byte
    but the brackets dropped, and the innermost pairs taken away, a level a pass."""
    brackets = brackets_of(body)
    for _ in range(depth):
        if not brackets:
            return False
        # Pairs become a mark first, so that `{[]}` loses one level per pass, not two.
        brackets = brackets.replace(b"[]", b".").replace(b"{}", b".").replace(b".", b"")
    return bool(brackets)


# Bodies longer than this are scanned on a thread, a slice at a time: a fleet file of
# 100,000 instances (78 MB) takes about 0.3 s.
SCAN_ON_LOOP = 64 * 1024


async def _nested_deeper(body: bytes, depth: int) -> bool:
    if len(body) <= SCAN_ON_LOOP:
        return nested_deeper(body, depth)
    return await asyncio.to_thread(nested_deeper, body, depth)


class _TooLarge(Exception):
    pass


class BodyLimits:
    """ASGI middleware: the body of every request is bounded in size and in nesting."""

    def __init__(self, app: ASGIApp, limit: int, depth: int = MAX_DEPTH) -> None:
        self.app, self.limit, self.depth = app, limit, depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            await _refuse(send, 413, "PayloadTooLarge",
                          f"a request body may hold at most {self.limit} bytes "
                          "(api.body-limit)")
            return
        try:
            body, more = await self._read(receive)
        except _TooLarge:
            await _refuse(send, 413, "PayloadTooLarge",
                          f"a request body may hold at most {self.limit} bytes "
                          "(api.body-limit)")
            return
        if body and await _nested_deeper(body, self.depth):
            await _refuse(send, 400, "InvalidParameter",
                          f"the body nests deeper than {self.depth} levels, or is not JSON")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await more()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> tuple[bytes, Receive]:
        """The whole body (at most `limit` bytes), and what to receive after it."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return b"".join(chunks), _after(message)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), receive


def _after(message: Message) -> Receive:
    async def again() -> Message:
        return message

    return again


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"Code": code, "Message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
