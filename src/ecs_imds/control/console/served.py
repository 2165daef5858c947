"""What one instance is served, right now: its metadata tree crawled the way a client
crawls it, every answer decided by the protocol core from the current snapshot.

Nothing here renders metadata of its own. Each path is asked of `protocol.decide` — the one
decision the data plane makes for every request — with the instance as the caller, so the
console shows the status, content type and bytes that instance would get, in its current
mode: once after a token PUT (as cloud-init ≥ 23.1 and the SDKs do) and once with plain
GETs (403 all the way down where it is hardened). A refusal's body is the response writer's.

The verdicts that need secrets are fulfilled here without them. The token the PUT mints is
used for the crawl and never shown. A RAM credential of the builtin issuer (a pure function
of the instance, the role and the time: what the data plane serves at this moment) is
rendered by the same code with its secret and security token blanked; a credential from a
static or command issuer is not fetched (that could run the operator's STS broker for a
page view, and get a credential the data plane does not hold). The PKCS#7 signature is not
made at all.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ecs_imds.errors import CredentialError
from ecs_imds.protocol import access
from ecs_imds.protocol.catalogue import JSON, TEXT, Leaf, Rendered
from ecs_imds.protocol.credentials import BuiltinIssuer, Issuer, format_time, render
from ecs_imds.protocol.decide import (
    MintToken,
    NeedCredentials,
    NeedSignature,
    Refuse,
    Request,
    Verdict,
    decide,
)
from ecs_imds.protocol.response import REASONS
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


@dataclass(frozen=True, slots=True)
class Answer:
    """One path as the instance is served it."""

    path: str  # below /latest/, without a trailing slash ("" is /latest/ itself)
    status: int
    content_type: str
    body: bytes
    directory: bool
    listed: bool = True  # False for `meta-data/all`, which no listing names
    hidden: str = ""  # what of the body is not shown as it goes out ("" when all is)

    def to_json(self) -> dict[str, Any]:
        try:
            text, encoding = self.body.decode(), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(self.body).decode(), "base64"
        return {"path": self.path, "status": self.status, "content-type": self.content_type,
                "size": len(self.body), "body": text, "encoding": encoding,
                "directory": self.directory, "listed": self.listed, "hidden": self.hidden}


class Fulfil:
    """Turns verdicts into what the console shows; remembers the credential it saw."""

    def __init__(self, snap: Snapshot, issuer: Issuer | None, now: float) -> None:
        self.snap, self.issuer, self.now = snap, issuer, now
        self.token: str | None = None
        self.credentials: Credentials | None = None

    def __call__(self, path: str, verdict: Verdict, directory: bool = False,
                 listed: bool = True) -> Answer:
        def shown(status: int, content_type: bytes, body: bytes, hidden: str = "") -> Answer:
            return Answer(path, status, content_type.decode(), body, directory, listed, hidden)

        if isinstance(verdict, Leaf):
            return shown(200, verdict.content_type, verdict.body)
        if isinstance(verdict, Refuse):
            return shown(verdict.status, TEXT, REASONS[verdict.status].encode())
        if isinstance(verdict, MintToken):
            self.token = self.snap.key_ring.mint(verdict.instance_id, int(self.now),
                                                 verdict.ttl)
            return shown(200, TEXT, b"", "the token")
        if isinstance(verdict, NeedSignature):
            return shown(200, TEXT, b"", "the signature, made for each request")
        return self._credentials(verdict, shown)

    def _credentials(self, need: NeedCredentials, shown: Callable[..., Answer]) -> Answer:
        issuer = self.issuer
        if issuer is None:
            return shown(404, TEXT, REASONS[404].encode())
        if not isinstance(issuer, BuiltinIssuer):
            return shown(200, JSON, b"", "the credential, which the issuer hands to the data "
                                         "plane (the console does not ask for one)")
        try:
            credential = issuer.issue(need.instance_id, need.role, self.now)
        except CredentialError:
            return shown(500, TEXT, REASONS[500].encode())
        self.credentials = Credentials(need.role, credential.access_key_id,
                                       format_time(credential.expiration),
                                       format_time(credential.last_updated))
        blanked = replace(credential, access_key_secret=HIDDEN, security_token=HIDDEN)
        return shown(200, JSON, render(blanked), "AccessKeySecret and SecurityToken")


def crawl(caller: Rendered, snap: Snapshot, now: float, issuer: Issuer | None,
          with_token: bool) -> tuple[list[Answer], Credentials | None]:
    """Every path the instance can reach by following listings from /latest/, depth first,
    plus `meta-data/all`; with `with_token`, after a token PUT whose answer comes first
    (path `api/token`)."""
    fulfil = Fulfil(snap, issuer, now)
    answers: list[Answer] = []
    if with_token:
        put = Request.of("PUT", "/latest/api/token", "",
                         {access.TTL_HEADER: str(TOKEN_TTL)})
        answers.append(fulfil("api/token", decide(put, caller, snap, now), listed=False))
    headers = {} if fulfil.token is None else {access.TOKEN_HEADER: fulfil.token}

    def ask(path: str, directory: bool, listed: bool = True) -> Answer:
        req = Request.of("GET", f"/latest/{path}", "", headers)
        return fulfil(path, decide(req, caller, snap, now), directory, listed)

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
    return answers, fulfil.credentials
