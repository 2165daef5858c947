"""The one response writer: an answer's bytes as they go out on the wire (HTTP/1.1).

    HTTP/1.1 <status> <reason>
    Content-Type: <type>
    Content-Length: <length>
    Date: <now>
    <extra headers, e.g. Retry-After, Allow, the token TTL>
    [Connection: close]

Everything but the Date and the body is made once and kept: the head of a 200 of a given
type and length, the extra headers of a refusal. The data plane answers most requests with
bytes it already has, joined in one call. Pure: the caller gives the time.
"""

from __future__ import annotations

from email.utils import formatdate

from ecs_imds.protocol.catalogue import TEXT, Leaf

REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
    414: "URI Too Long", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 503: "Service Unavailable",
}
Headers = tuple[tuple[bytes, bytes], ...]

_KEEP = b"\r\n"
_CLOSE = b"Connection: close\r\n\r\n"
_HEADS_KEPT = 4096  # heads of distinct (status, type, length) kept; past it, start over


class _Heads(dict[tuple[int, bytes, int], bytes]):
    def __missing__(self, key: tuple[int, bytes, int]) -> bytes:
        if len(self) >= _HEADS_KEPT:
            self.clear()
        status, content_type, length = key
        head = self[key] = (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                            % (status, REASONS[status].encode(), content_type, length))
        return head


class _Extra(dict[Headers, bytes]):
    def __missing__(self, headers: Headers) -> bytes:
        if len(self) >= _HEADS_KEPT:
            self.clear()
        extra = self[headers] = b"".join(b"%s: %s\r\n" % pair for pair in headers)
        return extra


_heads = _Heads()
_extra = _Extra()
_date_second = -1
_date = b""


def date_line(now: float) -> bytes:
    """The Date header line of the current second, made once per second."""
    global _date_second, _date
    second = int(now)
    if second != _date_second:
        _date = b"Date: %s\r\n" % formatdate(second, usegmt=True).encode()
        _date_second = second
    return _date


def write(status: int, content_type: bytes, body: bytes, now: float, keep_alive: bool = True,
          headers: Headers = (), head_only: bool = False) -> bytes:
    """The bytes of one answer. HEAD gets the head of what GET would get."""
    return b"".join((_heads[status, content_type, len(body)],
                     _date if int(now) == _date_second else date_line(now),
                     _extra[headers] if headers else b"",
                     _KEEP if keep_alive else _CLOSE,
                     b"" if head_only else body))


def write_leaf(leaf: Leaf, now: float, keep_alive: bool = True, head_only: bool = False
               ) -> bytes:
    """`write` of a 200 with a static leaf, spelled out: nearly every answer is one."""
    body = leaf.body
    return b"".join((_heads[200, leaf.content_type, len(body)],
                     _date if int(now) == _date_second else date_line(now),
                     _KEEP if keep_alive else _CLOSE,
                     b"" if head_only else body))


def write_error(status: int, now: float, keep_alive: bool = True, headers: Headers = (),
                head_only: bool = False) -> bytes:
    """An error says no more than its status: never a token, a path or a reason of ours."""
    return write(status, TEXT, REASONS[status].encode(), now, keep_alive, headers, head_only)
