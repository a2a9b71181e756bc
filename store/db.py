"""Opening the DuckDB file: one short unit of work at a time, shared fairly between processes.

DuckDB lets exactly one process hold a database file, and while it does no other process can open it at all, not
even read-only. The labeling UI, `generate`, `export` and a training run must all use the same file at once, so no
process here keeps the file open beyond one unit of work (a transaction of a few milliseconds to a few hundred):

* A sidecar lock file (`<db>.lock`) is taken with `flock` before DuckDB opens the file. Waiters poll it with a short
  jittered backoff, which costs a syscall per try instead of a failed DuckDB open, and the holder writes its PID and
  the operation it runs into the lock file so a waiter that gives up can say who held the database and doing what.
* DuckDB's own lock error is still retried (a DuckDB CLI or notebook may hold the file without our lock file).
* After `lock_timeout` seconds of waiting the caller gets `StoreBusy` naming the holder.

flock locks belong to an open file description, so two threads of one process (Streamlit sessions) exclude each other
just like two processes do.
"""

from __future__ import annotations

import fcntl
import os
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

DEFAULT_LOCK_TIMEOUT = 30.0
_DUCKDB_LOCK_ERROR = re.compile(r"Could not set lock on file|Conflicting lock is held")


class StoreError(Exception):
    """Base class for store errors that carry a message meant for a person."""


class StoreBusy(StoreError):
    """The database stayed locked by another process for longer than the caller was willing to wait."""


def _read_holder(lock_path: Path) -> str:
    try:
        text = lock_path.read_text().strip()
    except OSError:
        return "unknown holder"
    return text or "unknown holder"


class Gate:
    """Cross-process mutual exclusion for one database file (see the module docstring)."""

    def __init__(self, db_path: Path, lock_timeout: float = DEFAULT_LOCK_TIMEOUT):
        self.db_path = Path(db_path)
        self.lock_path = self.db_path.with_name(self.db_path.name + ".lock")
        self.lock_timeout = lock_timeout

    @contextmanager
    def held(self, purpose: str) -> Iterator[float]:
        """Hold the gate for one unit of work; yields the seconds spent waiting for it."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        start = time.monotonic()
        delay = 0.0005
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    waited = time.monotonic() - start
                    if waited >= self.lock_timeout:
                        raise StoreBusy(
                            f"{self.db_path}: still locked after {waited:.1f} s by {_read_holder(self.lock_path)}; "
                            f"wanted it for {purpose}. Retry, or stop that process."
                        ) from None
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.02)
            waited = time.monotonic() - start
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} ({purpose})".encode(), 0)
            try:
                yield waited
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def open_duckdb(db_path: Path, deadline: float, purpose: str, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the file, retrying DuckDB's own lock error (a process outside our gate) until `deadline`."""
    delay = 0.005
    while True:
        try:
            return duckdb.connect(str(db_path), read_only=read_only)
        except duckdb.IOException as exc:
            if not _DUCKDB_LOCK_ERROR.search(str(exc)):
                raise
            if time.monotonic() >= deadline:
                holder = re.search(r"held in (.*?)(?:\. See|$)", str(exc))
                raise StoreBusy(
                    f"{db_path}: DuckDB reports the file is held by {holder.group(1) if holder else 'another process'}"
                    f"; wanted it for {purpose}."
                ) from exc
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.1)
