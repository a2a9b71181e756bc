"""`Store`: the connection, migrations and transactions every part of the store API is built on.

Each public method of the store is one short transaction (see `db.py` for why no connection outlives one). Entity
methods live in the mixins of `prompts.py`, `labels.py` and `runs.py`; this file holds what they share.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import duckdb

from store.db import DEFAULT_LOCK_TIMEOUT, Gate, StoreError, attached

_migrated: set[Path] = set()
_migrated_lock = threading.Lock()


def utcnow() -> datetime:
    """Naive UTC, the only kind of time stored."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_json(value) -> str:
    """JSON with sorted keys and no spacing, so equal values hash equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped in store/migrations, in order."""
    found = []
    for entry in resources.files("store.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version, _, name = entry.name[:-4].partition("_")
            found.append((int(version), name, entry.read_text()))
    return sorted(found)


def latest_version() -> int:
    return migrations()[-1][0]


class BaseStore:
    """Owns the database path and hands out short transactions."""

    def __init__(self, path: str | Path, lock_timeout: float = DEFAULT_LOCK_TIMEOUT, migrate: bool = True):
        self.path = Path(path).expanduser().resolve()
        self.gate = Gate(self.path, lock_timeout)
        if migrate:
            self.migrate()

    @contextmanager
    def transaction(self, purpose: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """One unit of work: gate, attach, BEGIN, yield, COMMIT (ROLLBACK on error), detach."""
        with self.gate.held(purpose):
            with attached(self.path, _deadline(self.gate.lock_timeout), purpose) as con:
                con.execute("BEGIN TRANSACTION")
                try:
                    yield con
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")

    def schema_version(self) -> int:
        with self.transaction("read schema version") as con:
            return _current_version(con)

    def migrate(self, target: int | None = None) -> int:
        """Apply pending migrations up to `target` (default: all), each in its own transaction. Returns the version."""
        if target is None:
            with _migrated_lock:
                if self.path in _migrated:
                    return latest_version()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        version = 0
        for number, name, sql in migrations():
            if target is not None and number > target:
                break
            with self.transaction(f"migration {number}") as con:
                con.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
                )
                version = _current_version(con)
                if number <= version:
                    continue
                con.execute(sql)
                con.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", [number, name, utcnow()])
                version = number
        with self.transaction("check schema version") as con:
            version = _current_version(con)
        if version > latest_version():
            raise StoreError(f"{self.path}: schema version {version} is newer than this code ({latest_version()})")
        if target is None:
            with _migrated_lock:
                _migrated.add(self.path)
        return version


def _current_version(con: duckdb.DuckDBPyConnection) -> int:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_catalog = current_database() AND table_name = 'schema_migrations'"
    ).fetchone()[0]
    if not exists:
        return 0
    return con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]


def _deadline(timeout: float) -> float:
    return time.monotonic() + timeout


def rows_as_dicts(cursor: duckdb.DuckDBPyConnection) -> list[dict]:
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row)) for row in cursor.fetchall()]
