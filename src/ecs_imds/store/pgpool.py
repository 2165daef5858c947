"""Connections to PostgreSQL: a bounded pool, and a deadline on every round trip.

A database fails in two ways a client sees very differently. When it is down, connecting
is refused or the connection is cut, and a call fails at once. When it hangs (its
processes stopped, or its host behind a partition), nothing comes back at all: a call waits
as long as the kernel keeps the socket open, and the thread that made it with it. So every
connection is made with a connect timeout; its session gets `statement_timeout` and
`idle_in_transaction_session_timeout` (a database that is alive cancels what runs too
long, and frees the locks of a client that stopped halfway through a transaction); and
every round trip has a deadline a little after the statement timeout: a watchdog thread
shuts down the socket of a round trip still waiting then, so that the call fails, the
connection is dropped and the thread is free again.

The pool holds at most `pool_size` connections, the change feed's LISTEN connection
included: however long the database hangs, a server never holds more. Connections are
checked before reuse, so after the database restarts the first query does not fail on a
connection the server already closed, and closed when idle a while: an idle server holds
only its change feed's connection, which also does the feed's reads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from ecs_imds.store.base import StoreSettings

log = logging.getLogger("ecs_imds.store")

# Connection settings unless the URL says otherwise: notice a dead peer over TCP
# (keepalives, tcp_user_timeout). connect_timeout comes from the settings.
_DEFAULTS = {"application_name": "ecs-imds", "keepalives": "1", "keepalives_idle": "10",
             "keepalives_interval": "3", "keepalives_count": "3", "tcp_user_timeout": "10000"}
# Seconds a pooled connection may stay idle before it is closed.
IDLE_TIMEOUT = 10.0
# Seconds past the statement timeout before a round trip is cut: a live database cancels
# the statement itself first, and the connection stays usable.
GRACE = 2.0


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://…"
    params.pop("password", None)
    host = params.get("host", "")
    return f"postgresql database {params.get('dbname', '?')} on {host or 'localhost'}"


def connection_params(url: str, settings: StoreSettings) -> dict[str, Any]:
    """The URL's parameters, with ours where it says nothing."""
    params: dict[str, Any] = conninfo_to_dict(url)
    for key, value in _DEFAULTS.items():
        params.setdefault(key, value)
    params.setdefault("connect_timeout", str(max(2, round(settings.connect_timeout))))
    return params


