"""The fleet store on PostgreSQL: many servers, one database, no single point of failure.

The same tables as SQLite, and the same rules: every write is one transaction that bumps the
version counter. The version row is also the write lock (every writer updates it first), so
versions are handed out in commit order. Each write sends a NOTIFY in its own transaction,
delivered on commit and in commit order, naming the instances it changed: every server
LISTENs and rebuilds just those (`feed.ChangeFeed`).

Schema migrations run on start under an advisory lock, so servers starting together apply
each one once. Secrets and the first token key are created with INSERT … ON CONFLICT DO
NOTHING and read back: whichever server wins, all of them get the winner's value.

Connections are pooled per store (psycopg connections are not shared between threads) and
checked before reuse, so after the database restarts the first query does not fail on a
connection the server already closed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from ecs_imds.errors import Conflict, StoreUnavailable
from ecs_imds.protocol.tokens import TokenKey
from ecs_imds.store.base import Change, StoredInstance, StoreDump

log = logging.getLogger("ecs_imds.store")

CHANNEL = "ecs_imds_changes"
# pg_advisory_xact_lock key for migrations: "ecs-imds" as a number, the same on every server.
MIGRATION_LOCK = int.from_bytes(b"ecs-imds", "big") >> 1

# (schema version, statements). Append only: a released migration is never edited.
MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE state (key text PRIMARY KEY, value bigint NOT NULL);
INSERT INTO state VALUES ('version', 0);
CREATE TABLE defaults (id integer PRIMARY KEY CHECK (id = 1), doc text NOT NULL);
CREATE TABLE instances (
    instance_id text PRIMARY KEY,
    doc text NOT NULL,                                   -- JSON as written: key order kept
    revision bigint NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY              -- insertion order, kept on update
);
CREATE TABLE token_keys (kid bigint PRIMARY KEY, secret bytea NOT NULL,
                         created_at bigint NOT NULL);
CREATE TABLE secrets (name text PRIMARY KEY, value bytea NOT NULL);
"""),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

# Connection settings unless the URL says otherwise: fail fast when the database is away
# (connect_timeout), notice a dead peer over TCP (keepalives, tcp_user_timeout).
_DEFAULTS = {"connect_timeout": "5", "application_name": "ecs-imds", "keepalives": "1",
             "keepalives_idle": "10", "keepalives_interval": "3", "keepalives_count": "3",
             "tcp_user_timeout": "10000"}

_INSTANCE_UPSERT = ("INSERT INTO instances (instance_id, doc, revision) VALUES (%s, %s, %s) "
                    "ON CONFLICT (instance_id) DO UPDATE "
                    "SET doc = EXCLUDED.doc, revision = EXCLUDED.revision")


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://…"
    params.pop("password", None)
    host = params.get("host", "")
    return f"postgresql database {params.get('dbname', '?')} on {host or 'localhost'}"


