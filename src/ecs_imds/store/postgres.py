"""The fleet store on PostgreSQL: many servers, one database, no single point of failure.

The same tables as SQLite, and the same rules: every write is one transaction that bumps the
version counter and appends its rows to the change log. The version row is also the write
lock (every writer updates it first), so versions are handed out in commit order and a
reader that sees version N sees every write up to N. Each write sends a NOTIFY in its own
transaction, delivered on commit and in commit order, carrying its change log rows when
they fit: a server LISTENs and reads what concerns its scope (`feed.ChangeFeed`). A hot
standby has no LISTEN: a server reading from one (`replica`) polls the change log.

Schema migrations run on start under an advisory lock, so servers starting together apply
each one once; they are append-only. Secrets and the first token key are created with
INSERT … ON CONFLICT DO NOTHING and read back: whichever server wins, all of them get the
winner's value.

Connections are pooled per store, with timeouts and a bound (`pgpool`). A server that
starts while the database has no connection free waits for one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Set
from typing import Any

import psycopg
from psycopg import sql

from ecs_imds.errors import AddressTaken, Conflict, StoreUnavailable
from ecs_imds.protocol.tokens import TokenKey
from ecs_imds.store.base import (
    DEFAULT_RETENTION,
    FLEET,
    FLEET_ROWS,
    PRUNE_EVERY,
    Change,
    Changes,
    Claims,
    Scope,
    StoredInstance,
    StoreDump,
    StoreSettings,
    claims_of_batch,
    diverged,
    touched,
    within,
)
from ecs_imds.store.base import dump as _dump
from ecs_imds.store.pgpool import Connection, Pool, connection_params, redact
from ecs_imds.store.retry import Backoff

log = logging.getLogger("ecs_imds.store")

CHANNEL = "ecs_imds_changes"
# pg_advisory_xact_lock key for migrations: "ecs-imds" as a number, the same on every server.
MIGRATION_LOCK = int.from_bytes(b"ecs-imds", "big") >> 1

def _claims_of_existing(conn: Connection) -> None:
    """Migration 2's data: the placement and the addresses of every instance stored."""
    rows = [(i, Claims.of(json.loads(d))) for i, d in
            conn.execute("SELECT instance_id, doc FROM instances ORDER BY seq")]
    with conn.cursor() as cur:
        cur.executemany("UPDATE instances SET host = %s WHERE instance_id = %s",
                        [(c.host, i) for i, c in rows if c.host])
        # A store edited by hand may hold an address twice: the first claim keeps it.
        cur.executemany("INSERT INTO addresses VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                        [(c.vpc_id, a, i) for i, c in rows for a in c.addresses])


# (schema version, statements or a function of the connection). Append only: a released
# migration is never edited.
MIGRATIONS: list[tuple[int, str | Callable[[Connection], None]]] = [
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
    # Placement, the address index (a second claim on an address is impossible) and the
    # change log, whose rows before `log-floor` have been pruned.
    (2, """
ALTER TABLE instances ADD COLUMN host text NOT NULL DEFAULT '';
CREATE INDEX instances_by_host ON instances (host, seq);
CREATE TABLE addresses (
    vpc_id text NOT NULL, address text NOT NULL, instance_id text NOT NULL,
    PRIMARY KEY (vpc_id, address));
CREATE INDEX addresses_by_instance ON addresses (instance_id);
CREATE TABLE changes (
    version bigint NOT NULL, host text NOT NULL, ids text[] NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (version, host));
CREATE INDEX changes_by_host ON changes (host, version);
CREATE INDEX changes_by_time ON changes (at);
INSERT INTO state SELECT 'log-floor', value FROM state WHERE key = 'version';
"""),
    (3, _claims_of_existing),
    # Every version's stamp (base.py: which history a version belongs to), made by the
    # database on each bump of the version, whoever bumps it; pruned with the change log.
    (4, """
CREATE TABLE commits (version bigint PRIMARY KEY, stamp bigint NOT NULL);
CREATE FUNCTION ecs_imds_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO commits VALUES (NEW.value, (random() * 9007199254740991)::bigint);
    RETURN NULL;
END $$;
CREATE TRIGGER stamp_each_version AFTER UPDATE OF value ON state FOR EACH ROW
    WHEN (NEW.key = 'version') EXECUTE FUNCTION ecs_imds_stamp();
INSERT INTO commits SELECT value, (random() * 9007199254740991)::bigint
    FROM state WHERE key = 'version';
"""),
    # The version that last replaced each secret (0: as made), so that servers read again
    # only the secrets that changed.
    (5, "ALTER TABLE secrets ADD COLUMN version bigint NOT NULL DEFAULT 0"),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

# What the change feed's connection adds to its application_name.
FEED_ROLE = "change-feed"
# SQLSTATEs that say "not now" rather than "never": no connection slot free
# (max_connections), the database starting up or shutting down. A server starting then
# waits for it instead of exiting.
_NOT_NOW = ("53300", "57P03")

_UPSERT = ("INSERT INTO instances (instance_id, doc, revision, host) VALUES (%s, %s, %s, %s) "
           "ON CONFLICT (instance_id) DO UPDATE "
           "SET doc = EXCLUDED.doc, revision = EXCLUDED.revision, host = EXCLUDED.host")

# An instance's revision and host, locked, with the addresses it holds: one round trip.
_CURRENT_AND_HELD = ("SELECT revision, host, ARRAY(SELECT ARRAY[vpc_id, address] FROM addresses "
                     "WHERE instance_id = %s) FROM instances WHERE instance_id = %s FOR UPDATE")
# The write's stamp, returned by the write itself (the version's row is the trigger's).
_STAMPED = " RETURNING (SELECT stamp FROM commits WHERE version = %s)"
# Instances written at once from which the tables are analysed after the write.
ANALYZE_AFTER = 10_000
# Change log rows written with the notice in one statement (more: executemany).
FEW_ROWS = 8

# The change log after a version, within some hosts, where the log begins, and the stamps
# of both ends, read in one statement (one snapshot of the database).
_CHANGES = """
SELECT s.value, f.value, c.host, c.ids,
    (SELECT stamp FROM commits WHERE version = s.value),
    (SELECT stamp FROM commits WHERE version = %(since)s)
FROM state s JOIN state f ON f.key = 'log-floor'
LEFT JOIN changes c ON c.version > %(since)s AND c.version <= s.value
    AND f.value <= %(since)s AND (%(everywhere)s OR c.host = ANY(%(hosts)s))
WHERE s.key = 'version'
"""
_HEAD = ("SELECT s.value, c.stamp FROM state s LEFT JOIN commits c ON c.version = s.value "
         "WHERE s.key = 'version'")


def _not_now(exc: psycopg.OperationalError) -> bool:
    """Whether connecting failed for a reason that passes by itself (`_NOT_NOW`)."""
    if exc.sqlstate in _NOT_NOW:
        return True
    text = str(exc)  # connection errors often come without their SQLSTATE
    return any(words in text for words in (
        "too many clients", "too many connections", "remaining connection slots are reserved",
        "the database system is starting up", "the database system is shutting down"))


class PgSubscription:
    """One LISTENing connection of its own (leased from the pool): notices arrive on it as
    they are committed. The thread that subscribed runs its queries on it too (`Pool.pin`)."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._conn = pool.lease(FEED_ROLE)
        try:
            self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        except BaseException:
            pool.give_back(self._conn)
            raise
        pool.pin(self._conn)

    def wait(self, timeout: float) -> list[Change | None]:
        found = list(self._conn.notifies(timeout=timeout, stop_after=1))
        if found:  # take whatever else has already arrived, as one batch
            found += self._conn.notifies(timeout=0)
        return [Change.parse(n.payload) for n in found]

    def close(self) -> None:
        self._pool.pin(None)
        self._pool.give_back(self._conn)


class PostgresStore:
    def __init__(self, url: str, settings: StoreSettings | None = None,
                 retention: float = DEFAULT_RETENTION, replica: bool = False) -> None:
        settings = settings or StoreSettings()
        self.url = url
        self.params = connection_params(url, settings)
        self.retention = retention
        self.replica = replica
        self._pool = Pool(self.params, settings)
        self._open(settings)

    def _open(self, settings: StoreSettings) -> None:
        """Check or migrate the schema; while the database says "not now" (no connection
        free, starting up), wait for it, trying again with backoff, and say so once."""
        backoff = Backoff(0.5, max(settings.retry_max, 5.0))
        waiting = False
        while True:
            try:
                self.check_schema() if self.replica else self.migrate()
            except psycopg.OperationalError as exc:
                reason = f"{redact(self.url)}: {exc}".strip()
                if not _not_now(exc):
                    raise StoreUnavailable(reason) from None
                if not waiting:
                    log.warning("%s; waiting for it (trying again with backoff)", reason)
                    waiting = True
                time.sleep(backoff.next())
                continue
            if waiting:
                log.warning("%s: connected", redact(self.url))
            return

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
            current = self._schema(conn)
            for version, step in MIGRATIONS:
                if version > current:
                    log.info("applying schema migration %d", version)
                    if callable(step):
                        step(conn)
                    else:
                        conn.execute(step)
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)",
                                 (version,))
            return SCHEMA_VERSION

    def check_schema(self) -> int:
        """A replica is never migrated: its primary's servers do that, and it follows."""
        with self._pool.connection() as conn:
            current = self._schema(conn)
        if current < SCHEMA_VERSION:
            raise psycopg.OperationalError(
                f"its schema (version {current}) is older than this server's "
                f"({SCHEMA_VERSION}): start a server on the primary first")
        return current

    @staticmethod
    def _schema(conn: Connection) -> int:
        row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        current = int(row[0]) if row and row[0] is not None else 0
        if current > SCHEMA_VERSION:
            raise RuntimeError(f"the database's schema (version {current}) is newer than "
                               f"this server knows ({SCHEMA_VERSION}): upgrade ecs-imds")
        return current

    # -- writing -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write(self) -> Iterator[tuple[Connection, int]]:
        """A write transaction, holding the version lock, at its new version."""
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute("UPDATE state SET value = value + 1 WHERE key = 'version' "
                               "RETURNING value").fetchone()
            assert row is not None
            yield conn, int(row[0])

    def _log(self, conn: Connection, version: int,
             rows: Mapping[str, Set[str]] = FLEET_ROWS, stamp: int | None = None) -> None:
        """Append one write's rows (host → ids) to the change log, prune it now and then,
        and tell the listening servers (NOTIFY is sent on commit, nothing on a rollback).
        `stamp`: the version's, when the caller has read it already."""
        if stamp is None:
            found = conn.execute("SELECT stamp FROM commits WHERE version = %s",
                                 (version,)).fetchone()
            stamp = found[0] if found else None
        notice = Change(version, {host: frozenset(ids) for host, ids in rows.items()}, stamp)
        logged = [(version, host, sorted(ids)) for host, ids in rows.items()]
        if len(logged) <= FEW_ROWS:  # one round trip, as most writes are
            conn.execute(f"WITH logged AS (INSERT INTO changes (version, host, ids) VALUES "
                         f"{', '.join(['(%s, %s, %s)'] * len(logged))}) "
                         "SELECT pg_notify(%s, %s)",
                         [*(v for row in logged for v in row), CHANNEL, notice.payload()])
        else:
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO changes (version, host, ids) VALUES (%s, %s, %s)",
                                logged)
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, notice.payload()))
        if version % PRUNE_EVERY == 0:
            conn.execute("""
WITH cut AS (SELECT max(version) AS v FROM changes
             WHERE at < now() - make_interval(secs => %s)),
     pruned AS (DELETE FROM changes WHERE version <= (SELECT v FROM cut)),
     unstamped AS (DELETE FROM commits WHERE version < (SELECT v FROM cut))
UPDATE state SET value = greatest(value, (SELECT v FROM cut))
WHERE key = 'log-floor' AND (SELECT v FROM cut) IS NOT NULL""", (self.retention,))

    @staticmethod
    def _current(conn: Connection, instance_id: str, expect: int | None
                 ) -> tuple[int, str | None]:
        """The instance's revision (0: none) and host, locked, checked against `expect`."""
        row = conn.execute("SELECT revision, host FROM instances WHERE instance_id = %s "
                           "FOR UPDATE", (instance_id,)).fetchone()
        current = int(row[0]) if row else 0
        if expect is not None and current != expect:
            raise Conflict(instance_id, current)
        return current, row[1] if row else None

    def write_fleet(self, defaults: dict[str, Any] | None, instances: list[dict[str, Any]],
                    replace: bool = False, note: tuple[str, bytes] | None = None) -> int:
        written = len(instances)
        with self._write() as (conn, version):
            if note is not None:
                conn.execute("INSERT INTO secrets (name, value) VALUES (%s, %s) "
                             "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value", note)
            self._write_fleet(conn, version, defaults, instances, replace)
        if written >= ANALYZE_AFTER:
            self._analyze()
        return version

    def _analyze(self) -> None:
        """Statistics for the planner after a large write. Until autovacuum gets to it (a
        minute or more), the tables look as they were: after the first import of 100,000
        instances, every API write ran twice as long (3.2 -> 7 ms at the store) on plans
        made for empty tables. The write is committed already: a failure here is logged."""
        try:
            with self._pool.connection() as conn:
                conn.execute("ANALYZE instances, addresses, changes")
        except psycopg.Error as exc:
            log.warning("the tables were not analysed after a large write (autovacuum "
                        "will): %s", exc)

    def _write_fleet(self, conn: Connection, version: int, defaults: dict[str, Any] | None,
                     instances: list[dict[str, Any]], replace: bool) -> None:
        if defaults is not None:
            conn.execute("INSERT INTO defaults VALUES (1, %s) ON CONFLICT (id) DO UPDATE "
                         "SET doc = EXCLUDED.doc", (_dump(defaults),))
        given = [(doc["instance-id"], Claims.of(doc), doc) for doc in instances]
        claims = claims_of_batch(given)
        gone: list[tuple[str, str]] = []
        if replace:
            gone = conn.execute("DELETE FROM instances RETURNING instance_id, host").fetchall()
            conn.execute("DELETE FROM addresses")
        if given:
            gone += self._stage(conn, given, claims, replace)
            held = set() if replace else {i for (i,) in conn.execute(
                "SELECT instance_id FROM instances JOIN given USING (instance_id)")}
            self._put_docs(conn, version, given, held)
            conn.execute("INSERT INTO addresses SELECT vpc_id, address, instance_id "
                         "FROM claimed")
        rows: dict[str, Set[str]] = touched([*gone, *((i, c.host) for i, c, _ in given)])
        if defaults is not None:
            rows |= FLEET_ROWS
        if rows:
            self._log(conn, version, rows)

    @staticmethod
    def _stage(conn: Connection, given: list[tuple[str, Claims, dict[str, Any]]],
               claims: list[tuple[str, str, str]], replace: bool) -> list[tuple[str, str]]:
        """Copy a batch into temporary tables (`given`, `claimed`), check its addresses
        against the index, and free the ones its instances hold now. Returns the instances
        that moved, with the host they left."""
        conn.execute("CREATE TEMP TABLE given (instance_id text PRIMARY KEY, host text) "
                     "ON COMMIT DROP")
        conn.execute("CREATE TEMP TABLE claimed (vpc_id text, address text, instance_id text)"
                     " ON COMMIT DROP")
        with conn.cursor() as cur:
            with cur.copy("COPY given FROM STDIN") as copy:
                for instance_id, c, _ in given:
                    copy.write_row((instance_id, c.host))
            with cur.copy("COPY claimed FROM STDIN") as copy:
                for row in claims:
                    copy.write_row(row)
        if replace:
            return []
        conn.execute("ANALYZE given")
        conn.execute("ANALYZE claimed")
        taken = conn.execute(
            "SELECT c.vpc_id, c.address, a.instance_id, c.instance_id "
            "FROM claimed c JOIN addresses a USING (vpc_id, address) "
            "WHERE NOT EXISTS (SELECT 1 FROM given g WHERE g.instance_id = a.instance_id) "
            "LIMIT 1").fetchone()
        if taken:
            raise AddressTaken(*taken)
        moved = conn.execute("SELECT i.instance_id, i.host FROM instances i "
                             "JOIN given g USING (instance_id) WHERE i.host <> g.host").fetchall()
        conn.execute("DELETE FROM addresses a USING given g WHERE a.instance_id = g.instance_id")
        return moved

    @staticmethod
    def _put_docs(conn: Connection, version: int,
                  given: list[tuple[str, Claims, dict[str, Any]]], held: Set[str]) -> None:
        """Write a batch's documents: those of instances already `held` through a temporary
        table and one UPDATE, the new ones copied straight into the table (each document is
        written once, not to a temporary table first: 100,000 of them in an import), in the
        batch's order (`seq`)."""
        with conn.cursor() as cur:
            if held:
                conn.execute("CREATE TEMP TABLE changed (instance_id text PRIMARY KEY, "
                             "doc text) ON COMMIT DROP")
                with cur.copy("COPY changed FROM STDIN") as copy:
                    for instance_id, _, doc in given:
                        if instance_id in held:
                            copy.write_row((instance_id, _dump(doc)))
                conn.execute("UPDATE instances i SET doc = c.doc, revision = %s, host = g.host "
                             "FROM changed c JOIN given g USING (instance_id) "
                             "WHERE i.instance_id = c.instance_id", (version,))
            with cur.copy("COPY instances (instance_id, doc, revision, host) FROM STDIN"
                          ) as copy:
                for instance_id, c, doc in given:
                    if instance_id not in held:
                        copy.write_row((instance_id, _dump(doc), version, c.host))

    def delete_instances(self, ids: list[str]) -> int:
        with self._write() as (conn, version):
            gone = conn.execute("DELETE FROM instances WHERE instance_id = ANY(%s) "
                                "RETURNING instance_id, host", (list(ids),)).fetchall()
            conn.execute("DELETE FROM addresses WHERE instance_id = ANY(%s)", (list(ids),))
            if gone:
                self._log(conn, version, touched(gone))
            return version

    def put_instance(self, doc: dict[str, Any], expect: int | None) -> int:
        instance_id = doc["instance-id"]
        claims = Claims.of(doc)
        with self._write() as (conn, version):
            row = conn.execute(_CURRENT_AND_HELD, (instance_id, instance_id)).fetchone()
            current, host = (int(row[0]), row[1]) if row else (0, None)
            if expect is not None and current != expect:
                raise Conflict(instance_id, current)
            self._claim(conn, instance_id, claims, None if row is None else row[2])
            stamp = conn.execute(_UPSERT + _STAMPED, (instance_id, _dump(doc), version,
                                                      claims.host, version)).fetchone()
            moved = [] if host is None else [(instance_id, host)]
            self._log(conn, version, touched([*moved, (instance_id, claims.host)]),
                      stamp[0] if stamp else None)
            return version

    @staticmethod
    def _claim(conn: Connection, instance_id: str, claims: Claims,
               held_now: list[list[str]] | None = None) -> None:
        """Give one instance exactly `claims`' addresses, writing only the difference;
        `held_now`: the (vpc, address) pairs it holds, when the caller has read them."""
        if held_now is None:
            held_now = conn.execute("SELECT vpc_id, address FROM addresses "
                                    "WHERE instance_id = %s", (instance_id,)).fetchall()
        held = {(v, a) for v, a in held_now}
        wanted = {(claims.vpc_id, a) for a in claims.addresses}
        new = wanted - held
        if new:
            taken = conn.execute(
                "SELECT vpc_id, address, instance_id FROM addresses WHERE vpc_id = %s "
                "AND address = ANY(%s) LIMIT 1",
                (claims.vpc_id, [a for _, a in new])).fetchone()
            if taken:
                raise AddressTaken(taken[0], taken[1], taken[2], instance_id)
        with conn.cursor() as cur:
            if held - wanted:
                cur.executemany("DELETE FROM addresses WHERE vpc_id = %s AND address = %s",
                                list(held - wanted))
            if new:
                cur.executemany("INSERT INTO addresses VALUES (%s, %s, %s)",
                                [(v, a, instance_id) for v, a in new])

    def delete_instance(self, instance_id: str, expect: int | None) -> int:
        with self._write() as (conn, version):
            _, host = self._current(conn, instance_id, expect)
            if host is None:
                raise Conflict(instance_id, 0)
            conn.execute("DELETE FROM instances WHERE instance_id = %s", (instance_id,))
            conn.execute("DELETE FROM addresses WHERE instance_id = %s", (instance_id,))
            self._log(conn, version, {host: {instance_id}})
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
                self._log(conn, int(version[0]))
        return self.token_keys()

    def replace_token_keys(self, keys: list[TokenKey]) -> int:
        with self._write() as (conn, version):
            self._replace_token_keys(conn, keys)
            self._log(conn, version)
            return version

    @staticmethod
    def _replace_token_keys(conn: Connection, keys: list[TokenKey]) -> None:
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
                conn.execute("INSERT INTO secrets (name, value) VALUES (%s, %s) "
                             "ON CONFLICT (name) DO NOTHING", (name, make()))
                row = conn.execute(query, (name,)).fetchone()
            assert row is not None
            return bytes(row[0])

    def secrets_named(self, prefix: str) -> dict[str, bytes]:
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT name, value FROM secrets WHERE starts_with(name, %s)",
                                (prefix,))
            return {name: bytes(value) for name, value in rows}

    def set_secret(self, name: str, value: bytes) -> int:
        with self._write() as (conn, version):
            conn.execute("INSERT INTO secrets VALUES (%s, %s, %s) ON CONFLICT (name) DO UPDATE "
                         "SET value = EXCLUDED.value, version = EXCLUDED.version",
                         (name, value, version))
            self._log(conn, version)
            return version

    def secret_versions(self) -> dict[str, int]:
        with self._pool.connection() as conn:
            return {name: int(v) for name, v in conn.execute("SELECT name, version FROM secrets")}

    # -- reading -------------------------------------------------------------------------
    def version(self) -> int:
        with self._pool.connection() as conn:
            row = conn.execute("SELECT value FROM state WHERE key = 'version'").fetchone()
            assert row is not None
            return int(row[0])

    def head(self) -> tuple[int, int]:
        with self._pool.connection() as conn:
            row = conn.execute(_HEAD).fetchone()
            assert row is not None
            return int(row[0]), int(row[1] or 0)

    def changes(self, since: int, scope: Scope = None, stamp: int | None = None) -> Changes:
        with self._pool.connection() as conn:
            found = conn.execute(_CHANGES, {"since": since, "everywhere": scope is None,
                                            "hosts": [*(scope or ()), FLEET]}).fetchall()
        version, floor = int(found[0][0]), int(found[0][1])
        head_stamp, since_stamp = found[0][4], found[0][5]
        if diverged(since, stamp, floor, version, since_stamp):
            return Changes(version, resync=True, stamp=head_stamp)
        return within(((h, ids) for _, _, h, ids, _, _ in found if h is not None), scope,
                      version, head_stamp)

    def load_defaults(self) -> dict[str, Any]:
        with self._pool.connection() as conn:
            return self._defaults(conn)

    @staticmethod
    def _defaults(conn: Connection) -> dict[str, Any]:
        row = conn.execute("SELECT doc FROM defaults WHERE id = 1").fetchone()
        return json.loads(row[0]) if row else {}

    def revisions(self, scope: Scope = None) -> dict[str, int]:
        with self._pool.connection() as conn:
            if scope is None:
                rows = conn.execute("SELECT instance_id, revision FROM instances")
            else:
                rows = conn.execute("SELECT instance_id, revision FROM instances "
                                    "WHERE host = ANY(%s)", (list(scope),))
            return {i: int(r) for i, r in rows}

    def load_instances(self, ids: list[str] | None = None, scope: Scope = None
                       ) -> list[StoredInstance]:
        with self._pool.connection() as conn:
            return self._instances(conn, ids, scope)

    @staticmethod
    def _instances(conn: Connection, ids: list[str] | None, scope: Scope = None
                   ) -> list[StoredInstance]:
        where, args = [], []
        if ids is not None:
            where.append("instance_id = ANY(%s)")
            args.append(list(ids))
        if scope is not None:
            where.append("host = ANY(%s)")
            args.append(list(scope))
        rows = conn.execute("SELECT instance_id, doc, revision FROM instances "
                            f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY seq",
                            args).fetchall()
        return [StoredInstance(i, json.loads(d), int(r)) for i, d, r in rows]

    def instances_after(self, after: str | None, limit: int) -> list[StoredInstance]:
        with self._pool.connection() as conn:  # the primary key's order: its index serves it
            rows = conn.execute("SELECT instance_id, doc, revision FROM instances "
                                "WHERE instance_id > %s ORDER BY instance_id LIMIT %s",
                                (after or "", limit)).fetchall()
        return [StoredInstance(i, json.loads(d), int(r)) for i, d, r in rows]

    def token_keys(self) -> list[TokenKey]:
        with self._pool.connection() as conn:
            return self._token_keys(conn)

    @staticmethod
    def _token_keys(conn: Connection) -> list[TokenKey]:
        rows = conn.execute("SELECT kid, secret, created_at FROM token_keys ORDER BY kid")
        return [TokenKey(int(kid), bytes(secret), int(created))
                for kid, secret, created in rows]

    # -- the change feed -----------------------------------------------------------------
    def subscribe(self) -> PgSubscription | None:
        """None on a replica: a hot standby cannot LISTEN (its readers poll the log)."""
        return None if self.replica else PgSubscription(self._pool)

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
                cur.executemany("INSERT INTO secrets VALUES (%s, %s, %s)",
                                [(n, v, version) for n, v in dump.secrets.items()])
            self._replace_token_keys(conn, dump.token_keys)
            self._write_fleet(conn, version, dump.defaults, dump.instances, replace=True)
            conn.execute("DELETE FROM changes")
            conn.execute("DELETE FROM commits WHERE version < %s", (version,))
            conn.execute("UPDATE state SET value = %s WHERE key = 'log-floor'", (version,))
            return version

    def close(self) -> None:
        self._pool.close()

