"""Assembling a running server: store → secrets → snapshot feed → data plane listeners, and
the control plane (REST API) on its own listener in the same process and event loop.

Start-up fails early and in one line: a setting that cannot be served (a port in use, an
unwritable data dir, a store that cannot be opened) raises `ValidationError` naming it.
SIGINT/SIGTERM stop the server; SIGHUP re-reads the config and applies what is safe to
change while serving (log level and format, listener aliases), logging what it did not.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import uvloop

from ecs_imds import logs
from ecs_imds.config import ApiSettings, Config, Listener, differences, join_bind, parse_bind
from ecs_imds.control import auth
from ecs_imds.control.audit import Audit, json_logger
from ecs_imds.control.auth import SECRET_NAME, Authority, new_secret
from ecs_imds.dataplane.fulfil import Fulfiller
from ecs_imds.dataplane.plane import DataPlane, bind_socket
from ecs_imds.errors import ValidationError
from ecs_imds.issuers import open_issuer
from ecs_imds.metrics import Metrics, MetricsBoard
from ecs_imds.protocol.credentials import Issuer
from ecs_imds.protocol.identity import IdentitySigner
from ecs_imds.protocol.snapshot import Snapshot
from ecs_imds.server import files
from ecs_imds.server.workers import run_workers
from ecs_imds.store import Store, keys, open_store
from ecs_imds.store.feed import ChangeFeed, SnapshotBuilder

if TYPE_CHECKING:  # the control plane is imported only by a server that runs it
    import uvicorn
    from fastapi import FastAPI

log = logging.getLogger("ecs_imds")
T = TypeVar("T")
# Seconds a thread may hold the GIL while the event loop waits for it (Service.run).
SWITCH_INTERVAL = 0.001


@dataclass(frozen=True, slots=True)
class Ready:
    """What a started server serves: its listeners with the ports they got (a port 0 in the
    config is any free port) and the control plane's URL (None: no API)."""

    listeners: tuple[Listener, ...]
    api: str | None