class _Pool:
    """A few autocommit connections, each used by one thread at a time."""

    def __init__(self, params: dict[str, Any], size: int = 8) -> None:
        self.params = params
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)
        self._closed = False

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(**self.params, autocommit=True)

    @staticmethod
    def _usable(conn: psycopg.Connection[Any]) -> bool:
        """Nothing may arrive on an idle connection: if something did (the server's
        goodbye, or EOF), it is dead."""
        if conn.closed or conn.broken:
            return False
        try:
            readable, _, _ = select.select([conn.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        if not self._slots.acquire(timeout=60):
            raise psycopg.OperationalError("no database connection free for 60 s")
        conn: psycopg.Connection[Any] | None = None
        try:
            with self._lock:
                while self._idle and conn is None:
                    candidate = self._idle.pop()
                    if self._usable(candidate):
                        conn = candidate
                    else:
                        candidate.close()
            if conn is None:
                conn = self.connect()
            yield conn
        finally:
            if conn is not None:
                with self._lock:
                    if (self._closed or conn.closed or conn.broken
                            or conn.info.transaction_status != TransactionStatus.IDLE):
                        conn.close()
                    else:
                        self._idle.append(conn)
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._closed = True
        for conn in idle:
            conn.close()


class PgSubscription:
    """One LISTENing connection of its own: notices arrive on it as they are committed."""

    def __init__(self, params: dict[str, Any]) -> None:
        self._conn = psycopg.connect(**params, autocommit=True)
        try:
            self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        except BaseException:
            self._conn.close()
            raise

    def wait(self, timeout: float) -> list[Change | None]:
        found = list(self._conn.notifies(timeout=timeout, stop_after=1))
        if found:  # take whatever else has already arrived, as one batch
            found += self._conn.notifies(timeout=0)
        return [Change.parse(n.payload) for n in found]

    def close(self) -> None:
        self._conn.close()


class PostgresStore:
    def __init__(self, url: str, pool_size: int = 8) -> None:
        params: dict[str, Any] = conninfo_to_dict(url)
        for key, value in _DEFAULTS.items():
            params.setdefault(key, value)
        self.url = url
        self.params = params
        self._pool = _Pool(params, pool_size)
        try:
            self.migrate()
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"{redact(url)}: {exc}".strip()) from None

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.url)})"

    # -- schema ------------------------------------------------------------------------
    def migrate(self) -> int:
        """Bring the schema up to date; safe when several servers start at once: the
        advisory lock makes the others wait, and then they find nothing left to do."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                         "version integer PRIMARY KEY, "
                         "applied_at timestamptz NOT NULL DEFAULT now())")
            row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
            current = int(row[0]) if row and row[0] is not None else 0
            if current > SCHEMA_VERSION:
                raise RuntimeError(f"the database's schema (version {current}) is newer than "
                                   f"this server knows ({SCHEMA_VERSION}): upgrade ecs-imds")
            for version, statements in MIGRATIONS:
                if version > current:
                    log.info("applying schema migration %d", version)
                    conn.execute(statements)
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)",
                                 (version,))
            return SCHEMA_VERSION

    # -- writing -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write(self) -> Iterator[tuple[psycopg.Connection[Any], int]]:
        """A write transaction, holding the version lock, at its new version."""
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute("UPDATE state SET value = value + 1 WHERE key = 'version' "
                               "RETURNING value").fetchone()
            assert row is not None
            yield conn, int(row[0])

    @staticmethod
    def _notify(conn: psycopg.Connection[Any], change: Change) -> None:
        """Sent on commit, to every listening server; nothing is sent on a rollback."""
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, change.payload()))

    @staticmethod
    def _revision(conn: psycopg.Connection[Any], instance_id: str, expect: int | None) -> int:
        row = conn.execute("SELECT revision FROM instances WHERE instance_id = %s "
                           "FOR UPDATE", (instance_id,)).fetchone()
        current = int(row[0]) if row else 0
        if expect is not None and current != expect:
            raise Conflict(instance_id, current)
        return current

    def write_fleet(self, defaults: dict[str, Any] | None, instances: list[dict[str, Any]],
                    replace: bool = False) -> int:
        with self._write() as (conn, version):
            self._write_fleet(conn, version, defaults, instances, replace)
            return version

    def _write_fleet(self, conn: psycopg.Connection[Any], version: int,
                     defaults: dict[str, Any] | None, instances: list[dict[str, Any]],
                     replace: bool) -> None:
        rows = [(doc["instance-id"], _dump(doc), version) for doc in instances]
        if defaults is not None:
            conn.execute("INSERT INTO defaults VALUES (1, %s) ON CONFLICT (id) DO UPDATE "
                         "SET doc = EXCLUDED.doc", (_dump(defaults),))
        if replace:
            conn.execute("DELETE FROM instances")
        if rows:
            with conn.cursor() as cur:
                cur.executemany(_INSTANCE_UPSERT, rows)
        everything = defaults is not None or replace
        self._notify(conn, Change(version, frozenset(r[0] for r in rows), everything))

    def delete_instances(self, ids: list[str]) -> int:
        with self._write() as (conn, version):
            conn.execute("DELETE FROM instances WHERE instance_id = ANY(%s)", (list(ids),))
            self._notify(conn, Change(version, frozenset(ids)))
            return version

    def put_instance(self, doc: dict[str, Any], expect: int | None) -> int:
        instance_id = doc["instance-id"]
        with self._write() as (conn, version):
            self._revision(conn, instance_id, expect)
            conn.execute(_INSTANCE_UPSERT, (instance_id, _dump(doc), version))
            self._notify(conn, Change(version, frozenset([instance_id])))
            return version

    def delete_instance(self, instance_id: str, expect: int | None) -> int:
        with self._write() as (conn, version):
            self._revision(conn, instance_id, expect)
            if conn.execute("DELETE FROM instances WHERE instance_id = %s",
                            (instance_id,)).rowcount == 0:
                raise Conflict(instance_id, 0)
            self._notify(conn, Change(version, frozenset([instance_id])))
            return version

    def first_token_key(self, key: TokenKey) -> list[TokenKey]:
        with self._pool.connection() as conn, conn.transaction():
            # The version row is the write lock: one first key, whoever comes first.
            row = conn.execute("SELECT value FROM state WHERE key = 'version' "
                               "FOR UPDATE").fetchone()
            assert row is not None
            if conn.execute("SELECT 1 FROM token_keys LIMIT 1").fetchone() is None:
                conn.execute("INSERT INTO token_keys VALUES (%s, %s, %s)",
                             (key.kid, key.secret, key.created_at))
                version = conn.execute("UPDATE state SET value = value + 1 "
                                       "WHERE key = 'version' RETURNING value").fetchone()
                assert version is not None
                self._notify(conn, Change(int(version[0])))
        return self.token_keys()

    def replace_token_keys(self, keys: list[TokenKey]) -> int:
        with self._write() as (conn, version):
            self._replace_token_keys(conn, keys)
            self._notify(conn, Change(version))
            return version

    @staticmethod
    def _replace_token_keys(conn: psycopg.Connection[Any], keys: list[TokenKey]) -> None:
        conn.execute("DELETE FROM token_keys")
        if keys:
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO token_keys VALUES (%s, %s, %s)",
                                [(k.kid, k.secret, k.created_at) for k in keys])

    def secret(self, name: str, make: Callable[[], bytes]) -> bytes:
        with self._pool.connection() as conn:
            query = "SELECT value FROM secrets WHERE name = %s"
            row = conn.execute(query, (name,)).fetchone()
            if row is None:
                conn.execute("INSERT INTO secrets VALUES (%s, %s) ON CONFLICT (name) "
                             "DO NOTHING", (name, make()))
                row = conn.execute(query, (name,)).fetchone()
            assert row is not None
            return bytes(row[0])

    def set_secret(self, name: str, value: bytes) -> int:
        with self._write() as (conn, version):
            conn.execute("INSERT INTO secrets VALUES (%s, %s) ON CONFLICT (name) DO UPDATE "
                         "SET value = EXCLUDED.value", (name, value))
            self._notify(conn, Change(version))
            return version

    # -- reading -------------------------------------------------------------------------
    def version(self) -> int:
        with self._pool.connection() as conn:
            row = conn.execute("SELECT value FROM state WHERE key = 'version'").fetchone()
            assert row is not None
            return int(row[0])

    def load_defaults(self) -> dict[str, Any]:
        with self._pool.connection() as conn:
            return self._defaults(conn)

    @staticmethod
    def _defaults(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        row = conn.execute("SELECT doc FROM defaults WHERE id = 1").fetchone()
        return json.loads(row[0]) if row else {}

    def revisions(self) -> dict[str, int]:
        with self._pool.connection() as conn:
            return {i: int(r) for i, r in
                    conn.execute("SELECT instance_id, revision FROM instances")}

    def load_instances(self, ids: list[str] | None = None) -> list[StoredInstance]:
        with self._pool.connection() as conn:
            return self._instances(conn, ids)

    @staticmethod
    def _instances(conn: psycopg.Connection[Any], ids: list[str] | None
                   ) -> list[StoredInstance]:
        if ids is None:
            rows = conn.execute("SELECT instance_id, doc, revision FROM instances "
                                "ORDER BY seq").fetchall()
        else:
            rows = conn.execute("SELECT instance_id, doc, revision FROM instances "
                                "WHERE instance_id = ANY(%s) ORDER BY seq",
                                (list(ids),)).fetchall()
        return [StoredInstance(i, json.loads(d), int(r)) for i, d, r in rows]

    def token_keys(self) -> list[TokenKey]:
        with self._pool.connection() as conn:
            return self._token_keys(conn)

    @staticmethod
    def _token_keys(conn: psycopg.Connection[Any]) -> list[TokenKey]:
        rows = conn.execute("SELECT kid, secret, created_at FROM token_keys ORDER BY kid")
        return [TokenKey(int(kid), bytes(secret), int(created))
                for kid, secret, created in rows]

    # -- the change feed -----------------------------------------------------------------
    def subscribe(self) -> PgSubscription:
        return PgSubscription(self.params)

    # -- copying a fleet -------------------------------------------------------------------
    def dump(self) -> StoreDump:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return StoreDump(
                defaults=self._defaults(conn),
                instances=[s.doc for s in self._instances(conn, None)],
                token_keys=self._token_keys(conn),
                secrets={n: bytes(v) for n, v in
                         conn.execute("SELECT name, value FROM secrets ORDER BY name")})

    def restore(self, dump: StoreDump) -> int:
        with self._write() as (conn, version):
            conn.execute("DELETE FROM secrets")
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO secrets VALUES (%s, %s)",
                                list(dump.secrets.items()))
            self._replace_token_keys(conn, dump.token_keys)
            self._write_fleet(conn, version, dump.defaults, dump.instances, replace=True)
            return version

    def close(self) -> None:
        self._pool.close()
