"""Assembling a running server: store → secrets → snapshot feed → data plane listeners."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from dataclasses import dataclass

import uvloop

from .config import Config, CredentialSettings
from .credentials import BuiltinIssuer, CommandIssuer, Issuer, StaticIssuer
from .dataplane.server import DataPlane, bind_socket
from .fleet import ensure_token_keys
from .identity import IdentitySigner, generate_signing_identity
from .secrets import Secrets
from .store import Store, open_store
from .store.feed import ChangeFeed, SnapshotBuilder

log = logging.getLogger("ecs_imds")

_CERT_MARK = b"-----BEGIN CERTIFICATE-----"


def identity_signer(store: Store) -> IdentitySigner:
    """The identity signing key and certificate, made once and kept in the store."""
    blob = store.secret("identity", lambda: b"".join(generate_signing_identity()))
    key_pem, _, cert = blob.partition(_CERT_MARK)
    return IdentitySigner(key_pem, _CERT_MARK + cert)


def credential_issuer(store: Store, settings: CredentialSettings) -> Issuer:
    if settings.issuer == "static":
        assert settings.static_dir is not None
        return StaticIssuer(settings.static_dir)
    if settings.issuer == "command":
        return CommandIssuer(list(settings.command))
    return BuiltinIssuer(store.secret("credentials", lambda: os.urandom(32)),
                         lifetime=settings.lifetime, refresh=settings.refresh)


@dataclass
class Service:
    """Everything one server process runs; `run` serves until SIGINT/SIGTERM."""

    config: Config
    store: Store
    dynamic: Secrets

    @classmethod
    def open(cls, config: Config) -> Service:
        """Open the store and everything secret; a bad setting fails here, before serving."""
        store = open_store(config.store, config.data_dir)
        ensure_token_keys(store)
        dynamic = Secrets(credential_issuer(store, config.credentials), identity_signer(store))
        return cls(config, store, dynamic)

    async def serve(self, sockets: list[socket.socket] | None = None,
                    ready: asyncio.Event | None = None,
                    stop: asyncio.Event | None = None) -> None:
        loop = asyncio.get_running_loop()
        listeners = self.config.listeners
        if sockets is None:
            sockets = [bind_socket(lst, reuse_port=self.config.workers > 1)
                       for lst in listeners]
        builder = SnapshotBuilder(self.store, self.dynamic)
        first = await loop.run_in_executor(None, builder.build)
        plane = DataPlane(first, self.config.limits)
        feed = ChangeFeed(builder, first,
                          lambda snap: loop.call_soon_threadsafe(plane.install, snap),
                          self.config.poll_interval)
        feed.start()
        await plane.start(list(zip(listeners, sockets, strict=True)))
        stop = stop or asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (RuntimeError, ValueError):  # not the main thread
                break
        if ready is not None:
            ready.set()
        try:
            await stop.wait()
        finally:
            feed.stop()
            await plane.stop()
            self.store.close()

    def run(self) -> None:
        uvloop.run(self.serve())
