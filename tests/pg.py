"""A real PostgreSQL for the tests: a temporary cluster of its own, on a unix socket only.

The cluster listens on no TCP address at all (`listen_addresses = ''`), only on a socket in
its own temporary directory, so it sends nothing to any network and cannot collide with
another PostgreSQL on the machine. Unix sockets cross network namespaces (they live in the
filesystem), so servers started inside test namespaces reach it by the same URL.

PostgreSQL refuses to run as root: as root (CI), `initdb` and `pg_ctl` run as the
`postgres` user through `runuser`, and the cluster's directory belongs to that user.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

_databases = itertools.count()


def pg_bin() -> Path:
    """The newest installed PostgreSQL's bin directory (Debian's layout)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    pytest.fail("PostgreSQL is not installed (Debian package `postgresql`; `make test` "
                "installs it)", pytrace=False)


class PostgresCluster:
    """initdb, start, stop, restart; `url(db)` is a psycopg URL of one database.

    With `primary`, the cluster is a base backup of it instead (`pg_basebackup`): a hot
    standby (`standby`, with `-R`) that follows the primary by streaming replication (over
    the primary's unix socket) until it is promoted, or a copy that starts as a primary of
    its own, as a restored backup does."""

    def __init__(self, durable: bool = False, primary: PostgresCluster | None = None,
                 max_connections: int = 200, standby: bool = True) -> None:
        """`durable`: PostgreSQL's own defaults (fsync on), for benchmarks; the tests run
        without flushing to disk."""
        self.bin = pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="ecs-imds-pg-"))
        self.socket = self.dir  # where its socket is (`take_place_of` moves it)
        self.data = self.dir / "data"
        self.port = 5432  # names the socket file (and the TCP port, see `listen_tcp`)
        self._as: list[str] = []
        self._netns: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        if primary is not None:
            self._run("pg_basebackup", "-D", str(self.data), *(["-R"] if standby else []),
                      "-X", "stream", "-c", "fast", "-h", str(primary.socket),
                      "-p", str(primary.port), "-U", "postgres")
            with (self.data / "postgresql.conf").open("a") as conf:  # its own socket
                conf.write(f"unix_socket_directories = '{self.dir}'\n")
            return
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8", "--locale=C.UTF-8")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"listen_addresses = ''\nunix_socket_directories = '{self.dir}'\n"
                       f"port = {self.port}\nmax_connections = {max_connections}\n")
            if not durable:
                conf.write("fsync = off\nsynchronous_commit = off\n")

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run([*self._netns, *self._as, str(self.bin / tool), *args],
                                capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stdout}{result.stderr}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        """A fast shutdown: every client's connection is cut, as when the database dies."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def listen_tcp(self, address: str, network: str, netns: str) -> None:
        """From its next start: run in network namespace `netns` (one the caller made) and
        listen on TCP `address` there too, trusting clients from `network`."""
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"listen_addresses = '{address}'\n")
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {network} trust\n")
        self._netns = ["ip", "netns", "exec", netns]

    def processes(self) -> list[int]:
        """The postmaster and every process it started (backends, checkpointer, …)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    children.append(int(stat.parent.name))
        return [postmaster, *children]

    def freeze(self, postmaster_only: bool = False) -> None:
        """SIGSTOP: the database hangs (every process of it, or only the postmaster, which
        then accepts no new connection while the open ones go on working)."""
        stopped: set[int] = set()
        while True:  # the postmaster first; then its children, until none was missed
            pids = self.processes()[:1] if postmaster_only else self.processes()
            if stopped.issuperset(pids):  # (one it forked while they were listed)
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            stopped.update(pids)

    def thaw(self) -> None:
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def take_place_of(self, other: PostgresCluster) -> None:
        """From its next start, listen where `other` does (stopped by then), so that its
        clients' URLs now reach this cluster: a restored backup or a promoted standby put
        in the place of a lost primary."""
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"unix_socket_directories = '{other.socket}'\n")
        self.socket = other.socket

    def reload(self) -> None:
        """Re-read postgresql.conf and pg_hba.conf (SIGHUP)."""
        self._run("pg_ctl", "-D", str(self.data), "reload")

    def promote(self) -> None:
        """A standby becomes a primary (what a failover does)."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "promote")

    def replayed(self, primary: PostgresCluster) -> bool:
        """Whether this standby has replayed everything the primary has written so far."""
        with psycopg.connect(primary.url(), autocommit=True) as db:
            row = db.execute("SELECT pg_current_wal_lsn()").fetchone()
        with psycopg.connect(self.url(), autocommit=True) as db:
            done = db.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                              (row[0] if row else "0/0",)).fetchone()
        return bool(done and done[0])

    def log(self) -> str:
        """What the server has logged (refused connections among it)."""
        path = self.dir / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket}&port={self.port}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        name = f"{prefix}{os.getpid()}_{next(_databases)}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.split("/")[3].split("?")[0]
        with contextlib.suppress(psycopg.Error), \
                psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        if self.running:
            with contextlib.suppress(OSError, ValueError):
                self.thaw()
        with contextlib.suppress(RuntimeError):
            if self.running:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def cluster() -> Iterator[PostgresCluster]:
    pg = PostgresCluster()
    try:
        pg.start()
        yield pg
    finally:
        pg.close()


def wait_until(predicate: object, timeout: float = 10.0, step: float = 0.01) -> float:
    """Poll `predicate()` until true; returns the seconds it took. Bounded, never timed."""
    start = time.monotonic()
    while not predicate():  # type: ignore[operator]
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(step)
    return time.monotonic() - start


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """One PostgreSQL for the whole session, stopped at the end."""
    with cluster() as pg:
        yield pg


@pytest.fixture
def pg_url(postgres: PostgresCluster) -> Iterator[str]:
    """A fresh database of the session's PostgreSQL, dropped after the test."""
    url = postgres.create_database()
    yield url
    postgres.drop_database(url)
