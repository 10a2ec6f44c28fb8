"""The embedded job store: SQLite from the standard library, in WAL mode.

Safe for several processes (gunicorn workers and the scheduler) on one file: each thread of each
process has its own connection, and every transition is one conditional UPDATE, so SQLite's
own locking makes it atomic. `SqliteStore.in_memory()` keeps everything in one process's memory
(one shared connection behind a lock), for tests and throwaway runs.

Indexed columns hold what queries filter and sort on; the rest of a job lives in a JSON `doc`
column, patched with SQLite's `json_patch`.
"""
from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs import FINISHED, WAITING, JobDoc
from store.base import CancelOutcome, JobStore, QueueCounts, QueueFull

_COLUMNS = ("job_id", "status", "model", "priority", "rank", "submitted_at", "completed_at", "run_id")
_SUMMARY_DROP = ("$.prompt", "$.messages", "$.input", "$.images", "$.result", "$.system")
BUSY_TIMEOUT_S = 30.0
_WAITING = tuple(s.value for s in WAITING)
_FINISHED = tuple(s.value for s in FINISHED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    priority TEXT NOT NULL,
    rank INTEGER NOT NULL,
    submitted_at REAL NOT NULL,
    completed_at REAL,
    run_id TEXT,
    doc TEXT NOT NULL
);
-- waiting jobs in queue order (position, take_new), and counts by status
CREATE INDEX IF NOT EXISTS jobs_status_order ON jobs(status, rank DESC, submitted_at);
-- /api/jobs?model=&status=
CREATE INDEX IF NOT EXISTS jobs_model_status ON jobs(model, status, submitted_at);
-- /api/jobs newest first
CREATE INDEX IF NOT EXISTS jobs_submitted ON jobs(submitted_at);
-- retention cleanup
CREATE INDEX IF NOT EXISTS jobs_completed ON jobs(completed_at) WHERE completed_at IS NOT NULL;
-- Waiting jobs per priority rank, kept by triggers, so that the queue-full check and a new
-- job's position cost O(1) however long the queue is.
CREATE TABLE IF NOT EXISTS waiting_counts (rank INTEGER PRIMARY KEY, n INTEGER NOT NULL);
INSERT OR IGNORE INTO waiting_counts (rank, n) VALUES (0, 0), (1, 0), (2, 0);
CREATE TRIGGER IF NOT EXISTS waiting_insert AFTER INSERT ON jobs
WHEN NEW.status IN ('pending', 'queued') BEGIN
    UPDATE waiting_counts SET n = n + 1 WHERE rank = NEW.rank;
END;
CREATE TRIGGER IF NOT EXISTS waiting_update AFTER UPDATE OF status ON jobs
WHEN (OLD.status IN ('pending', 'queued')) != (NEW.status IN ('pending', 'queued')) BEGIN
    UPDATE waiting_counts SET n = n + (CASE WHEN NEW.status IN ('pending', 'queued') THEN 1 ELSE -1 END)
    WHERE rank = NEW.rank;
END;
CREATE TRIGGER IF NOT EXISTS waiting_delete AFTER DELETE ON jobs
WHEN OLD.status IN ('pending', 'queued') BEGIN
    UPDATE waiting_counts SET n = n - 1 WHERE rank = OLD.rank;
