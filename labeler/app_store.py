"""The app's one Store: every session, page and route of this server process shares it (a Store holds no connection;
the store's gate serialises the work). Its database is $PREFLOOP_DB, else data/prefloop.duckdb."""

from __future__ import annotations

import threading

from store import Store, default_db_path, open_store

_stores: dict[str, Store] = {}
_lock = threading.Lock()


def get_store() -> Store:
    path = str(default_db_path())
    with _lock:
        if path not in _stores:
            _stores[path] = open_store(path)
        return _stores[path]
