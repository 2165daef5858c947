"""The embedded store: one SQLite file, safe for one writer and many readers at once.

Writes are serialised by SQLite itself (BEGIN IMMEDIATE); the unique index on addresses
makes a second claim on an address impossible, and each write checks its claims against
the index first, so that the refusal names both instances.

Acknowledged means durable: in WAL mode with `synchronous=FULL`, each commit is on disk
before the API answers, at the cost of one fsync of the log per write (about 0.3 ms a
write here, measured in BENCHMARKS.md); with NORMAL, a power loss could take back the last
writes an operator was told had succeeded.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Set
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ecs_imds.errors import AddressTaken, Conflict, StoreUnavailable
from ecs_imds.protocol.tokens import TokenKey
from ecs_imds.store.base import (
    DEFAULT_RETENTION,
    FLEET,
    FLEET_ROWS,
    PRUNE_EVERY,
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

# PRAGMA synchronous for every connection (see the module's docstring).
SYNCHRONOUS = "FULL"

SCHEMA = """
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO state VALUES ('version', 0);
CREATE TABLE IF NOT EXISTS defaults (id INTEGER PRIMARY KEY CHECK (id = 1), doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    instance_id TEXT PRIMARY KEY, doc TEXT NOT NULL, revision INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS token_keys (
    kid INTEGER PRIMARY KEY, secret BLOB NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""

# Schema 2: placement, the address index and the change log (PRAGMA user_version).
SCHEMA_2 = """
ALTER TABLE instances ADD COLUMN host TEXT NOT NULL DEFAULT '';
CREATE INDEX instances_by_host ON instances (host);
CREATE TABLE addresses (
    vpc_id TEXT NOT NULL, address TEXT NOT NULL, instance_id TEXT NOT NULL,
    PRIMARY KEY (vpc_id, address)) WITHOUT ROWID;
CREATE INDEX addresses_by_instance ON addresses (instance_id);
CREATE TABLE changes (
    version INTEGER NOT NULL, host TEXT NOT NULL, ids TEXT, at REAL NOT NULL,
    PRIMARY KEY (version, host)) WITHOUT ROWID;
CREATE INDEX changes_by_host ON changes (host, version);
CREATE INDEX changes_by_time ON changes (at);
INSERT INTO state SELECT 'log-floor', value FROM state WHERE key = 'version';
"""
# Schema 3: every version's stamp (base.py), made by a trigger on each bump of the version.
SCHEMA_3 = (
    "CREATE TABLE commits (version INTEGER PRIMARY KEY, stamp INTEGER NOT NULL)",
    "CREATE TRIGGER stamp_each_version AFTER UPDATE OF value ON state "
    "WHEN NEW.key = 'version' BEGIN INSERT INTO commits VALUES (NEW.value, random()); END",
    "INSERT INTO commits SELECT value, random() FROM state WHERE key = 'version'",
)
# Schema 4: the version that last replaced each secret (0: as made).
SCHEMA_4 = "ALTER TABLE secrets ADD COLUMN version INTEGER NOT NULL DEFAULT 0"
SCHEMA_VERSION = 4

_UPSERT = ("INSERT INTO instances (instance_id, doc, revision, host) VALUES (?, ?, ?, ?) "
           "ON CONFLICT (instance_id) DO UPDATE "
           "SET doc = excluded.doc, revision = excluded.revision, host = excluded.host")


def _marks(values: Iterable[Any]) -> str:
    return ",".join("?" for _ in values)


class SQLiteStore:
    def __init__(self, path: Path, retention: float = DEFAULT_RETENTION,
                 settings: StoreSettings | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.retention = retention
        self.busy_timeout = (settings or StoreSettings()).statement_timeout
        self._local = threading.local()
        try:
            with self._tx() as db:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                current = db.execute("PRAGMA user_version").fetchone()[0]
                if current < 2:
                    self._schema_2(db)
                if current < 3:
                    for statement in SCHEMA_3:
                        db.execute(statement)
                if current < 4:
                    db.execute(SCHEMA_4)
                if current < SCHEMA_VERSION:
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as exc:  # an OSError to its caller, who need not import sqlite3
            raise StoreUnavailable(str(exc)) from exc

    def _schema_2(self, db: sqlite3.Connection) -> None:
        for statement in SCHEMA_2.split(";"):
            if statement.strip():
                db.execute(statement)
        rows = [(i, Claims.of(json.loads(d))) for i, d in
                db.execute("SELECT instance_id, doc FROM instances ORDER BY rowid")]
        db.executemany("UPDATE instances SET host = ? WHERE instance_id = ?",
                       [(c.host, i) for i, c in rows if c.host])
        # A store edited by hand may hold an address twice: the first claim keeps it.
        db.executemany("INSERT OR IGNORE INTO addresses VALUES (?, ?, ?)",
                       [(c.vpc_id, a, i) for i, c in rows for a in c.addresses])

    def _db(self) -> sqlite3.Connection:
        """One connection per thread: the change feed polls from its own thread."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute(begin)
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _bump(self, db: sqlite3.Connection) -> int:
        db.execute("UPDATE state SET value = value + 1 WHERE key = 'version'")
        return int(db.execute("SELECT value FROM state WHERE key = 'version'").fetchone()[0])

    # -- the change log --------------------------------------------------------------------
    def _log(self, db: sqlite3.Connection, version: int,
             rows: Mapping[str, Set[str]] = FLEET_ROWS) -> None:
        """Append one write's rows (host → ids) to the change log; prune it now and then."""
        now = time.time()
        db.executemany("INSERT INTO changes VALUES (?, ?, ?, ?)",
                       [(version, host, json.dumps(sorted(ids)), now)
                        for host, ids in rows.items()])
        if version % PRUNE_EVERY == 0:
            cut = db.execute("SELECT max(version) FROM changes WHERE at < ?",
                             (now - self.retention,)).fetchone()[0]
            if cut is not None:
                db.execute("DELETE FROM changes WHERE version <= ?", (cut,))
                db.execute("DELETE FROM commits WHERE version < ?", (cut,))
                db.execute("UPDATE state SET value = max(value, ?) WHERE key = 'log-floor'",
                           (cut,))

    def changes(self, since: int, scope: Scope = None, stamp: int | None = None) -> Changes:
        with self._tx("BEGIN") as db:  # one read transaction: the log as of one version
            state = dict(db.execute("SELECT key, value FROM state"))
            version, floor = int(state["version"]), int(state["log-floor"])
            stamps = dict(db.execute("SELECT version, stamp FROM commits WHERE version IN "
                                     "(?, ?)", (since, version)))
            if diverged(since, stamp, floor, version, stamps.get(since)):
                return Changes(version, resync=True, stamp=stamps.get(version))
            query = "SELECT host, ids FROM changes WHERE version > ? AND version <= ?"
            args: list[Any] = [since, version]
            if scope is not None:
                hosts = [*scope, FLEET]
                query += f" AND host IN ({_marks(hosts)})"
                args += hosts
            rows = [(host, json.loads(ids)) for host, ids in db.execute(query, args)]
        return within(rows, scope, version, stamps.get(version))

    # -- reading ---------------------------------------------------------------------------
    def version(self) -> int:
        row = self._db().execute("SELECT value FROM state WHERE key = 'version'").fetchone()
        return int(row[0])

    def head(self) -> tuple[int, int]:
        row = self._db().execute("SELECT s.value, c.stamp FROM state s LEFT JOIN commits c "
                                 "ON c.version = s.value WHERE s.key = 'version'").fetchone()
        return int(row[0]), int(row[1] or 0)

    def load_defaults(self) -> dict[str, Any]:
        row = self._db().execute("SELECT doc FROM defaults WHERE id = 1").fetchone()
        return json.loads(row[0]) if row else {}

    def revisions(self, scope: Scope = None) -> dict[str, int]:
        if scope is None:
            return dict(self._db().execute("SELECT instance_id, revision FROM instances"))
        hosts = list(scope)
        return dict(self._db().execute("SELECT instance_id, revision FROM instances "
                                       f"WHERE host IN ({_marks(hosts)})", hosts))

    def load_instances(self, ids: list[str] | None = None, scope: Scope = None
                       ) -> list[StoredInstance]:
        db = self._db()
        where, args = "", []
        if scope is not None:
            where, args = f" AND host IN ({_marks(scope)})", list(scope)
        if ids is None:
            rows = db.execute("SELECT instance_id, doc, revision FROM instances "
                              f"WHERE 1 {where} ORDER BY rowid", args).fetchall()
        else:
            rows = []
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                rows += db.execute("SELECT instance_id, doc, revision FROM instances "
                                   f"WHERE instance_id IN ({_marks(chunk)}) {where} "
                                   "ORDER BY rowid", [*chunk, *args]).fetchall()
        return [StoredInstance(i, json.loads(d), r) for i, d, r in rows]

    def instances_after(self, after: str | None, limit: int) -> list[StoredInstance]:
        rows = self._db().execute("SELECT instance_id, doc, revision FROM instances "
                                  "WHERE instance_id > ? ORDER BY instance_id LIMIT ?",
                                  (after or "", limit)).fetchall()
        return [StoredInstance(i, json.loads(d), r) for i, d, r in rows]

    # -- writing instances -----------------------------------------------------------------
    def write_fleet(self, defaults: dict[str, Any] | None, instances: list[dict[str, Any]],
                    replace: bool = False, note: tuple[str, bytes] | None = None) -> int:
        with self._tx() as db:
            if note is not None:
                db.execute("INSERT OR REPLACE INTO secrets (name, value) VALUES (?, ?)", note)
            return self._write_fleet(db, defaults, instances, replace)

    def _write_fleet(self, db: sqlite3.Connection, defaults: dict[str, Any] | None,
                     instances: list[dict[str, Any]], replace: bool) -> int:
        version = self._bump(db)
        if defaults is not None:
            db.execute("INSERT OR REPLACE INTO defaults VALUES (1, ?)", (_dump(defaults),))
        given = [(doc["instance-id"], Claims.of(doc), doc) for doc in instances]
        claims = claims_of_batch(given)
        gone: list[tuple[str, str]] = []
        if replace:
            gone = db.execute("SELECT instance_id, host FROM instances").fetchall()
            db.execute("DELETE FROM instances")
            db.execute("DELETE FROM addresses")
        else:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS given "
                       "(instance_id TEXT PRIMARY KEY, host TEXT NOT NULL) WITHOUT ROWID")
            db.execute("CREATE TEMP TABLE IF NOT EXISTS claimed (vpc_id TEXT, address TEXT, "
                       "instance_id TEXT, PRIMARY KEY (vpc_id, address)) WITHOUT ROWID")
            try:
                db.executemany("INSERT INTO given VALUES (?, ?)",
                               [(i, c.host) for i, c, _ in given])
                db.executemany("INSERT INTO claimed VALUES (?, ?, ?)", claims)
                taken = db.execute(
                    "SELECT c.vpc_id, c.address, a.instance_id, c.instance_id "
                    "FROM claimed c JOIN addresses a USING (vpc_id, address) "
                    "WHERE a.instance_id NOT IN (SELECT instance_id FROM given) LIMIT 1"
                ).fetchone()
                if taken:
                    raise AddressTaken(*taken)
                gone = db.execute("SELECT i.instance_id, i.host FROM instances i JOIN given g "
                                  "USING (instance_id) WHERE i.host <> g.host").fetchall()
                db.execute("DELETE FROM addresses WHERE instance_id IN "
                           "(SELECT instance_id FROM given)")
            finally:
                db.execute("DELETE FROM given")
                db.execute("DELETE FROM claimed")
        db.executemany(_UPSERT, [(i, _dump(doc), version, c.host) for i, c, doc in given])
        db.executemany("INSERT INTO addresses VALUES (?, ?, ?)", claims)
        rows = touched([*gone, *((i, c.host) for i, c, _ in given)])
        if defaults is not None:
            rows |= FLEET_ROWS
        if rows:
            self._log(db, version, rows)
        return version

    def delete_instances(self, ids: list[str]) -> int:
        with self._tx() as db:
            version = self._bump(db)
            gone = []
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                gone += db.execute(f"DELETE FROM instances WHERE instance_id IN "
                                   f"({_marks(chunk)}) RETURNING instance_id, host",
                                   chunk).fetchall()
                db.execute(f"DELETE FROM addresses WHERE instance_id IN ({_marks(chunk)})",
                           chunk)
            if gone:
                self._log(db, version, touched(gone))
            return version

    def _current(self, db: sqlite3.Connection, instance_id: str, expect: int | None
                 ) -> tuple[int, str | None]:
        """The instance's revision (0: none) and host, checked against `expect`."""
        row = db.execute("SELECT revision, host FROM instances WHERE instance_id = ?",
                         (instance_id,)).fetchone()
        current = int(row[0]) if row else 0
        if expect is not None and current != expect:
            raise Conflict(instance_id, current)
        return current, row[1] if row else None

    def put_instance(self, doc: dict[str, Any], expect: int | None) -> int:
        instance_id = doc["instance-id"]
        claims = Claims.of(doc)
        with self._tx() as db:
            _, host = self._current(db, instance_id, expect)
            self._claim(db, instance_id, claims)
            version = self._bump(db)
            db.execute(_UPSERT, (instance_id, _dump(doc), version, claims.host))
            moved = [] if host is None else [(instance_id, host)]
            self._log(db, version, touched([*moved, (instance_id, claims.host)]))
            return version

    def _claim(self, db: sqlite3.Connection, instance_id: str, claims: Claims) -> None:
        """Give one instance exactly `claims`' addresses, writing only the difference."""
        held = set(db.execute("SELECT vpc_id, address FROM addresses WHERE instance_id = ?",
                              (instance_id,)))
        wanted = {(claims.vpc_id, a) for a in claims.addresses}
        for vpc_id, address in wanted - held:
            owner = db.execute("SELECT instance_id FROM addresses WHERE vpc_id = ? AND "
                               "address = ?", (vpc_id, address)).fetchone()
            if owner:
                raise AddressTaken(vpc_id, address, owner[0], instance_id)
        db.executemany("DELETE FROM addresses WHERE vpc_id = ? AND address = ?",
                       held - wanted)
        db.executemany("INSERT INTO addresses VALUES (?, ?, ?)",
                       [(v, a, instance_id) for v, a in wanted - held])

    def delete_instance(self, instance_id: str, expect: int | None) -> int:
        with self._tx() as db:
            _, host = self._current(db, instance_id, expect)
            if host is None:
                raise Conflict(instance_id, 0)
            db.execute("DELETE FROM instances WHERE instance_id = ?", (instance_id,))
            db.execute("DELETE FROM addresses WHERE instance_id = ?", (instance_id,))
            version = self._bump(db)
            self._log(db, version, {host: {instance_id}})
            return version

    # -- keys and secrets ------------------------------------------------------------------
    def set_secret(self, name: str, value: bytes) -> int:
        with self._tx() as db:
            version = self._bump(db)
            db.execute("INSERT OR REPLACE INTO secrets VALUES (?, ?, ?)", (name, value, version))
            self._log(db, version)
            return version

    def secret_versions(self) -> dict[str, int]:
        return dict(self._db().execute("SELECT name, version FROM secrets"))

    def token_keys(self) -> list[TokenKey]:
        rows = self._db().execute("SELECT kid, secret, created_at FROM token_keys ORDER BY kid")
        return [TokenKey(kid, bytes(secret), created) for kid, secret, created in rows]

    def first_token_key(self, key: TokenKey) -> list[TokenKey]:
        with self._tx() as db:
            if db.execute("SELECT count(*) FROM token_keys").fetchone()[0] == 0:
                db.execute("INSERT INTO token_keys VALUES (?, ?, ?)",
                           (key.kid, key.secret, key.created_at))
                self._log(db, self._bump(db))
        return self.token_keys()

    def replace_token_keys(self, keys: list[TokenKey]) -> int:
        with self._tx() as db:
            return self._replace_token_keys(db, keys)

    def _replace_token_keys(self, db: sqlite3.Connection, keys: list[TokenKey]) -> int:
        db.execute("DELETE FROM token_keys")
        db.executemany("INSERT INTO token_keys VALUES (?, ?, ?)",
                       [(k.kid, k.secret, k.created_at) for k in keys])
        version = self._bump(db)
        self._log(db, version)
        return version

    def secret(self, name: str, make: Callable[[], bytes]) -> bytes:
        with self._tx() as db:
            row = db.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
            if row:
                return bytes(row[0])
            value = make()
            db.execute("INSERT INTO secrets (name, value) VALUES (?, ?)", (name, value))
            return value

    def secrets_named(self, prefix: str) -> dict[str, bytes]:
        rows = self._db().execute("SELECT name, value FROM secrets "
                                  "WHERE substr(name, 1, ?) = ?", (len(prefix), prefix))
        return {name: bytes(value) for name, value in rows}

    def subscribe(self) -> None:
        """SQLite cannot tell other processes what changed: the change feed polls."""
        return None

    # -- copying a fleet -------------------------------------------------------------------
    def dump(self) -> StoreDump:
        with self._tx("BEGIN") as db:  # one read transaction: a consistent view
            return StoreDump(
                defaults=self.load_defaults(),
                instances=[s.doc for s in self.load_instances()],
                token_keys=self.token_keys(),
                secrets={n: bytes(v) for n, v in db.execute("SELECT name, value FROM secrets")})

    def restore(self, dump: StoreDump) -> int:
        with self._tx() as db:
            db.execute("DELETE FROM secrets")
            db.executemany("INSERT INTO secrets (name, value) VALUES (?, ?)",
                           list(dump.secrets.items()))
            self._replace_token_keys(db, dump.token_keys)
            version = self._write_fleet(db, dump.defaults, dump.instances, replace=True)
            db.execute("UPDATE secrets SET version = ?", (version,))
            db.execute("DELETE FROM changes")
            db.execute("DELETE FROM commits WHERE version < ?", (version,))
            db.execute("UPDATE state SET value = ? WHERE key = 'log-floor'", (version,))
            return version

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

