"""The embedded store: one SQLite file, safe for one writer and many readers at once."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ecs_imds.errors import Conflict
from ecs_imds.protocol.tokens import TokenKey
from ecs_imds.store.base import StoredInstance, StoreDump

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


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


class SQLiteStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        with self._tx() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def _db(self) -> sqlite3.Connection:
        """One connection per thread: the change feed polls from its own thread."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _bump(self, db: sqlite3.Connection) -> int:
        db.execute("UPDATE state SET value = value + 1 WHERE key = 'version'")
        return int(db.execute("SELECT value FROM state WHERE key = 'version'").fetchone()[0])

    def version(self) -> int:
        row = self._db().execute("SELECT value FROM state WHERE key = 'version'").fetchone()
        return int(row[0])

    def load_defaults(self) -> dict[str, Any]:
        row = self._db().execute("SELECT doc FROM defaults WHERE id = 1").fetchone()
        return json.loads(row[0]) if row else {}

    def revisions(self) -> dict[str, int]:
        return dict(self._db().execute("SELECT instance_id, revision FROM instances"))

    def load_instances(self, ids: list[str] | None = None) -> list[StoredInstance]:
        db = self._db()
        if ids is None:
            rows = db.execute("SELECT instance_id, doc, revision FROM instances "
                              "ORDER BY rowid").fetchall()
        else:
            rows = []
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                rows += db.execute("SELECT instance_id, doc, revision FROM instances "
                                   f"WHERE instance_id IN ({marks})", chunk).fetchall()
        return [StoredInstance(i, json.loads(d), r) for i, d, r in rows]

    def write_fleet(self, defaults: dict[str, Any] | None, instances: list[dict[str, Any]],
                    replace: bool = False) -> int:
        with self._tx() as db:
            return self._write_fleet(db, defaults, instances, replace)

    def _write_fleet(self, db: sqlite3.Connection, defaults: dict[str, Any] | None,
                     instances: list[dict[str, Any]], replace: bool) -> int:
        version = self._bump(db)
        if defaults is not None:
            db.execute("INSERT OR REPLACE INTO defaults VALUES (1, ?)", (_dump(defaults),))
        if replace:
            db.execute("DELETE FROM instances")
        db.executemany(
            "INSERT INTO instances VALUES (?, ?, ?) ON CONFLICT (instance_id) DO UPDATE "
            "SET doc = excluded.doc, revision = excluded.revision",
            [(doc["instance-id"], _dump(doc), version) for doc in instances])
        return version

    def delete_instances(self, ids: list[str]) -> int:
        with self._tx() as db:
            db.executemany("DELETE FROM instances WHERE instance_id = ?", [(i,) for i in ids])
            return self._bump(db)

    def _check(self, db: sqlite3.Connection, instance_id: str, expect: int | None) -> None:
        row = db.execute("SELECT revision FROM instances WHERE instance_id = ?",
                         (instance_id,)).fetchone()
        current = int(row[0]) if row else 0
        if expect is not None and current != expect:
            raise Conflict(instance_id, current)

    def put_instance(self, doc: dict[str, Any], expect: int | None) -> int:
        with self._tx() as db:
            self._check(db, doc["instance-id"], expect)
            version = self._bump(db)
            db.execute("INSERT INTO instances VALUES (?, ?, ?) ON CONFLICT (instance_id) "
                       "DO UPDATE SET doc = excluded.doc, revision = excluded.revision",
                       (doc["instance-id"], _dump(doc), version))
            return version

    def delete_instance(self, instance_id: str, expect: int | None) -> int:
        with self._tx() as db:
            self._check(db, instance_id, expect)
            if db.execute("DELETE FROM instances WHERE instance_id = ?",
                          (instance_id,)).rowcount == 0:
                raise Conflict(instance_id, 0)
            return self._bump(db)

    def set_secret(self, name: str, value: bytes) -> int:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO secrets VALUES (?, ?)", (name, value))
            return self._bump(db)

    def token_keys(self) -> list[TokenKey]:
        rows = self._db().execute("SELECT kid, secret, created_at FROM token_keys ORDER BY kid")
        return [TokenKey(kid, bytes(secret), created) for kid, secret, created in rows]

    def first_token_key(self, key: TokenKey) -> list[TokenKey]:
        with self._tx() as db:
            if db.execute("SELECT count(*) FROM token_keys").fetchone()[0] == 0:
                db.execute("INSERT INTO token_keys VALUES (?, ?, ?)",
                           (key.kid, key.secret, key.created_at))
                self._bump(db)
        return self.token_keys()

    def replace_token_keys(self, keys: list[TokenKey]) -> int:
        with self._tx() as db:
            return self._replace_token_keys(db, keys)

    def _replace_token_keys(self, db: sqlite3.Connection, keys: list[TokenKey]) -> int:
        db.execute("DELETE FROM token_keys")
        db.executemany("INSERT INTO token_keys VALUES (?, ?, ?)",
                       [(k.kid, k.secret, k.created_at) for k in keys])
        return self._bump(db)

    def secret(self, name: str, make: Callable[[], bytes]) -> bytes:
        with self._tx() as db:
            row = db.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
            if row:
                return bytes(row[0])
            value = make()
            db.execute("INSERT INTO secrets VALUES (?, ?)", (name, value))
            return value

    def subscribe(self) -> None:
        """SQLite cannot tell other processes what changed: the change feed polls."""
        return None

    def dump(self) -> StoreDump:
        db = self._db()
        db.execute("BEGIN")  # one read transaction: a consistent view
        try:
            dump = StoreDump(
                defaults=self.load_defaults(),
                instances=[s.doc for s in self.load_instances()],
                token_keys=self.token_keys(),
                secrets={n: bytes(v) for n, v in db.execute("SELECT name, value FROM secrets")})
        finally:
            db.execute("COMMIT")
        return dump

    def restore(self, dump: StoreDump) -> int:
        with self._tx() as db:
            db.execute("DELETE FROM secrets")
            db.executemany("INSERT INTO secrets VALUES (?, ?)", list(dump.secrets.items()))
            self._replace_token_keys(db, dump.token_keys)
            return self._write_fleet(db, dump.defaults, dump.instances, replace=True)

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
