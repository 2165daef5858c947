"""What one instance is served, right now: its metadata tree crawled the way a client
crawls it, every answer decided by the protocol core from the current snapshot.

Nothing here renders metadata of its own. Each path is asked of `decide.resolve` — the
decision the data plane makes for every request — with the instance as the caller, so the
console shows the bytes, status and content type that instance would get, in its current
mode: once after a token PUT (as cloud-init ≥ 23.1 and the SDKs do) and once with plain
GETs (403 all the way down where it is hardened).

The answers computed per request from secrets go through `Redacting` instead of the data
plane's source: the RAM credential is issued by the same issuer and rendered by the same
code, with its secret and security token blanked; the PKCS#7 signature is not made at all.
Neither secret ever reaches a page.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from typing import Any

from ecs_imds.errors import CredentialError
from ecs_imds.protocol import access
from ecs_imds.protocol.catalogue import JSON, TEXT, Dynamic, Rendered
from ecs_imds.protocol.credentials import Issuer, format_time, render
from ecs_imds.protocol.decide import REASONS, Request, resolve
from ecs_imds.protocol.snapshot import Snapshot

HIDDEN = "(hidden by the console)"
TOKEN_TTL = 60  # seconds the console's own token lives; it is never shown
ALL = "meta-data/all"  # served, though no listing names it (SPEC §2)


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the console may show of a RAM credential."""

    role: str
    access_key_id: str
    expiration: str
    last_updated: str


class Redacting:
    """The snapshot's `DynamicSource` for the console: credentials without their secrets,
    no signature. Remembers the credentials it was asked for (role, key id, expiry)."""

    def __init__(self, issuer: Issuer | None) -> None:
        self.issuer = issuer
        self.credentials: Credentials | None = None

    def answer(self, entry: Dynamic, caller: Rendered, query: str,
               now: float) -> tuple[int, bytes, bytes]:
        if entry.kind == "pkcs7":
            return 200, b"", TEXT
        if entry.kind != "credentials" or self.issuer is None or entry.arg != caller.role:
            return 404, REASONS[404].encode(), TEXT
        try:
            credential = self.issuer.issue(caller.instance_id, entry.arg, now)
        except CredentialError:
            return 500, REASONS[500].encode(), TEXT
        self.credentials = Credentials(entry.arg, credential.access_key_id,
                                       format_time(credential.expiration),
                                       format_time(credential.last_updated))
        blanked = replace(credential, access_key_secret=HIDDEN, security_token=HIDDEN)
        return 200, render(blanked), JSON


@dataclass(frozen=True, slots=True)
class Answer:
    """One path as the instance is served it."""

    path: str  # below /latest/, without a trailing slash ("" is /latest/ itself)
    status: int
    content_type: str
    body: bytes
    directory: bool
    listed: bool = True  # False for `meta-data/all`, which no listing names
    hidden: str = ""  # why the body is not shown as it goes out ("" when it is)

    def to_json(self) -> dict[str, Any]:
        try:
            text, encoding = self.body.decode(), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(self.body).decode(), "base64"
        return {"path": self.path, "status": self.status, "content-type": self.content_type,
                "size": len(self.body), "body": text, "encoding": encoding,
                "directory": self.directory, "listed": self.listed, "hidden": self.hidden}


def crawl(caller: Rendered, snap: Snapshot, now: float, issuer: Issuer | None,
          with_token: bool) -> tuple[list[Answer], Credentials | None]:
    """Every path the instance can reach by following listings from /latest/, depth first,
    plus `meta-data/all`; with `with_token`, after a token PUT whose answer comes first
    (path `api/token`, its body hidden)."""
    source = Redacting(issuer)
    snap = replace(snap, dynamic=source)
    headers: dict[str, str] = {}
    answers: list[Answer] = []
    if with_token:
        put = resolve(Request("PUT", "/latest/api/token", "",
                              {access.TTL_HEADER: str(TOKEN_TTL)}), caller, snap, now)
        if put.status == 200:
            headers[access.TOKEN_HEADER] = put.body.decode()
        answers.append(Answer("api/token", put.status, put.content_type.decode(), b"",
                              directory=False, listed=False,
                              hidden="the token" if put.status == 200 else ""))

    def ask(path: str, directory: bool, listed: bool = True) -> Answer:
        resp = resolve(Request("GET", f"/latest/{path}", "", headers), caller, snap, now)
        hidden = ""
        entry = caller.entries.get(path)
        if isinstance(entry, Dynamic) and resp.status == 200:
            hidden = ("AccessKeySecret and SecurityToken" if entry.kind == "credentials"
                      else "the signature, made for each request")
        return Answer(path, resp.status, resp.content_type.decode(), resp.body,
                      directory, listed, hidden)

    pending = [("", True)]
    while pending:
        path, directory = pending.pop()
        answer = ask(path, directory)
        answers.append(answer)
        if path == "meta-data" and answer.status == 200:
            answers.append(ask(ALL, False, listed=False))
        if directory and answer.status == 200:
            prefix = f"{path}/" if path else ""
            names = answer.body.decode().split("\n") if answer.body else []
            pending.extend((prefix + name.rstrip("/"), name.endswith("/"))
                           for name in reversed(names))
    return answers, source.credentials
