"""What every route of the control plane works with, handed to routes as a dependency.

Routes never call the store on the event loop: the loop is the data plane's too, and a slow
or hung database must not stall instances. `ControlContext.run` hands a store call to a
small pool of threads of the control plane's own, so that routes which must not wait on the
store (health, readiness, metrics) never queue behind stuck calls either: they read only
memory and need no thread at all.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

from fastapi import Depends, Request

from ecs_imds.config import ApiSettings
from ecs_imds.control import auth
from ecs_imds.control.audit import Audit
from ecs_imds.control.auth import Authority, Principal
from ecs_imds.metrics import Metrics
from ecs_imds.protocol.credentials import Issuer
from ecs_imds.protocol.snapshot import Snapshot
from ecs_imds.store import Store

P = ParamSpec("P")
T = TypeVar("T")

# Threads for store calls: as many as the PostgreSQL store pools connections.
STORE_THREADS = 8


@dataclass
class ControlContext:
    """The store, the token authority, the served snapshot (None until the first is built),
    the audit log, the metrics, the RAM credential issuer (None: none to verify), the API's
    settings; and two duties of the server around it: `reload_secrets` takes rotated
    secrets into the data plane at once (every other server of the fleet takes them when
    its change feed hears of them), `admin_token` keeps this host's admin token file valid
    (returning its path; None where no file is kept)."""

    store: Store
    authority: Authority
    snapshot: Callable[[], Snapshot | None]
    metrics: Metrics
    audit: Audit
    issuer: Callable[[], Issuer | None] = lambda: None
    settings: ApiSettings = field(default_factory=ApiSettings)
    reload_secrets: Callable[[], None] = lambda: None
    admin_token: Callable[[], Path | None] = lambda: None
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(
        STORE_THREADS, thread_name_prefix="control-store"))

    async def run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`func(*args, **kwargs)` (store work) on the control plane's store threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(func, *args, **kwargs))

    def reload(self) -> None:
        """After a rotation or revocation here: the API's secret and revoked tokens, and the
        data plane's secrets, as the store has them now (store work: call it on a thread)."""
        auth.refresh(self.store, self.authority)
        self.reload_secrets()

    async def record(self, request: Request, action: str, target: str, **details: Any) -> None:
        """An audit line for a change made by the request's principal, written on a store
        thread: a file write never runs on the event loop."""
        await self.run(self.audit.record, principal(request).name, action, target, **details)

    async def audited(self, request: Request, action: str, target: str, work: Callable[[], T],
                      **details: Any) -> T:
        """`work()` (store work) and then its audit line, both on one store thread: a
        change and its record cost the event loop one hand-off, not two."""
        who = principal(request).name

        def job() -> T:
            done = work()
            self.audit.record(who, action, target, **details)
            return done

        return await self.run(job)


async def context(request: Request) -> ControlContext:
    """The dependency: async, so that resolving it never needs a thread."""
    ctx: ControlContext = request.app.state.control
    return ctx


def principal(request: Request) -> Principal:
    """Who sent the request (set by the authentication middleware)."""
    who: Principal = request.state.principal
    return who


Ctx = Annotated[ControlContext, Depends(context)]