class Deadlines:
    """The round trips waiting for the database, and when each must have come back; a
    thread of its own cuts those that have not.

    The thread wakes at the earliest deadline, or `seconds` from now when none is waiting,
    and so is never later than a deadline: each new one is `seconds` from its round trip's
    start, never earlier than the wake-up already set. A round trip therefore never wakes
    it (a write is a dozen round trips; waking a thread for each cost the writer the
    interpreter a dozen times); an idle pool's thread wakes every `seconds`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._waiting: dict[int, tuple[float, int]] = {}  # id(conn) → (deadline, socket)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextlib.contextmanager
    def round_trip(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        key = id(conn)
        with self._cond:
            self._waiting[key] = (time.monotonic() + self.seconds, conn.pgconn.socket)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="pg-deadlines",
                                                daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._cond:
                self._waiting.pop(key, None)

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                for key, (deadline, fd) in list(self._waiting.items()):
                    if deadline <= now:
                        del self._waiting[key]  # its thread unregisters only on return
                        log.warning("no answer from the database for %.0f s: connection "
                                    "closed", self.seconds)
                        _cut(fd)
                self._cond.wait(min((d for d, _ in self._waiting.values()),
                                    default=now + self.seconds) - now)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()


def _cut(fd: int) -> None:
    """Shut the socket down under the thread waiting on it: it reads end-of-file and its
    call fails. (A duplicate descriptor: the connection's own is closed by its owner.)"""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


class Connection(psycopg.Connection[Any]):
    """An autocommit connection whose every round trip has a deadline."""

    deadlines: Deadlines | None = None

    def wait(self, *args: Any, **kwargs: Any) -> Any:
        if self.deadlines is None:
            return super().wait(*args, **kwargs)
        with self.deadlines.round_trip(self):
            return super().wait(*args, **kwargs)


class Pool:
    """At most `settings.pool_size` connections, each used by one thread at a time, closed
    after `idle_timeout` seconds unused. A thread may lease one of its own (the change
    feed's LISTEN connection) and pin it: its queries then run there."""

    def __init__(self, params: dict[str, Any], settings: StoreSettings,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.params = params
        self.settings = settings
        self.idle_timeout = idle_timeout
        self.deadlines = Deadlines(settings.statement_timeout + GRACE)
        self._idle: list[tuple[float, Connection]] = []  # (since, connection)
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(settings.pool_size)
        self._closed = False
        self._pinned = threading.local()
        self._reaper: threading.Thread | None = None

    def connect(self, role: str = "") -> Connection:
        """A new connection (not counted: `lease` or `connection` count); `role` is added
        to its application_name (pg_stat_activity)."""
        params = self.params
        if role:
            params = params | {"application_name": f"{params['application_name']} {role}"}
        try:
            conn = Connection.connect(**params, autocommit=True)
        except psycopg.Error as exc:
            # psycopg's frame keeps the attempt it gave up on (and its socket) in a cycle
            # with this exception: a database that hangs and then comes back would find
            # it waiting and complete it, one connection per attempt, until the garbage
            # collector ran. Freed now.
            traceback.clear_frames(exc.__traceback__)
            raise
        conn.deadlines = self.deadlines
        timeout = f"{round(self.settings.statement_timeout * 1000)}ms"
        try:
            conn.execute("SELECT set_config('statement_timeout', %s, false), "
                         "set_config('idle_in_transaction_session_timeout', %s, false)",
                         (timeout, timeout))
        except BaseException:
            conn.close()
            raise
        return conn

    def _slot(self) -> None:
        if not self._slots.acquire(timeout=self.deadlines.seconds):
            raise psycopg.OperationalError(
                f"no database connection free for {self.deadlines.seconds:.0f} s "
                f"(all {self.settings.pool_size} of store.pool-size in use)")

    def lease(self, role: str) -> Connection:
        """A connection of the caller's own, counted in the pool's size until `give_back`."""
        self._slot()
        try:
            return self.connect(role)
        except BaseException:
            self._slots.release()
            raise

    def give_back(self, conn: Connection) -> None:
        conn.close()
        self._slots.release()

    @staticmethod
    def _usable(conn: Connection) -> bool:
        """Nothing may arrive on an idle connection: if something did (the server's
        goodbye, or EOF), it is dead."""
        if conn.closed or conn.broken:
            return False
        try:
            readable, _, _ = select.select([conn.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def pin(self, conn: Connection | None) -> None:
        """Run this thread's queries on `conn` (None: on pooled connections again)."""
        self._pinned.conn = conn

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        pinned: Connection | None = getattr(self._pinned, "conn", None)
        if pinned is not None:
            yield pinned
            return
        self._slot()
        conn: Connection | None = None
        try:
            with self._lock:
                while self._idle and conn is None:
                    _, candidate = self._idle.pop()
                    if self._usable(candidate):
                        conn = candidate
                    else:
                        candidate.close()
            if conn is None:
                conn = self.connect()
            yield conn
        finally:
            if conn is not None:
                self._put_back(conn)
            self._slots.release()

    def _put_back(self, conn: Connection) -> None:
        with self._lock:
            if (self._closed or conn.closed or conn.broken
                    or conn.info.transaction_status != TransactionStatus.IDLE):
                conn.close()
                return
            self._idle.append((time.monotonic(), conn))
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="pg-pool-reaper",
                                                daemon=True)
                self._reaper.start()

    def _reap(self) -> None:
        """Close connections idle too long; ends when none is left idle."""
        while True:
            time.sleep(self.idle_timeout / 2)
            with self._lock:
                now = time.monotonic()
                old = [c for since, c in self._idle if now - since >= self.idle_timeout]
                self._idle = [(s, c) for s, c in self._idle if now - s < self.idle_timeout]
                if not self._idle:
                    self._reaper = None
            for conn in old:
                conn.close()
            if self._reaper is None:
                return

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._closed = True
        for _, conn in idle:
            conn.close()
        self.deadlines.close()