@dataclass
class Service:
    """Everything one server process runs; `run` serves until SIGINT/SIGTERM.

    `on_ready` is called once every listener accepts and the first snapshot serves;
    `reload` reads the config anew (SIGHUP)."""

    config: Config
    store: Store
    issuer: Issuer | None
    signer: IdentitySigner
    authority: Authority
    board: MetricsBoard | None = None  # with several workers: where each publishes metrics
    worker: int = 0
    plane: DataPlane | None = field(default=None, init=False)
    on_ready: Callable[[Ready], None] | None = field(default=None, init=False)
    reload: Callable[[], Config] | None = field(default=None, init=False)
    _identity: bytes = field(default=b"", init=False)
    _credential_secret: bytes = field(default=b"", init=False)
    # The secrets' versions when last read (store.secret_versions): read again when moved.
    _secrets: dict[str, int] = field(default_factory=dict, init=False)

    @classmethod
    def open(cls, config: Config) -> Service:
        """Open the store and everything secret; a bad setting fails here, before serving."""
        files.prepare(config)
        try:
            store = open_store(config.store, config.data_dir, config.log_retention,
                               settings=config.store_settings)
        except OSError as exc:  # StoreUnavailable included: the store names what failed
            raise ValidationError("store", f"cannot be opened ({exc}); check the store URL "
                                           "and that its directory is writable") from None
        keys.ensure_token_keys(store)
        versions = store.secret_versions()  # before the values: a change after is seen
        identity = keys.identity_blob(store)
        authority = Authority(store.secret(SECRET_NAME, new_secret))
        auth.refresh(store, authority)
        service = cls(config, store, open_issuer(store, config.credentials),
                      keys.identity_signer(store, identity), authority)
        service._identity = identity
        service._credential_secret = keys.credential_secret(store)
        # One absent then was made since (version 0, made once): what was read is it.
        service._secrets = dict.fromkeys((keys.IDENTITY, keys.CREDENTIALS, SECRET_NAME), 0)
        service._secrets.update(versions)
        return service

    def admin_token(self) -> Path:
        """Keep the admin token file holding a valid token (written on first start, again
        when the API secret was rotated or the token nears its expiry); its path."""
        path = self.config.admin_token_path
        if auth.ensure_admin_token(self.store, self.authority, path,
                                   self.config.api.token_max_lifetime, int(time.time())):
            log.info("admin token for the control plane written to %s", path)
        return path

    def reload_secrets(self, everything: bool = False) -> None:
        """Before each snapshot of a change to the fleet's keys (and right after this
        server rotated one): take a rotated identity key, credential secret or API secret,
        and revoked API tokens. Only the secrets whose version moved are read again, or
        `everything` (a store whose history changed may hold other secrets at the versions
        this server knows). Runs off the event loop."""
        versions = self.store.secret_versions()
        moved = {name for name, version in versions.items()
                 if everything or self._secrets.get(name) != version}
        moved |= set(self._secrets) - set(versions)
        self._secrets = versions
        if keys.IDENTITY in moved:
            self._reload_identity()
        if keys.CREDENTIALS in moved:
            self._reload_credentials()
        if (SECRET_NAME in moved or any(n.startswith(auth.RECORDS) for n in moved)) and \
                auth.refresh(self.store, self.authority) and self.config.api.enabled:
            log.warning("API secret rotated: every API token issued before is refused")
            self.admin_token()

    def _reload_identity(self) -> None:
        blob = keys.identity_blob(self.store)
        if blob != self._identity:
            self.signer = keys.identity_signer(self.store, blob)
            self._identity = blob
            if self.plane is not None:
                self.plane.fulfiller.signer = self.signer

    def _reload_credentials(self) -> None:
        secret = keys.credential_secret(self.store)
        if secret != self._credential_secret and self.config.credentials.issuer == "builtin":
            self.issuer = open_issuer(self.store, self.config.credentials)
            self._credential_secret = secret
            if self.plane is not None:  # the fulfiller lives on the event loop
                fulfiller = self.plane.fulfiller
                fulfiller.loop.call_soon_threadsafe(fulfiller.use_issuer, self.issuer)
            log.warning("credential secret rotated: new RAM credentials served")

    def metrics(self) -> Metrics:
        return Metrics(lambda: self.plane.snapshot if self.plane else None,
                       lambda: [self.plane.fulfiller, self.plane.stats] if self.plane else [],
                       self.board, self.worker)

    def control_app(self, metrics: Metrics) -> FastAPI:
        # Imported here: a server without a control plane (api: false, as on a host that
        # only serves its instances) loads neither FastAPI nor the console (~20 MB, ~1 s).
        from ecs_imds.control import console
        from ecs_imds.control.app import create_app
        from ecs_imds.control.context import ControlContext
        from ecs_imds.control.routes import ROUTERS

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
            _bind(lambda: sock.bind(str(path)), "api.unix", str(path))
            os.chmod(path, 0o600)
        else:
            assert api.bind is not None
            host, port = parse_bind(api.bind, "api.bind")
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            _bind(lambda: sock.bind((host, port)), "api.bind", api.bind)
        sock.listen(128)
        sock.setblocking(False)
        import uvicorn

        server = uvicorn.Server(uvicorn.Config(self.control_app(metrics), log_config=None,
                                               access_log=False, lifespan="off"))
        server.config.load()
        server.lifespan = server.config.lifespan_class(server.config)
        await server.startup(sockets=[sock])
        log.info("control plane listening on %s", _api_url(sock))
        return server, sock

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """Bind every listener (a port in use fails here), start the control plane (its
        /readyz says "starting"), build the first snapshot, and only then listen: until a
        server can answer, instance connections are refused at once, not left waiting."""
        loop = asyncio.get_running_loop()
        listeners = self.config.listeners
        reuse = self.config.workers > 1
        sockets = [_bind(partial(bind_socket, lst, reuse_port=reuse), f"listeners[{i}].bind",
                         lst.bind) for i, lst in enumerate(listeners)]
        metrics = self.metrics()
        # The API first: /readyz says "starting" while the first snapshot is built.
        api = await self._start_api(self.config.api, metrics) if self.config.api.enabled else None
        # The change feed reads from a hot standby when there is one; writes go to the store.
        reads = self.store if self.config.store_read is None else await loop.run_in_executor(
            None, partial(open_store, self.config.store_read, self.config.data_dir,
                          replica=True, settings=self.config.store_settings))
        builder = SnapshotBuilder(reads, before_build=self.reload_secrets,
                                  scope=self.config.scope)
        fulfiller = Fulfiller(self.issuer, self.signer, loop)
        # The first snapshot is not given a name here: one kept by this coroutine would hold
        # every instance as first rendered for as long as the server runs.
        plane = DataPlane(await loop.run_in_executor(None, builder.build), self.config.limits,
                          fulfiller, access_log=self.config.access_log is not None)
        if self.config.access_log is not None:
            json_logger("ecs_imds.access", self.config.access_log)

        def publish(snap: Snapshot) -> None:
            loop.call_soon_threadsafe(plane.install, snap)

        feed = ChangeFeed(builder, plane.snapshot, publish, self.config.poll_interval,
                          settings=self.config.store_settings)
        feed.start()
        await plane.start(list(zip(listeners, sockets, strict=True)))
        self.plane = plane
        chores = [asyncio.create_task(self._publish(metrics))] if self.board else []
        if self.config.api.enabled:
            chores.append(asyncio.create_task(self._keep_admin_token()))
        stop = stop or asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        if self.on_ready is not None:
            self.on_ready(Ready(
                tuple(replace(lst, port=sock.getsockname()[1])
                      for lst, sock in zip(listeners, sockets, strict=True)),
                _api_url(api[1]) if api is not None else None))
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

    def _reload(self) -> None:
        """SIGHUP: re-read the config; apply the log settings and listener aliases (when the
        listeners are the same), and say which other changes wait for a restart."""
        if self.reload is None:
            log.warning("SIGHUP: no config file to re-read")
            return
        try:
            new = self.reload()
        except ValidationError as exc:
            log.error("SIGHUP: config not applied, still serving the old one: %s",
                      str(exc).replace("\n", "; "))
            return
        old = self.config
        applied: list[str] = [name for name in ("log-level", "log-format")
                              if name in differences(old, new)]
        if applied:
            logs.configure(new.log_level, new.log_format)
        if [_where(a) for a in old.listeners] == [_where(b) for b in new.listeners] and any(
                a.aliases != b.aliases for a, b in zip(old.listeners, new.listeners, strict=True)):
            for running, given in zip(old.listeners, new.listeners, strict=True):
                running.aliases.clear()  # the data plane reads this very dict
                running.aliases.update(given.aliases)
            applied.append("listener aliases")
        waiting = [name for name in differences(old, new) if name not in applied]
        self.config = replace(old, log_level=new.log_level, log_format=new.log_format)
        log.info("SIGHUP: config re-read; applied: %s", ", ".join(applied) or "nothing new")
        if waiting:
            log.warning("SIGHUP: not applied until a restart: %s", ", ".join(waiting))

    def run(self) -> None:
        # SIGHUP's default would end the process before the loop installs its handler
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        # While a thread works (an import, a build, a store call's Python), the event loop
        # waits for the GIL up to this long before each turn: 1 ms, not Python's 5.
        sys.setswitchinterval(SWITCH_INTERVAL)
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
        service.reload = self.reload
        service.on_ready = self.on_ready if index == 0 else None
        uvloop.run(service.serve())


def _where(listener: Listener) -> tuple[object, ...]:
    """What a listener is, aliases aside: what a reload cannot change while serving."""
    return listener.host, listener.port, listener.vpc_id, listener.proxy_trusted


def _bind(bind: Callable[[], T], where: str, address: str) -> T:
    """Bind a socket; an address that cannot be had is a one-line error naming the setting."""
    try:
        return bind()
    except OSError as exc:
        advice = {errno.EADDRINUSE: "is in use; stop what listens there or choose another",
                  errno.EACCES: "needs privilege (ports below 1024 need root or "
                                "CAP_NET_BIND_SERVICE); run with it or choose a port above 1023",
                  errno.EADDRNOTAVAIL: "is not an address of this host; add it or choose "
                                       "another"}.get(exc.errno or 0, f"cannot be bound "
                                                                  f"({exc.strerror})")
        raise ValidationError(where, f"{address} {advice}") from None


def _api_url(sock: socket.socket) -> str:
    if sock.family == socket.AF_UNIX:
        return f"unix://{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    return f"http://{join_bind(host, port)}"
