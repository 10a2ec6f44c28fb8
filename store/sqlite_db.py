"""SQLite connections and transactions for the embedded store: the schema, one connection per
thread for reads, one writer per process, and transactions that either commit or leave nothing.

Safe for several processes (gunicorn workers and the scheduler) on one file, in WAL mode. An
in-memory database (`SqliteDB.in_memory()`) keeps everything in one process, behind one shared
connection, for tests and throwaway runs.
"""
from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from jobs.model import JobStatus
from store import storable

BUSY_TIMEOUT_S = 5.0          # one try at a write; longer waits are the caller's retries (store/retrying.py)
_W = f"'{JobStatus.PENDING.value}', '{JobStatus.QUEUED.value}'"    # the waiting statuses, for SQL

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    priority TEXT NOT NULL,
    rank INTEGER NOT NULL,
    submitted_at REAL NOT NULL,
    completed_at REAL,
    run_id TEXT,
    doc TEXT NOT NULL,
    held_epoch INTEGER,         -- a queued job: the scheduler term holding it in its queue
    tenant TEXT NOT NULL DEFAULT ''
);
-- waiting jobs in queue order (position, take_new), running runs, and counts by status
CREATE INDEX IF NOT EXISTS jobs_status_order ON jobs(status, rank DESC, submitted_at);
-- /api/jobs?model=&status=
CREATE INDEX IF NOT EXISTS jobs_model_status ON jobs(model, status, submitted_at);
-- /api/jobs newest first, page after page
CREATE INDEX IF NOT EXISTS jobs_submitted_id ON jobs(submitted_at, job_id);
-- retention cleanup
CREATE INDEX IF NOT EXISTS jobs_completed ON jobs(completed_at) WHERE completed_at IS NOT NULL;
-- Waiting jobs per priority rank, kept by triggers, so that the queue-full check and a new
-- job's position cost O(1) however long the queue is.
CREATE TABLE IF NOT EXISTS waiting_counts (rank INTEGER PRIMARY KEY, n INTEGER NOT NULL);
INSERT OR IGNORE INTO waiting_counts (rank, n) VALUES (0, 0), (1, 0), (2, 0);
CREATE TRIGGER IF NOT EXISTS waiting_insert AFTER INSERT ON jobs
WHEN NEW.status IN ({_W}) BEGIN
    UPDATE waiting_counts SET n = n + 1 WHERE rank = NEW.rank;
END;
CREATE TRIGGER IF NOT EXISTS waiting_update AFTER UPDATE OF status ON jobs
WHEN (OLD.status IN ({_W})) != (NEW.status IN ({_W})) BEGIN
    UPDATE waiting_counts SET n = n + (CASE WHEN NEW.status IN ({_W}) THEN 1 ELSE -1 END)
    WHERE rank = NEW.rank;
END;
CREATE TRIGGER IF NOT EXISTS waiting_delete AFTER DELETE ON jobs
WHEN OLD.status IN ({_W}) BEGIN
    UPDATE waiting_counts SET n = n - 1 WHERE rank = OLD.rank;
