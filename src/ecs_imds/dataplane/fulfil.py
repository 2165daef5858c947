"""Fulfilling the verdicts that need secrets: RAM credentials and identity signatures.

`decide` says what a request needs (`NeedCredentials`, `NeedSignature`); this answers it
without ever blocking the event loop:

- The builtin issuer is pure arithmetic on a secret: its credentials are made on the spot
  and kept until the next one is due.
- Any other issuer (static files, an operator's command) may be slow or fail, so it runs
  on a thread. Each (instance, role) is cached; from `refresh_before` seconds before its
  Expiration a refresh runs in the background while the cached credential is still served,
  until it expires. Only a request with no valid credential at all waits — alone: one fetch
  per (instance, role) at a time, every other request answered meanwhile. A failure is
  retried with exponential backoff (with jitter), and requests are answered 500 at once
  while it lasts. A wait is bounded (`wait_limit`): then 500, and the fetch goes on.
- A signature is an RSA operation of a millisecond or two: signatures are cached by
  content (the signer's LRU), and a new one is made on a thread; an instance may have a few
  in flight at once, more get 429.

Answers are verdicts too: a `Leaf` (200, the body) or a `Refuse`. Failures are logged with
the reason, never with a credential or a signature.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ecs_imds.dataplane.warnings import Warnings
from ecs_imds.errors import CredentialError
from ecs_imds.metrics import counter
from ecs_imds.protocol.catalogue import JSON, TEXT, Leaf
from ecs_imds.protocol.credentials import (
    DEFAULT_REFRESH,
    BuiltinIssuer,
    Credential,
    Issuer,
    render,
)
from ecs_imds.protocol.decide import (
    NOT_FOUND,
    NeedCredentials,
    NeedSignature,
    Refuse,
    throttled,
)
from ecs_imds.protocol.identity import IdentitySigner

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger("ecs_imds.dataplane")

UNAVAILABLE = Refuse(500)
Answer = Leaf | Refuse
Pending = asyncio.Future[Answer]

BACKOFF_FIRST = 1.0  # seconds after a first failure before an issuer is asked again
BACKOFF_MAX = 300.0
SIGNATURES_IN_FLIGHT = 4  # per instance


@dataclass(slots=True)
class _Cached:
    leaf: Leaf
    refresh_at: float
    expires: float


@dataclass(slots=True)
class _Failure:
    retry_at: float
    failures: int


class Fulfiller:
    """Answers the "needs" of one data plane process. Methods run on the event loop."""

    def __init__(self, issuer: Issuer | None, signer: IdentitySigner,
                 loop: asyncio.AbstractEventLoop | None = None,
                 executor: Executor | None = None, refresh_before: float = DEFAULT_REFRESH,
                 wait_limit: float = 15.0, warnings: Warnings | None = None) -> None:
        self.issuer = issuer
        self.signer = signer
        self.refresh_before = refresh_before
        self.wait_limit = wait_limit
        self._loop = loop
        self._executor = executor or ThreadPoolExecutor(32, thread_name_prefix="ecs-imds-needs")
        self._warnings = warnings or Warnings(log)
        self._credentials: dict[tuple[str, str], _Cached] = {}
        self._fetching: dict[tuple[str, str], Pending] = {}
        self._failures: dict[tuple[str, str], _Failure] = {}
        self._signing: dict[bytes, Pending] = {}
        self._signing_by: Counter[str] = Counter()
        self.answers: Counter[tuple[str, int]] = Counter()  # (kind, status) → how many

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def use_issuer(self, issuer: Issuer | None) -> None:
        """Another issuer from now on (the builtin one with a rotated secret): nothing the
        old one issued is served again."""
        self.issuer = issuer
        self._credentials.clear()
        self._failures.clear()

    def answer(self, need: NeedCredentials | NeedSignature, now: float) -> Answer | Pending:
        """The answer to a need, or a future of it."""
        if isinstance(need, NeedCredentials):
            return self.credentials(need, now)
        return self.signature(need)

    # -- RAM credentials -----------------------------------------------------------------
    def credentials(self, need: NeedCredentials, now: float) -> Answer | Pending:
        issuer = self.issuer
        if issuer is None:
            return self._count("credentials", NOT_FOUND)
        key = (need.instance_id, need.role)
        cached = self._credentials.get(key)
        if isinstance(issuer, BuiltinIssuer):
            if cached is None or now >= cached.refresh_at:
                cached = self._store(key, issuer.issue(key[0], key[1], now), issuer.refresh)
            return self._count("credentials", cached.leaf)
        if cached is not None and now < cached.expires:
            if now >= cached.refresh_at and key not in self._fetching \
                    and not self._backing_off(key, now):
                self._fetch(key, now)  # in the background: the cached one is still good
            return self._count("credentials", cached.leaf)
        pending = self._fetching.get(key)
        if pending is None:
            if self._backing_off(key, now):
                return self._count("credentials", UNAVAILABLE)
            pending = self._fetch(key, now)
        return self._bounded(pending, "credentials")

    def _store(self, key: tuple[str, str], credential: Credential, refresh: float) -> _Cached:
        cached = _Cached(Leaf(render(credential), JSON),
                         credential.expiration - refresh, credential.expiration)
        self._credentials[key] = cached
        return cached

    def _backing_off(self, key: tuple[str, str], now: float) -> bool:
        failure = self._failures.get(key)
        return failure is not None and now < failure.retry_at

    def _fetch(self, key: tuple[str, str], now: float) -> Pending:
        issuer = self.issuer
        assert issuer is not None
        pending: Pending = self.loop.create_future()
        self._fetching[key] = pending
        work = self.loop.run_in_executor(self._executor, issuer.issue, key[0], key[1], now)
        work.add_done_callback(lambda done: self._fetched(key, now, done, pending))
        return pending

    def _fetched(self, key: tuple[str, str], now: float, done: asyncio.Future[Credential],
                 pending: Pending) -> None:
        """`now`: when the fetch began (the clock requests are decided by)."""
        self._fetching.pop(key, None)
        answer: Answer
        try:
            credential = done.result()
            if credential.expiration <= now:
                raise CredentialError("the issuer gave a credential that has already expired")
        except CredentialError as exc:
            failure = self._failures.get(key)
            count = failure.failures + 1 if failure else 1
            wait = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (count - 1)) * random.uniform(0.8, 1.2)
            self._failures[key] = _Failure(now + wait, count)
            self._warnings.warn("credentials", "no RAM credentials for instance %s role %s "
                                "(failure %d, next try in %.0f s): %s",
                                key[0], key[1], count, wait, exc)
            answer = UNAVAILABLE
        except Exception:  # a bug in an issuer must not take the data plane down
            log.exception("RAM credential issuer failed")
            self._failures[key] = _Failure(now + BACKOFF_FIRST, 1)
            answer = UNAVAILABLE
        else:
            self._failures.pop(key, None)
            cached = self._credentials.get(key)
            if cached is None or credential.expiration >= cached.expires:
                cached = self._store(key, credential, self.refresh_before)
            answer = cached.leaf
            for gone in [k for k, c in self._credentials.items() if c.expires <= now]:
                del self._credentials[gone]
        if not pending.done():
            pending.set_result(answer)

    # -- identity signatures ---------------------------------------------------------------
    def signature(self, need: NeedSignature) -> Answer | Pending:
        signer = self.signer
        body = signer.cached(need.content)
        if body is not None:
            return self._count("pkcs7", Leaf(body, TEXT))
        pending = self._signing.get(need.content)
        if pending is None:
            if self._signing_by[need.instance_id] >= SIGNATURES_IN_FLIGHT:
                return self._count("pkcs7", throttled(1))
            pending = self.loop.create_future()
            self._signing[need.content] = pending
            self._signing_by[need.instance_id] += 1
            work = self.loop.run_in_executor(self._executor, signer.sign, need.content)
            work.add_done_callback(lambda done: self._signed(need, done, pending))
        return self._bounded(pending, "pkcs7")

    def _signed(self, need: NeedSignature, done: asyncio.Future[bytes],
                pending: Pending) -> None:
        self._signing.pop(need.content, None)
        self._signing_by[need.instance_id] -= 1
        if self._signing_by[need.instance_id] <= 0:
            del self._signing_by[need.instance_id]
        try:
            answer: Answer = Leaf(done.result(), TEXT)
        except Exception:
            log.exception("identity signature failed")
            answer = UNAVAILABLE
        if not pending.done():
            pending.set_result(answer)

    # -- common ----------------------------------------------------------------------------
    def _bounded(self, pending: Pending, kind: str) -> Pending:
        """A future of its own for one waiting request: answered when the work is done, or
        500 after `wait_limit` (the work itself goes on, for the next request)."""
        mine: Pending = self.loop.create_future()

        def settle(answer: Answer) -> None:
            if not mine.done():
                mine.set_result(self._count(kind, answer))

        pending.add_done_callback(lambda done: settle(done.result()))
        timer = self.loop.call_later(self.wait_limit, settle, UNAVAILABLE)
        mine.add_done_callback(lambda _: timer.cancel())
        return mine

    def _count(self, kind: str, answer: Answer) -> Answer:
        self.answers[(kind, 200 if isinstance(answer, Leaf) else answer.status)] += 1
        return answer

    def metrics(self) -> Iterator[Metric]:
        yield counter("ecs_imds_secret_answers",
                      "RAM credentials and identity signatures served, by status",
                      ["kind", "code"], {(k, str(c)): n for (k, c), n in self.answers.items()})

    def close(self, wait: bool = False) -> None:
        if isinstance(self._executor, ThreadPoolExecutor):
            self._executor.shutdown(wait=wait, cancel_futures=True)
