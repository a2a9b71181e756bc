"""Opening the DuckDB file: one short unit of work at a time, shared fairly between processes.

DuckDB lets exactly one process hold a database file, and while it does no other process can open it at all, not
even read-only. The labeling UI, `generate`, `export` and a training run must all use the same file at once, so no
process here keeps the file open beyond one unit of work (a transaction of a few milliseconds to a few hundred):

* A sidecar lock file (`<db>.lock`) is taken with `flock` before DuckDB opens the file, and the holder writes its PID
  and the operation it runs into it, so a waiter that gives up can say who held the database and doing what.
* Waiters line up first on a second lock file (`<db>.queue`): only the one holding it polls `<db>.lock`. A process
  that has just finished a unit of work therefore cannot take the database again ahead of the one already waiting
  (with one polled lock, a writer in a loop re-took it within microseconds and starved the others for seconds).
  Both are polled with short jittered sleeps (a syscall per try, not a failed DuckDB open), the queue at a constant
  pace so a newcomer has no edge over those already waiting.
* DuckDB's own lock error is still retried (a DuckDB CLI or notebook may hold the file without our lock files).
* After `lock_timeout` seconds of waiting the caller gets `StoreBusy` naming the holder.
* The file is ATTACHed to an in-memory DuckDB kept by the process, and DETACHed (which checkpoints it and releases
  DuckDB's lock) at the end of the unit of work: starting a DuckDB instance per unit of work cost ~15 ms, most of a
  short transaction (60 ms and more on a busy machine), attaching costs ~1.5 ms (measurements: bench/store_bench.py).

flock locks belong to an open file description, so two threads of one process (Streamlit sessions) exclude each other
just like two processes do; each thread gets its own cursor of the shared instance.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import duckdb

DEFAULT_LOCK_TIMEOUT = 30.0
_QUEUE_POLL = 0.002  # seconds between tries for a place at the front of the line (constant, jittered)
_HOLDER_POLL = (0.0001, 0.001)  # first and longest sleep of the one waiter at the front (backs off in between)
# Every commit checkpoints straight into the file instead of appending to the WAL: the file is detached (which
# checkpoints) right after the commit anyway, and writing the WAL first cost two more fsyncs per write (4 -> 2; submit
# p50 59 -> 46 ms on a busy 2-core VM). Leaving a WAL for the next process instead is far worse: replaying it on attach
# costs about a millisecond per transaction in it. A checkpoint is atomic (new blocks, then the header), so a commit
# interrupted by SIGKILL or power loss is absent, never half there; tests/test_concurrency.py kills writers to check.
_CONFIG = {"checkpoint_threshold": "0b", "auto_checkpoint_skip_wal_threshold": 0}
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
        self.queue_path = self.db_path.with_name(self.db_path.name + ".queue")
        self.lock_timeout = lock_timeout

    @contextmanager
    def held(self, purpose: str) -> Iterator[float]:
        """Hold the gate for one unit of work; yields the seconds spent waiting for it."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        deadline = start + self.lock_timeout
        with ExitStack() as fds:
            queue_fd, lock_fd = (_open_lock_file(path, fds) for path in (self.queue_path, self.lock_path))
            self._take(queue_fd, deadline, purpose, _QUEUE_POLL, _QUEUE_POLL)
            try:
                self._take(lock_fd, deadline, purpose, *_HOLDER_POLL)
            finally:
                fcntl.flock(queue_fd, fcntl.LOCK_UN)
            waited = time.monotonic() - start
            os.ftruncate(lock_fd, 0)
            os.pwrite(lock_fd, f"pid {os.getpid()} ({purpose})".encode(), 0)
            try:
                yield waited
            finally:
                os.ftruncate(lock_fd, 0)
                fcntl.flock(lock_fd, fcntl.LOCK_UN)

    def _take(self, fd: int, deadline: float, purpose: str, first_sleep: float, longest_sleep: float) -> None:
        sleep = first_sleep
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreBusy(
                        f"{self.db_path}: still locked after {self.lock_timeout:.1f} s by "
                        f"{_read_holder(self.lock_path)}; wanted it for {purpose}. Retry, or stop that process."
                    ) from None
                time.sleep(sleep * (0.5 + random.random()))
                sleep = min(sleep * 2, longest_sleep)


def _open_lock_file(path: Path, fds: ExitStack) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fds.callback(os.close, fd)
    return fd


class _ProcessDuckDB:
    """This process's in-memory DuckDB, to which database files are attached for one unit of work each.

    Each attach leaves about half a kilobyte behind in the instance, so after `RECYCLE_AFTER` attaches it is replaced
    at a moment no thread uses it.
    """

    RECYCLE_AFTER = 2000

    def __init__(self):
        self.mutex = threading.Lock()
        self.instance, self.attaches, self.users = None, 0, 0
        self.inherited = []  # a parent's instances, kept referenced: destroying them in a forked child is unsafe

    def cursor(self) -> duckdb.DuckDBPyConnection:
        with self.mutex:
            if self.instance is not None and self.attaches >= self.RECYCLE_AFTER and self.users == 0:
                self.instance.close()
                self.instance = None
            if self.instance is None:
                self.instance, self.attaches = duckdb.connect(":memory:", config=_CONFIG), 0
            self.attaches += 1
            self.users += 1
            return self.instance.cursor()

    def release(self, cursor: duckdb.DuckDBPyConnection) -> None:
        with self.mutex:
            cursor.close()
            self.users -= 1

    def discard(self) -> None:
        """Close the instance and every file attached to it (used when a file could not be detached)."""
        with self.mutex:
            if self.instance is not None:
                self.instance.close()
                self.instance = None

    def after_fork_in_child(self) -> None:
        """A forked child starts its own instance (the parent's threads, locks and files are not its to use)."""
        self.mutex = threading.Lock()
        self.inherited.append(self.instance)
        self.instance, self.attaches, self.users = None, 0, 0


_process_duckdb = _ProcessDuckDB()
os.register_at_fork(after_in_child=_process_duckdb.after_fork_in_child)
_aliases = itertools.count()


@contextmanager
def attached(db_path: Path, deadline: float, purpose: str) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection whose default database is the file, from ATTACH to DETACH.

    DuckDB's own lock error (a process outside our gate) is retried until `deadline`, then raised as StoreBusy.
    """
    con = _process_duckdb.cursor()
    alias = f"store_{next(_aliases)}"
    try:
        _attach(con, db_path, alias, deadline, purpose)
        try:
            con.execute(f"USE {alias}")
            yield con
        finally:
            try:
                con.execute("USE memory")
                con.execute(f"DETACH {alias}")
            except duckdb.Error:
                # The file must not stay attached: this process would keep DuckDB's lock on it after leaving the gate.
                _process_duckdb.discard()
                raise
    finally:
        _process_duckdb.release(con)


def _attach(con: duckdb.DuckDBPyConnection, db_path: Path, alias: str, deadline: float, purpose: str) -> None:
    delay = 0.005
    while True:
        try:
            con.execute(f"ATTACH ? AS {alias}", [str(db_path)])
            return
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