END;
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY, job_id TEXT NOT NULL, fingerprint TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency(expires_at);
CREATE TABLE IF NOT EXISTS job_metrics (
    run_key TEXT PRIMARY KEY,   -- job_id:run_id, so that a run is recorded once
    job_id TEXT NOT NULL,
    model TEXT NOT NULL,
    finished_at REAL NOT NULL,
    doc TEXT NOT NULL,
    tenant TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS job_metrics_model ON job_metrics(model, finished_at, run_key);
CREATE INDEX IF NOT EXISTS job_metrics_finished_key ON job_metrics(finished_at, run_key);
CREATE INDEX IF NOT EXISTS job_metrics_job ON job_metrics(job_id);
CREATE TABLE IF NOT EXISTS tasks (task_id TEXT PRIMARY KEY, suite TEXT, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS tasks_suite ON tasks(suite, task_id);
CREATE TABLE IF NOT EXISTS experiment_results (
    id INTEGER PRIMARY KEY AUTOINCREMENT, experiment TEXT, task_id TEXT, recorded_at REAL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS results_experiment ON experiment_results(experiment, id);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL, epoch INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS retired_epochs (
    name TEXT NOT NULL, epoch INTEGER NOT NULL, retired_at REAL NOT NULL, PRIMARY KEY (name, epoch));
CREATE TABLE IF NOT EXISTS model_footprints (
    model TEXT PRIMARY KEY, size_bytes INTEGER NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, created_at REAL NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rate_limits (key_id TEXT PRIMARY KEY, tat REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS result_cache (key TEXT PRIMARY KEY, expires_at REAL NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS result_cache_expiry ON result_cache(expires_at);
CREATE TABLE IF NOT EXISTS answer_pieces (
    job_id TEXT NOT NULL, run_id TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (job_id, run_id, seq));
CREATE INDEX IF NOT EXISTS answer_pieces_at ON answer_pieces(at);
"""

# What needs the columns added to files made by earlier versions (run after _ADDED_COLUMNS).
SCHEMA_TENANTS = f"""
CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs(tenant, submitted_at, job_id);
CREATE INDEX IF NOT EXISTS job_metrics_tenant ON job_metrics(tenant, finished_at, run_key);
-- Waiting jobs per tenant, kept by triggers: a tenant's quota and its fair share of the queue.
CREATE TABLE IF NOT EXISTS tenant_waiting (tenant TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS tenant_waiting_insert AFTER INSERT ON jobs
WHEN NEW.status IN ({_W}) BEGIN
    INSERT INTO tenant_waiting (tenant, n) VALUES (NEW.tenant, 1) ON CONFLICT(tenant) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS tenant_waiting_update AFTER UPDATE OF status ON jobs
WHEN (OLD.status IN ({_W})) != (NEW.status IN ({_W})) BEGIN
    INSERT INTO tenant_waiting (tenant, n) VALUES (NEW.tenant, CASE WHEN NEW.status IN ({_W}) THEN 1 ELSE 0 END)
    ON CONFLICT(tenant) DO UPDATE SET n = n + (CASE WHEN NEW.status IN ({_W}) THEN 1 ELSE -1 END);
END;
CREATE TRIGGER IF NOT EXISTS tenant_waiting_delete AFTER DELETE ON jobs
WHEN OLD.status IN ({_W}) BEGIN
    UPDATE tenant_waiting SET n = n - 1 WHERE tenant = OLD.tenant;
END;
"""

# Files made by earlier versions: (table, column, definition) added where missing.
_ADDED_COLUMNS = (("leases", "epoch", "INTEGER NOT NULL DEFAULT 0"), ("jobs", "held_epoch", "INTEGER"),
                  ("jobs", "tenant", "TEXT NOT NULL DEFAULT ''"), ("job_metrics", "tenant", "TEXT NOT NULL DEFAULT ''"))


_WAITING_STATUSES = (JobStatus.PENDING.value, JobStatus.QUEUED.value)
_READABLE_SINCE = 1     # PRAGMA user_version from which every document is known to be readable
# every table with a JSON document per row, and its column
_DOCUMENTS = (("jobs", "doc"), ("job_metrics", "doc"), ("tasks", "doc"), ("experiment_results", "doc"),
              ("state", "value"), ("result_cache", "doc"), ("api_keys", "doc"))


def _repair_documents(conn: sqlite3.Connection) -> int:
    """Rewrite the documents SQLite cannot read (NaN or Infinity, written before the store
    refused them): one such row would fail every claim and listing that reads it. A job among
    them that still waits fails with the reason rather than run with a request it never sent."""
    repaired = 0
    for table, column in _DOCUMENTS:
        key = "status, " if table == "jobs" else ""
        for row in conn.execute(f"SELECT rowid, {key}{column} FROM {table} WHERE NOT json_valid({column})").fetchall():
            try:
                doc = storable.finite(json.loads(row[column]))
            except (ValueError, RecursionError):
                doc = None
            if table == "api_keys" and not isinstance(doc, dict):
                # a key whose record cannot be read authenticates no one: gone, rather than a 500 per request
                conn.execute("DELETE FROM api_keys WHERE rowid = ?", (row["rowid"],))
                repaired += 1
                continue
            if table == "jobs" and row["status"] in _WAITING_STATUSES:
                doc = {**(doc if isinstance(doc, dict) else {}), "completed_at": time.time(),
                       "error": "its stored request held a number no JSON reader accepts (NaN or Infinity)"}
                conn.execute("UPDATE jobs SET status = ?, completed_at = ? WHERE rowid = ?",
                             (JobStatus.FAILED.value, doc["completed_at"], row["rowid"]))
            conn.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?",
                         (storable.dumps(doc if doc is not None else {}), row["rowid"]))
            repaired += 1
    return repaired


class SqliteDB:
    def __init__(self, path: str | Path, *, memory_uri: str | None = None):
        self._target = memory_uri or str(path)
        self.memory = memory_uri is not None
        if not self.memory:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []   # one per thread
        self._pid = os.getpid()
        self._shared: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self.on_fork: list = []                  # callbacks resetting per-process state of users
        with self.read() as conn:
            conn.executescript(SCHEMA)
            for table, column, definition in _ADDED_COLUMNS:
                if column not in {r["name"] for r in conn.execute(f"PRAGMA table_info({table})")}:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
            conn.executescript(SCHEMA_TENANTS)
        with self.write() as conn:      # once per file: what the store writes now is always readable
            if conn.execute("PRAGMA user_version").fetchone()[0] < _READABLE_SINCE:
                _repair_documents(conn)
                conn.execute(f"PRAGMA user_version = {_READABLE_SINCE}")
        with self.write() as conn:      # true up the counts (a file from before the triggers)
            conn.execute("UPDATE waiting_counts SET n = (SELECT COUNT(*) FROM jobs WHERE jobs.rank = "
                         f"waiting_counts.rank AND status IN ({_W}))")
            conn.execute("DELETE FROM tenant_waiting")
            conn.execute(f"INSERT INTO tenant_waiting (tenant, n) SELECT tenant, COUNT(*) FROM jobs WHERE status IN ({_W}) "
                         "GROUP BY tenant")

    def repair(self) -> int:
        """Rewrite the documents SQLite cannot read (see _repair_documents); how many."""
        with self.write() as conn:
            return _repair_documents(conn)

    @classmethod
    def in_memory(cls) -> SqliteDB:
        return cls("", memory_uri=f"file:mm-{id(object())}-{os.getpid()}?mode=memory&cache=shared")

    def _open(self, busy_timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
        conn = sqlite3.connect(self._target, timeout=busy_timeout_s, isolation_level=None,
                               check_same_thread=False, uri=self.memory)
        conn.row_factory = sqlite3.Row
        if not self.memory:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        return conn

    def _open_reader(self) -> sqlite3.Connection:
        """This thread's read connection. Threads come and go (each scheduler term, each job
        thread pool), so the connections of threads that ended are closed here: each holds up to
        SQLite's page cache (2 MB), which would otherwise pile up with every leadership change."""
        conn = self._open()
        with self._lock:
            alive = []
            for thread, reader in self._readers:
                owner = thread()
                if owner is not None and owner.is_alive():
                    alive.append((thread, reader))
                else:
                    _close(reader)
            alive.append((weakref.ref(threading.current_thread()), conn))
            self._readers = alive
        return conn

    def _after_fork(self) -> None:
        """Forked (gunicorn): never use a connection, lock or queue across processes."""
        if os.getpid() != self._pid:
            self._pid, self._readers, self._shared, self._writer = os.getpid(), [], None, None
            self._local = threading.local()
            self._write_lock = threading.Lock()
            for reset in self.on_fork:
                reset()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        self._after_fork()
        if self.memory:
            with self._lock:
                if self._shared is None:
                    self._shared = self._open()
                yield self._shared
            return
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._open_reader()
        yield conn

    @contextmanager
    def write(self, timeout_s: float = BUSY_TIMEOUT_S) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises or if the
        commit itself fails (so the connection is never left inside a transaction). One writer
        per process at a time (a Python lock, one connection); between processes SQLite's write
        lock is retried here every 0.1-2 ms for up to `timeout_s`, not in SQLite's busy handler,
        whose sleeps (1, 2, 5, ... 100 ms) leave the lock idle long after it is free."""
        self._after_fork()
        if not self._write_lock.acquire(timeout=timeout_s):
            raise sqlite3.OperationalError("database is locked (another write in this process took too long)")
        try:
            if self.memory:
                with self.read() as conn:
                    conn.execute("BEGIN IMMEDIATE")
                    yield from _transaction(conn)
                return
            if self._writer is None:
                self._writer = self._open(busy_timeout_s=0)
            _begin_immediate(self._writer, timeout_s)
            yield from _transaction(self._writer)
        finally:
            self._write_lock.release()

    def close(self) -> None:
        with self._lock:
            for conn in [c for _, c in self._readers] + [self._shared, self._writer]:
                if conn is not None:
                    _close(conn)
            self._readers = []
            self._shared = self._writer = None
            self._local = threading.local()


def _close(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except sqlite3.Error:
        pass


def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    try:
        yield conn
    except BaseException:
        _rollback(conn)
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass                                  # no transaction left to roll back


def _begin_immediate(conn: sqlite3.Connection, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pause = 0.0001
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
            time.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 1.5, 0.002)
