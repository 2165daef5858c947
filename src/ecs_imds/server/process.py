"""Assembling a running server: store → secrets → snapshot feed → data plane listeners, and
the control plane (REST API) on its own listener in the same process and event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import uvicorn
import uvloop
from fastapi import FastAPI

from ecs_imds.config import ApiSettings, Config, parse_bind
from ecs_imds.control import auth, console
from ecs_imds.control.app import create_app
from ecs_imds.control.audit import Audit, json_logger
from ecs_imds.control.auth import SECRET_NAME, Authority, new_secret
from ecs_imds.control.context import ControlContext
from ecs_imds.control.routes import ROUTERS
from ecs_imds.dataplane.fulfil import Fulfiller
from ecs_imds.dataplane.plane import DataPlane, bind_socket
from ecs_imds.issuers import open_issuer
from ecs_imds.metrics import Metrics, MetricsBoard
from ecs_imds.protocol.credentials import Issuer
from ecs_imds.protocol.identity import IdentitySigner
from ecs_imds.protocol.snapshot import Snapshot
from ecs_imds.server.workers import run_workers
from ecs_imds.store import Store, keys, open_store
from ecs_imds.store.feed import ChangeFeed, SnapshotBuilder

log = logging.getLogger("ecs_imds")


@dataclass
class Service:
    """Everything one server process runs; `run` serves until SIGINT/SIGTERM."""

    config: Config
    store: Store
    issuer: Issuer | None
    signer: IdentitySigner
    authority: Authority
    board: MetricsBoard | None = None  # with several workers: where each publishes metrics
    worker: int = 0
    plane: DataPlane | None = field(default=None, init=False)
    _identity: bytes = field(default=b"", init=False)
    _credential_secret: bytes = field(default=b"", init=False)

    @classmethod
    def open(cls, config: Config) -> Service:
        """Open the store and everything secret; a bad setting fails here, before serving."""
        store = open_store(config.store, config.data_dir, config.log_retention)
        keys.ensure_token_keys(store)
        identity = keys.identity_blob(store)
        authority = Authority(store.secret(SECRET_NAME, new_secret))
        auth.refresh(store, authority)
        service = cls(config, store, open_issuer(store, config.credentials),
                      keys.identity_signer(store, identity), authority)
        service._identity = identity
        service._credential_secret = keys.credential_secret(store)
        return service

    def admin_token(self) -> Path:
        """Keep the admin token file holding a valid token (written on first start, again
        when the API secret was rotated or the token nears its expiry); its path."""
        path = self.config.admin_token_path
        if auth.ensure_admin_token(self.store, self.authority, path,
                                   self.config.api.token_max_lifetime, int(time.time())):
            log.info("admin token for the control plane written to %s", path)
        return path

    def reload_secrets(self) -> None:
        """Before each snapshot of a change to the fleet's keys (and right after this
        server rotated one): take a rotated identity key, credential secret or API secret,
        and revoked API tokens. Runs off the event loop."""
        blob = keys.identity_blob(self.store)
        if blob != self._identity:
            self.signer = keys.identity_signer(self.store, blob)
            self._identity = blob
            if self.plane is not None:
                self.plane.fulfiller.signer = self.signer
        secret = keys.credential_secret(self.store)
        if secret != self._credential_secret and self.config.credentials.issuer == "builtin":
            self.issuer = open_issuer(self.store, self.config.credentials)
            self._credential_secret = secret
            if self.plane is not None:  # the fulfiller lives on the event loop
                fulfiller = self.plane.fulfiller
                fulfiller.loop.call_soon_threadsafe(fulfiller.use_issuer, self.issuer)
            log.warning("credential secret rotated: new RAM credentials served")
        if auth.refresh(self.store, self.authority) and self.config.api.enabled:
            log.warning("API secret rotated: every API token issued before is refused")
            self.admin_token()

    def metrics(self) -> Metrics:
        return Metrics(lambda: self.plane.snapshot if self.plane else None,
                       lambda: [self.plane.fulfiller, self.plane.stats] if self.plane else [],
                       self.board, self.worker)

    def control_app(self, metrics: Metrics) -> FastAPI:
        ctx = ControlContext(
            store=self.store, authority=self.authority,
            snapshot=lambda: self.plane.snapshot if self.plane else None,
            metrics=metrics,
            audit=Audit(json_logger("ecs_imds.audit", self.config.audit_path),
                        self.config.audit_path),
            issuer=lambda: self.issuer, settings=self.config.api,
            reload_secrets=self.reload_secrets, admin_token=self.admin_token)
        app = create_app(ctx, (*ROUTERS, *console.ROUTERS))
        app.state.public_prefixes.append(console.PREFIX)  # the console's page: no data
        return app

    async def _start_api(self, api: ApiSettings, metrics: Metrics
                         ) -> tuple[uvicorn.Server, socket.socket]:
        if api.unix:
            path = Path(api.unix)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(path))
            os.chmod(path, 0o600)
        else:
            assert api.bind is not None
            host, port = parse_bind(api.bind, "api.bind")
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
        server = uvicorn.Server(uvicorn.Config(self.control_app(metrics), log_config=None,
                                               access_log=False, lifespan="off"))
        server.config.load()
        server.lifespan = server.config.lifespan_class(server.config)
        await server.startup(sockets=[sock])
        log.info("control plane listening on %s", api.unix or api.bind)
        return server, sock

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """Bind every listener (a port in use fails here), start the control plane (its
        /readyz says "starting"), build the first snapshot, and only then listen: until a
        server can answer, instance connections are refused at once, not left waiting."""
        loop = asyncio.get_running_loop()
        listeners = self.config.listeners
        sockets = [bind_socket(lst, reuse_port=self.config.workers > 1) for lst in listeners]
        metrics = self.metrics()
        # The API first: /readyz says "starting" while the first snapshot is built.
        api = await self._start_api(self.config.api, metrics) if self.config.api.enabled else None
        # The change feed reads from a hot standby when there is one; writes go to the store.
        reads = self.store if self.config.store_read is None else await loop.run_in_executor(
            None, partial(open_store, self.config.store_read, self.config.data_dir,
                          replica=True))
        builder = SnapshotBuilder(reads, before_build=self.reload_secrets,
                                  scope=self.config.scope)
        first = await loop.run_in_executor(None, builder.build)
        fulfiller = Fulfiller(self.issuer, self.signer, loop)
        plane = DataPlane(first, self.config.limits, fulfiller,
                          access_log=self.config.access_log is not None)
        if self.config.access_log is not None:
            json_logger("ecs_imds.access", self.config.access_log)

        def publish(snap: Snapshot) -> None:
            loop.call_soon_threadsafe(plane.install, snap)

        feed = ChangeFeed(builder, first, publish, self.config.poll_interval)
        feed.start()
        await plane.start(list(zip(listeners, sockets, strict=True)))
        self.plane = plane
        chores = [asyncio.create_task(self._publish(metrics))] if self.board else []
        if self.config.api.enabled:
            chores.append(asyncio.create_task(self._keep_admin_token()))
        stop = stop or asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for chore in chores:
                chore.cancel()
            if api is not None:
                server, sock = api
                server.should_exit = True
                await server.shutdown(sockets=[sock])
            feed.stop()
            if reads is not self.store:
                reads.close()
            await plane.stop()
            self.store.close()

    @staticmethod
    async def _publish(metrics: Metrics, every: float = 1.0) -> None:
        """Each second, this worker's metrics onto the board the first worker reads."""
        while True:
            metrics.publish()
            await asyncio.sleep(every)

    async def _keep_admin_token(self, every: float = 3600.0) -> None:
        """Each hour, renew the admin token file if it nears its expiry."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every)
            try:
                await loop.run_in_executor(None, self.admin_token)
            except Exception as exc:  # the store is away: the next hour will do
                log.warning("could not renew the admin token file: %s", exc)

    def run(self) -> None:
        self.admin_token()
        if self.config.workers <= 1:
            uvloop.run(self.serve())
            return
        # Each worker opens the store itself: no connection may cross a fork. The board is
        # made before, so that all of them share it.
        self.store.close()
        board = MetricsBoard(self.config.workers)
        raise SystemExit(run_workers(self.config.workers,
                                     lambda index: self._serve_worker(index, board)))

    def _serve_worker(self, index: int, board: MetricsBoard) -> None:
        api = self.config.api if index == 0 else replace(self.config.api, enabled=False)
        service = Service.open(replace(self.config, api=api))
        service.board, service.worker = board, index
        uvloop.run(service.serve())