END;
CREATE TABLE IF NOT EXISTS job_metrics (
    run_key TEXT PRIMARY KEY,   -- job_id:run_id, so that a run is recorded once
    job_id TEXT NOT NULL,
    model TEXT NOT NULL,
    finished_at REAL NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_metrics_model ON job_metrics(model, finished_at);
CREATE INDEX IF NOT EXISTS job_metrics_finished ON job_metrics(finished_at);
CREATE INDEX IF NOT EXISTS job_metrics_job ON job_metrics(job_id);
CREATE TABLE IF NOT EXISTS tasks (task_id TEXT PRIMARY KEY, suite TEXT, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS tasks_suite ON tasks(suite, task_id);
CREATE TABLE IF NOT EXISTS experiment_results (
    id INTEGER PRIMARY KEY AUTOINCREMENT, experiment TEXT, task_id TEXT, recorded_at REAL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS results_experiment ON experiment_results(experiment, id);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS model_footprints (
    model TEXT PRIMARY KEY, size_bytes INTEGER NOT NULL, updated_at REAL NOT NULL);
"""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _split(job: JobDoc) -> tuple[dict[str, Any], dict[str, Any]]:
    columns = {k: job.get(k) for k in _COLUMNS}
    doc = {k: v for k, v in job.items() if k not in _COLUMNS}
    return columns, doc


@dataclass
class _Pending:
    job: JobDoc
    max_waiting: int | None
    result: Any = None
    done: threading.Event = field(default_factory=threading.Event)


class SqliteStore(JobStore):
    def __init__(self, path: str | Path, *, _memory_uri: str | None = None):
        self._target = _memory_uri or str(path)
        self._memory = _memory_uri is not None
        if not self._memory:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._enqueue_lock = threading.Lock()
        self._enqueue_queue: list[_Pending] = []
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._shared: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        with self._conn() as conn:
            conn.executescript(_SCHEMA)
        with self._write() as conn:      # true up the counts (a file from before the triggers)
            conn.execute("UPDATE waiting_counts SET n = (SELECT COUNT(*) FROM jobs WHERE jobs.rank = "
                         "waiting_counts.rank AND status IN ('pending', 'queued'))")

    @classmethod
    def in_memory(cls) -> SqliteStore:
        return cls("", _memory_uri=f"file:mm-{id(object())}-{os.getpid()}?mode=memory&cache=shared")

    # --- connections ---------------------------------------------------------------------------
    def _open(self, busy_timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
        conn = sqlite3.connect(self._target, timeout=busy_timeout_s, isolation_level=None,
                               check_same_thread=False, uri=self._memory)
        conn.row_factory = sqlite3.Row
        if not self._memory:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        self._connections.append(conn)
        return conn

    def _after_fork(self) -> None:
        """Forked (gunicorn): never use a connection, lock or queue across processes."""
        if os.getpid() != self._pid:
            self._pid, self._connections, self._shared, self._writer = os.getpid(), [], None, None
            self._local = threading.local()
            self._write_lock, self._enqueue_lock, self._enqueue_queue = threading.Lock(), threading.Lock(), []

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        self._after_fork()
        if self._memory:
            with self._lock:
                if self._shared is None:
                    self._shared = self._open()
                yield self._shared
            return
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with self._lock:
                conn = self._local.conn = self._open()
        yield conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction. One writer per process at a time (a Python lock, one connection);
        between processes SQLite's write lock is retried here every 0.1-2 ms, not in SQLite's
        busy handler, whose sleeps (1, 2, 5, ... 100 ms) leave the lock idle long after it is free."""
        self._after_fork()
        with self._write_lock:
            if self._memory:
                with self._conn() as conn:
                    conn.execute("BEGIN IMMEDIATE")
                    yield from self._commit(conn)
                return
            if self._writer is None:
                self._writer = self._open(busy_timeout_s=0)
            self._begin_immediate(self._writer)
            yield from self._commit(self._writer)

    @staticmethod
    def _commit(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def _begin_immediate(conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + BUSY_TIMEOUT_S
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

    @staticmethod
    def _row_to_job(row: sqlite3.Row) -> JobDoc:
        job = json.loads(row["doc"])
        for key in _COLUMNS:
            if key in row.keys():
                job[key] = row[key]
        return job

    # --- jobs: submission and reading ----------------------------------------------------------
    def enqueue(self, job: JobDoc, max_waiting: int | None = None) -> int:
        """Jobs submitted at the same moment by several threads go in together, in one
        transaction (group commit): under load the per-job cost of SQLite's write lock and commit
        is shared, and alone a job waits for nobody."""
        entry = _Pending(job, max_waiting)
        with self._enqueue_lock:
            self._enqueue_queue.append(entry)
            leader = len(self._enqueue_queue) == 1
        if leader:
            try:
                self._write_batch()
            except BaseException:
                pass                     # every entry of the batch, this one too, carries the error
        entry.done.wait()
        if isinstance(entry.result, BaseException):
            raise entry.result
        return entry.result

    def _write_batch(self) -> None:
        # The first caller of a batch writes it, taking with it every job queued meanwhile
        # (they queued while it waited for the write lock). Whatever happens, every job of the
        # batch gets an answer.
        batch: list[_Pending] = []
        try:
            self._insert_batch(batch)
        except BaseException as exc:
            with self._enqueue_lock:
                if not batch:
                    batch, self._enqueue_queue = self._enqueue_queue, []
            for entry in batch:
                if entry.result is None:
                    entry.result = exc
            raise
        finally:
            for entry in batch:
                entry.done.set()

    def _insert_batch(self, batch: list[_Pending]) -> None:
        with self._write() as conn:
            with self._enqueue_lock:
                batch.extend(self._enqueue_queue)
                self._enqueue_queue = []
            counts = dict(conn.execute("SELECT rank, n FROM waiting_counts").fetchall())
            for entry in batch:
                columns, doc = _split(entry.job)
                waiting = sum(counts.values())
                if entry.max_waiting is not None and waiting >= entry.max_waiting:
                    entry.result = QueueFull(waiting)
                    continue
                # A new job is the latest of its priority: everything waiting at its rank or above is ahead.
                entry.result = sum(n for rank, n in counts.items() if rank >= columns["rank"])
                try:
                    conn.execute(
                        "INSERT INTO jobs (job_id, status, model, priority, rank, submitted_at, completed_at,"
                        " run_id, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (*(columns[k] for k in _COLUMNS), _dumps(doc)))
                except sqlite3.IntegrityError as exc:
                    entry.result = exc
                    continue
                if columns["status"] in _WAITING:
                    counts[columns["rank"]] = counts.get(columns["rank"], 0) + 1

    def get(self, job_id: str) -> JobDoc | None:
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return self._row_to_job(row) if row else None

    def list_jobs(self, status: str | None = None, model: str | None = None,
                  limit: int = 100) -> list[JobDoc]:
        where, args = [], []
        if status:
            where.append("status = ?")
            args.append(status)
        if model:
            where.append("model = ?")
            args.append(model)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        drop = ", ".join(f"'{p}'" for p in _SUMMARY_DROP)
        sql = (f"SELECT {', '.join(_COLUMNS)}, json_remove(doc, {drop}) AS doc FROM jobs {clause} "
               "ORDER BY submitted_at DESC LIMIT ?")
        with self._conn() as conn:
            rows = conn.execute(sql, (*args, limit)).fetchall()
        return [self._row_to_job(r) for r in rows]

    def counts(self) -> QueueCounts:
        with self._conn() as conn:
            by_status = dict(conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
            by_priority = dict(conn.execute(
                "SELECT priority, COUNT(*) FROM jobs WHERE status IN (?, ?) GROUP BY priority",
                _WAITING).fetchall())
            by_model = dict(conn.execute(
                "SELECT model, COUNT(*) FROM jobs WHERE status IN (?, ?) GROUP BY model",
                _WAITING).fetchall())
        return QueueCounts(by_status, by_priority, by_model)

    def statuses(self, job_ids: Iterable[str]) -> dict[str, str]:
        ids = list(job_ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._conn() as conn:
            rows = conn.execute(f"SELECT job_id, status FROM jobs WHERE job_id IN ({marks})", ids)
            return dict(rows.fetchall())

    # --- jobs: transitions ---------------------------------------------------------------------
    def take_new(self, limit: int = 1000) -> list[JobDoc]:
        with self._conn() as conn:      # a read first: most passes find nothing new to take
            if conn.execute("SELECT 1 FROM jobs WHERE status = 'pending' LIMIT 1").fetchone() is None:
                return []
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE jobs SET status = 'queued' WHERE job_id IN (SELECT job_id FROM jobs "
                "WHERE status = 'pending' ORDER BY submitted_at LIMIT ?) "
                "RETURNING job_id, model, priority, rank, submitted_at", (limit,)).fetchall()
        taken = [dict(r) for r in rows]
        taken.sort(key=lambda j: j["submitted_at"])
        return taken

    def release_taken(self) -> int:
        with self._write() as conn:
            return conn.execute("UPDATE jobs SET status = 'pending' WHERE status = 'queued'").rowcount

    def claim(self, job_id: str, run_id: str, fields: dict[str, Any]) -> JobDoc | None:
        with self._write() as conn:
            row = conn.execute(
                "UPDATE jobs SET status = 'running', run_id = ?, doc = json_patch(doc, ?) "
                "WHERE job_id = ? AND status = 'queued' RETURNING *",
                (run_id, _dumps(fields), job_id)).fetchone()
        return self._row_to_job(row) if row else None

    def finish(self, job_id: str, run_id: str, status: str, fields: dict[str, Any],
               ledger: dict[str, Any] | None = None) -> bool:
        _, doc = _split(fields)
        with self._write() as conn:
            done = conn.execute(
                "UPDATE jobs SET status = ?, completed_at = ?, doc = json_patch(doc, ?) "
                "WHERE job_id = ? AND status = 'running' AND run_id = ?",
                (status, fields.get("completed_at"), _dumps(doc), job_id, run_id)).rowcount == 1
            if done and ledger is not None:
                self._insert_metrics(conn, ledger)
            return done

    def requeue(self, job_id: str, run_id: str, fields: dict[str, Any]) -> bool:
        with self._write() as conn:
            return conn.execute(
                "UPDATE jobs SET status = 'pending', run_id = NULL, doc = json_patch(doc, ?) "
                "WHERE job_id = ? AND status = 'running' AND run_id = ?",
                (_dumps(fields), job_id, run_id)).rowcount == 1

    def fail_waiting(self, job_id: str, fields: dict[str, Any]) -> bool:
        _, doc = _split(fields)
        with self._write() as conn:
            return conn.execute(
                "UPDATE jobs SET status = 'failed', completed_at = ?, doc = json_patch(doc, ?) "
                "WHERE job_id = ? AND status IN (?, ?)",
                (fields.get("completed_at"), _dumps(doc), job_id, *_WAITING)).rowcount == 1

    def cancel(self, job_id: str, fields: dict[str, Any]) -> CancelOutcome:
        _, doc = _split(fields)
        with self._write() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                return CancelOutcome(found=False)
            previous = row["status"]
            if previous in _FINISHED:
                return CancelOutcome(found=True, previous=previous)
            conn.execute(
                "UPDATE jobs SET status = 'cancelled', completed_at = ?, doc = json_patch(doc, ?) "
                "WHERE job_id = ?", (fields.get("completed_at"), _dumps(doc), job_id))
        return CancelOutcome(found=True, previous=previous, cancelled=True)

    def recover_running(self, requeue: bool, fields: dict[str, Any]) -> list[str]:
        _, doc = _split(fields)
        with self._write() as conn:
            if requeue:
                rows = conn.execute(
                    "UPDATE jobs SET status = 'pending', run_id = NULL, doc = json_patch(doc, ?) "
                    "WHERE status = 'running' RETURNING job_id", (_dumps(doc),)).fetchall()
            else:
                rows = conn.execute(
                    "UPDATE jobs SET status = 'failed', completed_at = ?, doc = json_patch(doc, ?) "
                    "WHERE status = 'running' RETURNING job_id",
                    (fields.get("completed_at"), _dumps(doc))).fetchall()
        return [r["job_id"] for r in rows]

    def purge_finished(self, before: float) -> int:
        with self._write() as conn:
            return conn.execute(
                "DELETE FROM jobs WHERE completed_at < ? AND status IN (?, ?, ?)",
                (before, *_FINISHED)).rowcount

    # --- ledger --------------------------------------------------------------------------------
    def record_metrics(self, doc: dict[str, Any]) -> None:
        with self._write() as conn:
            self._insert_metrics(conn, doc)

    @staticmethod
    def _insert_metrics(conn: sqlite3.Connection, doc: dict[str, Any]) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO job_metrics (run_key, job_id, model, finished_at, doc) VALUES (?, ?, ?, ?, ?)",
            (f"{doc['job_id']}:{doc.get('run_id')}", doc["job_id"], doc["model"], doc["finished_at"], _dumps(doc)))

    def list_metrics(self, model: str | None = None, limit: int = 100,
                     job_id: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT doc FROM job_metrics", []
        if job_id:
            sql += " WHERE job_id = ?"
            args.append(job_id)
        elif model:
            sql += " WHERE model = ?"
            args.append(model)
        sql += " ORDER BY finished_at DESC LIMIT ?"
        with self._conn() as conn:
            return [json.loads(r["doc"]) for r in conn.execute(sql, (*args, limit)).fetchall()]

    # --- tasks and experiment results -------------------------------------------------------
    def put_task(self, task: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute("INSERT INTO tasks (task_id, suite, doc) VALUES (?, ?, ?) ON CONFLICT(task_id) "
                         "DO UPDATE SET suite = excluded.suite, doc = excluded.doc",
                         (task["task_id"], task.get("suite"), _dumps(task)))

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        with self._conn() as conn:
            row = conn.execute("SELECT doc FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return json.loads(row["doc"]) if row else None

    def list_tasks(self, suite: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        sql, args = "SELECT doc FROM tasks", []
        if suite:
            sql += " WHERE suite = ?"
            args.append(suite)
        with self._conn() as conn:
            rows = conn.execute(sql + " ORDER BY task_id LIMIT ?", (*args, limit)).fetchall()
        return [json.loads(r["doc"]) for r in rows]

    def record_result(self, result: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute("INSERT INTO experiment_results (experiment, task_id, recorded_at, doc) VALUES (?, ?, ?, ?)",
                         (result.get("experiment"), result.get("task_id"), result.get("recorded_at"), _dumps(result)))

    def list_results(self, experiment: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        sql, args = "SELECT doc FROM experiment_results", []
        if experiment:
            sql += " WHERE experiment = ?"
            args.append(experiment)
        with self._conn() as conn:
            rows = conn.execute(sql + " ORDER BY id LIMIT ?", (*args, limit)).fetchall()
        return [json.loads(r["doc"]) for r in rows]

    # --- shared state --------------------------------------------------------------------------
    def put_state(self, key: str, value: dict[str, Any], now: float) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO state (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT(key) "
                "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (key, _dumps(value), now))

    def get_state(self, key: str) -> tuple[dict[str, Any], float] | None:
        with self._conn() as conn:
            row = conn.execute("SELECT value, updated_at FROM state WHERE key = ?", (key,)).fetchone()
        return (json.loads(row["value"]), row["updated_at"]) if row else None

    def acquire_lease(self, name: str, owner: str, ttl_s: float, now: float) -> bool:
        with self._write() as conn:
            return conn.execute(
                "INSERT INTO leases (name, owner, expires_at) VALUES (?, ?, ?) ON CONFLICT(name) "
                "DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at "
                "WHERE leases.owner = excluded.owner OR leases.expires_at < ?",
                (name, owner, now + ttl_s, now)).rowcount == 1

    def release_lease(self, name: str, owner: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

    def save_footprint(self, model: str, size_bytes: int, now: float) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO model_footprints (model, size_bytes, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(model) DO UPDATE SET size_bytes = excluded.size_bytes, "
                "updated_at = excluded.updated_at", (model, int(size_bytes), now))

    def footprints(self) -> dict[str, int]:
        with self._conn() as conn:
            return dict(conn.execute("SELECT model, size_bytes FROM model_footprints").fetchall())

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()
            self._shared = None
            self._local = threading.local()
